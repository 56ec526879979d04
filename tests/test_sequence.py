"""Sequence models, text and audio data, generation."""

from __future__ import annotations

import math
import struct
import wave

import pytest
import torch

import chainrule
from chainrule.checks import check_step_matches_forward
from chainrule.cli import main
from chainrule.data import WindowedSequence, load_dataset, mu_law_decode, mu_law_encode, read_wav, write_wav
from chainrule.errors import DataError, InputError
from chainrule.inference.sampling import generate
from chainrule.inference.beam import generate_beam

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30


@pytest.mark.parametrize("name,kw", [
    ("wavenet", {"dilations": [1, 2, 4, 8, 16], "kernel_size": 3, "residual_channels": 6, "skip_channels": 5}),
    ("wavenet", {"dilations": [1, 2, 4, 8, 16, 1, 2, 4, 8, 16], "residual_channels": 4, "skip_channels": 4}),
    ("transformer", {"num_layers": 2, "num_heads": 2, "embed_dim": 8, "dropout": 0.1}),
    ("lstm", {"hidden_size": 8, "num_layers": 2, "dropout": 0.1}),
    ("gru", {"hidden_size": 8}),
    ("rnn", {"hidden_size": 8}),
])
def test_cached_equals_full_pass_on_long_sequences(name, kw):
    """Every position of a 37-step sequence: the ring buffers wrap, the KV cache fills."""
    torch.manual_seed(0)
    model = chainrule.create_model(name, (37,), 11, **kw)
    check_step_matches_forward(model, n=3, atol=1e-5)
    model.train()  # dropout must be off in the check (it sets eval) and in sampling
    check_step_matches_forward(model, n=2, atol=1e-5)


def test_wavenet_receptive_field_is_what_it_says():
    model = chainrule.create_model("wavenet", (40,), 5, dilations=[1, 2, 4], kernel_size=2, residual_channels=4,
                                   skip_channels=4)
    assert model.receptive_field == 8
    e = model.embed(torch.randint(5, (1, 40))).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.forward_embedded(e, model.order, None)[0, 30].sum(), e)
    seen = (g[0].abs().sum(-1) > 0).nonzero().squeeze(-1).tolist()
    # the output at 30 reads inputs 22..29 (shifted right: input t-1 holds x_{t-1})
    assert seen == list(range(30 - 8, 30))


def test_windowed_sequence():
    w = WindowedSequence(torch.arange(10), 4, 1)
    assert len(w) == 7 and w.shape == (7, 4)
    assert w[torch.tensor([0, 6])].tolist() == [[0, 1, 2, 3], [6, 7, 8, 9]]
    assert w[2:4].tolist() == [[2, 3, 4, 5], [3, 4, 5, 6]]
    assert WindowedSequence(torch.arange(10), 4, 4)[:].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(IndexError):
        w[torch.tensor([7])]
    with pytest.raises(DataError, match="fewer than one window"):
        WindowedSequence(torch.arange(3), 4)


