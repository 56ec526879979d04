"""Streaming generation: tokens yielded as drawn, equal to the non-streaming ones; text decoded
incrementally; stop tokens and strings; the command line printing as it goes."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.cli import main
from chainrule.errors import InputError
from chainrule.inference.sampling import generate
from chainrule.inference.streaming import stream_text
from chainrule.text.tokenizers import ByteTokenizer, CharTokenizer


def _model(window: int = 8, k: int = 12):
    torch.manual_seed(0)
    model = chainrule.create_model("transformer", (window,), k, num_layers=1, num_heads=2, embed_dim=8)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("options", [dict(), dict(top_k=3, temperature=0.7), dict(top_p=0.8),
                                     dict(no_repeat_ngram_size=2, repetition_penalty=1.5)])
@pytest.mark.parametrize("sliding, new", [(False, 6), (True, 21)])
def test_stream_equals_generate(options, sliding, new):
    model = _model()
    want = generate(model, [3, 4], new, num_samples=3, generator=torch.Generator().manual_seed(5), sliding=sliding,
                    **options)
    it = generate(model, [3, 4], new, num_samples=3, generator=torch.Generator().manual_seed(5), sliding=sliding,
                  stream=True, **options)
    got = list(it)
    assert len(got) == new and all(t.shape == (3,) for t in got)
    assert torch.equal(torch.cat([want[:, :2], torch.stack(got, 1)], 1), want)


def test_stream_is_lazy_and_leaves_grad_mode_alone(monkeypatch):
    model = _model()
    calls = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda *a, **k: calls.append(a[1]) or step(*a, **k))
    it = generate(model, [1, 2, 3], 5, stream=True, generator=torch.Generator().manual_seed(0))
    assert calls == []  # nothing runs before the first token is asked for
    first = next(it)
    assert calls == [0, 1, 2, 3] and first.shape == (1,)  # the prompt's steps and one draw
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    rest = list(it)
    assert len(rest) == 4 and len(calls) == 8


def test_stop_tokens():
    model = _model()
    full = generate(model, [3], 7, num_samples=1, generator=torch.Generator().manual_seed(1))[0].tolist()
    stop = full[3]  # the third new token
    cut = generate(model, [3], 7, stop_tokens=[stop], generator=torch.Generator().manual_seed(1))[0].tolist()
    assert cut == full[:full.index(stop, 1) + 1]
    many = generate(model, [3], 7, num_samples=4, stop_tokens=[stop], generator=torch.Generator().manual_seed(1))
    hit = [row[1:].tolist().index(stop) if stop in row[1:].tolist() else None for row in many]
    assert many.shape[1] == 8 or all(h is not None for h in hit)
    with pytest.raises(InputError, match="stop_tokens"):
        generate(model, [3], 3, stop_tokens=[99])


def test_stream_text_holds_back_split_characters_and_stops():
    tok = ByteTokenizer(specials=())
    text = "héllo wörld, stop here"
    ids = tok.encode(text)
    pieces = list(stream_text(tok, ids[:2], iter(ids[2:])))
    assert "".join(pieces) == text[len(tok.decode(ids[:2])):]
    assert all("\ufffd" not in p for p in pieces)  # the two bytes of é and ö come out together
    stopped = "".join(stream_text(tok, [], iter(ids), stop_strings=["ld"]))
    assert stopped == "héllo wörld"
    char = CharTokenizer("abc ", specials=())
    assert "".join(stream_text(char, char.encode("ab"), iter(char.encode("c ab")), ["b"])) == "c ab"


def test_cli_prints_the_streamed_text(tmp_path, capsys):
    text = "the cat sat on the mat. " * 40
    (tmp_path / "t.txt").write_text(text)
    run = tmp_path / "gpt"
    assert main(["train", "transformer", "--dataset", str(tmp_path / "t.txt"), "--block-size", "16",
                 "--steps-per-epoch", "3", "--epochs", "1", "--out", str(run), "--no-progress", "--num-samples", "1",
                 "-p", "num_layers=1", "-p", "num_heads=2", "-p", "embed_dim=16"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the c", "--max-new-tokens", "10", "--seed", "4"]) == 0
    streamed = capsys.readouterr().out
    model = chainrule.load(run / "best")
    tok = CharTokenizer.fit(text, specials=())
    want = generate(model, tok.encode("the c"), 10, generator=torch.Generator().manual_seed(4))
    assert streamed == tok.decode(want[0].tolist()) + "\n"
    new = streamed.rstrip("\n")[len("the c"):]
    stop = new[2]  # the third new character: the text ends where it first appears
    assert main(["generate", str(run), "--prompt", "the c", "--max-new-tokens", "10", "--seed", "4",
                 "--stop", stop]) == 0
    out = capsys.readouterr().out
    assert out == "the c" + new[:new.index(stop) + 1] + "\n"