def test_text_dataset(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    ds = load_dataset(str(path), block_size=16)
    n = len(TEXT)
    assert ds.is_text and ds.shape == (16,) and ds.num_values == len(set(TEXT))
    assert len(ds.train) == int(n * 0.9) - 16 + 1 and len(ds.val) == (n - int(n * 0.9)) // 16
    assert ds.tokenizer.decode(ds.train[0].tolist()) == TEXT[:16]
    assert ds.tokenizer.decode(ds.val[0].tolist()) == TEXT[int(n * 0.9):int(n * 0.9) + 16]
    b = load_dataset(str(path), block_size=16, level="byte")
    assert b.num_values == 256
    (tmp_path / "bad.txt").write_bytes(b"abc\xff\xfedef" * 5)
    with pytest.raises(DataError, match="byte 3"):
        load_dataset(str(tmp_path / "bad.txt"), block_size=2)
    assert load_dataset(str(tmp_path / "bad.txt"), block_size=2, level="byte").num_values == 256
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_dataset(str(tmp_path / "empty.txt"))


def test_mu_law_and_wav(tmp_path):
    x = torch.linspace(-1, 1, 2001)
    codes = mu_law_encode(x)
    assert codes.min() == 0 and codes.max() == 255
    assert torch.equal(mu_law_encode(mu_law_decode(codes)), codes)
    t = torch.arange(4000) / 4000
    tone = 0.5 * torch.sin(2 * math.pi * 220 * t)
    write_wav(tmp_path / "a.wav", tone, 4000)
    audio, rate = read_wav(tmp_path / "a.wav")
    assert rate == 4000 and (audio - tone).abs().max() < 1e-4
    ds = load_dataset(str(tmp_path / "a.wav"), block_size=100)
    assert ds.is_audio and ds.sample_rate == 4000 and ds.num_values == 256 and ds.shape == (100,)
    # 8-bit stereo PCM: channels averaged
    with wave.open(str(tmp_path / "b.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes([128, 255] * 50))
    audio, _ = read_wav(tmp_path / "b.wav")
    assert audio.shape == (50,) and abs(float(audio[0]) - 127 / 256) < 1e-6
    # a float WAV (format tag 3) is not PCM
    data = struct.pack("<4f", 0.0, 0.1, 0.2, 0.3)
    fmt = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    with pytest.raises(DataError, match="not a PCM WAV"):
        read_wav(tmp_path / "f.wav")


def test_generate_window_and_errors():
    torch.manual_seed(0)
    model = chainrule.create_model("transformer", (12,), 7, num_layers=1, num_heads=1, embed_dim=8)
    out = generate(model, [1, 2, 3], 9, num_samples=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 12) and out[:, :3].tolist() == [[1, 2, 3]] * 2
    with pytest.raises(InputError, match="context window of 12"):
        generate(model, [1, 2, 3], 10)
    long = generate(model, [1, 2, 3], 40, sliding=True, generator=torch.Generator().manual_seed(0))
    assert long.shape == (1, 43)
    with pytest.raises(InputError, match="0..6"):
        generate(model, [9], 3)
    greedy = generate(model, [1], 5, temperature=0)
    assert torch.equal(greedy, generate(model, [1], 5, temperature=0))
    hyps = generate_beam(model, [1], 3, beam_width=7 ** 3)  # exhaustive over 3 new tokens
    padded = torch.cat([greedy[0, :4], torch.zeros(8, dtype=torch.long)]).unsqueeze(0)
    per_var = model.log_prob_per_variable(padded).detach()[0]
    assert hyps[0].prompt_log_prob == pytest.approx(float(per_var[0]), abs=1e-5)
    # the best sequence is at least as probable as the greedy one
    assert hyps[0].log_prob >= float(per_var[1:4].sum()) - 1e-5
    assert [h.log_prob for h in hyps] == sorted((h.log_prob for h in hyps), reverse=True)


def test_cli_text_and_audio_runs(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    run = tmp_path / "lstm"
    assert main(["train", "lstm", "--dataset", str(tmp_path / "t.txt"), "--block-size", "24", "--steps-per-epoch", "5",
                 "--epochs", "2", "--out", str(run), "--no-progress", "-p", "hidden_size=16"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and (run / "samples.txt").is_file()
    assert main(["generate", str(run), "--prompt", "Speak", "--max-new-tokens", "10", "--top-k", "3"]) == 0
    assert capsys.readouterr().out.startswith("Speak")
    assert main(["generate", str(run), "--prompt", "Speak", "--max-new-tokens", "4", "--beam", "2"]) == 0
    assert "log p" in capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "Zebra", "--max-new-tokens", "4"]) == 2
    assert "outside its vocabulary" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "2", "--temperature", "0.5"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--stride", "12", "--no-progress"]) == 0
    assert "nats/char" in capsys.readouterr().out  # a character-level run reads per character
    write_wav(tmp_path / "a.wav", 0.3 * torch.sin(torch.arange(3000) / 5.0), 3000)
    arun = tmp_path / "wn"
    assert main(["train", "wavenet", "--dataset", str(tmp_path / "a.wav"), "--block-size", "64", "--steps-per-epoch", "3",
                 "--epochs", "1", "--out", str(arun), "--no-progress", "--num-samples", "2",
                 "-p", "dilations=[1,2,4]", "-p", "residual_channels=8", "-p", "skip_channels=8"]) == 0
    audio, rate = read_wav(arun / "samples.wav")
    assert rate == 3000 and len(audio) == 2 * 64 + 2 * 750


def test_evaluate_stream_scores_every_token_once():
    from chainrule.inference.likelihood import evaluate, evaluate_stream

    torch.manual_seed(0)
    model = chainrule.create_model("lstm", (8,), 5, hidden_size=8)
    stream = torch.randint(5, (100,))
    whole = evaluate_stream(model, stream)  # stride = window: independent windows
    assert whole.num_tokens == 96
    assert whole.nats_per_token == pytest.approx(evaluate(model, WindowedSequence(stream, 8, 8)).nll_nats / 8, rel=1e-6)
    strided = evaluate_stream(model, stream, stride=1)
    assert strided.num_tokens == 100
    # by hand: the first window whole, then the last token of every later window
    per = model.log_prob_per_variable(torch.stack([stream[i:i + 8] for i in range(93)])).detach().double()
    expected = -(per[0].sum() + per[1:, -1].sum()) / 100
    assert strided.nats_per_token == pytest.approx(float(expected), rel=1e-6)
    assert strided.perplexity == pytest.approx(math.exp(strided.nats_per_token))
    with pytest.raises(InputError, match="stride"):
        evaluate_stream(model, stream, stride=9)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_truncated_bptt_same_values_truncated_gradients(name):
    torch.manual_seed(0)
    full = chainrule.create_model(name, (20,), 6, hidden_size=8)
    trunc = chainrule.create_model(name, (20,), 6, hidden_size=8, tbptt=5)
    trunc.load_state_dict(full.state_dict())
    x = torch.randint(6, (3, 20))
    assert torch.allclose(full.log_prob(x), trunc.log_prob(x), atol=1e-6)  # same likelihood
    trunc.train()  # truncation applies to training passes
    e = trunc.embed(x).detach().requires_grad_(True)
    params = trunc.forward_embedded(e, trunc.order, None)
    (g,) = torch.autograd.grad(params[:, 15].sum(), e)
    # output 15 reads inputs 0..14 (shifted right); its chunk starts at input 14 (positions 15..19
    # of the shifted sequence hold inputs 14..18): gradient reaches input 14 only
    reached = (g[0].abs().sum(-1) > 0).nonzero().squeeze(-1).tolist()
    assert reached == [14]
    with pytest.raises(InputError, match="tbptt"):
        chainrule.create_model(name, (20,), 6, tbptt=0)
