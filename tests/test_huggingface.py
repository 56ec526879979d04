"""Hugging Face GPT-2 checkpoints: tiny random GPT-2s built with ``transformers`` (a test extra), read
into chainrule and written back; logits compared both ways (<= 1e-5), and every command on the
imported run. No network: the models and tokenizers are made here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from chainrule.cli import main  # noqa: E402
from chainrule.errors import CheckpointError, InputError  # noqa: E402
from chainrule.interop.huggingface import export_gpt2, load_gpt2, load_gpt2_tokenizer  # noqa: E402
from chainrule.models import create_model, load  # noqa: E402
from chainrule.text.tokenizers import load_tokenizer  # noqa: E402

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n") * 6


def _bpe(vocab_size: int = 300):
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([TEXT], trainer)
    return hf


def make_gpt2(path: Path, activation: str = "gelu_new", tied: bool = True, n_positions: int = 24,
              tokenizer: str = "json", seed: int = 0) -> Path:
    """A random GPT-2 written by save_pretrained, with a byte-level BPE tokenizer
    (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``)."""
    torch.manual_seed(seed)
    hf = _bpe()
    eot = hf.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(vocab_size=hf.get_vocab_size(), n_positions=n_positions, n_embd=32, n_layer=2,
                                  n_head=4, activation_function=activation, tie_word_embeddings=tied,
                                  bos_token_id=eot, eos_token_id=eot)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # beyond the tiny default init, so that differences would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(path)
    if tokenizer == "json":
        hf.save(str(path / "tokenizer.json"))
    elif tokenizer == "vocab":
        hf.model.save(str(path))
    return path


def hf_logits(model, ids: torch.Tensor, bos: int) -> torch.Tensor:
    """transformers' logits of every token of ``ids`` (B, T) given bos and the tokens before it."""
    with torch.no_grad():
        return model(torch.cat([torch.full((ids.shape[0], 1), bos), ids[:, :-1]], 1)).logits


@pytest.mark.parametrize("activation, tied", [("gelu_new", True), ("gelu_new", False), ("gelu", True)])
def test_import_equals_transformers(tmp_path, activation, tied):
    d = make_gpt2(tmp_path / "hf", activation, tied)
    ref = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    ours = load_gpt2(d)
    assert ours.dim == 24 and ours.num_values == ref.config.vocab_size
    assert ours.hyperparameters["activation"] == ("gelu_new" if activation == "gelu_new" else "gelu")
    x = torch.randint(0, ours.num_values, (4, 24), generator=torch.Generator().manual_seed(1))
    want = hf_logits(ref, x, ref.config.bos_token_id)
    with torch.no_grad():
        got = ours(x)
    assert (got - want).abs().max() <= 1e-5
    # the exact log-likelihood is GPT-2's log p(x | <|endoftext|>)
    lp = torch.log_softmax(want.double(), -1).gather(-1, x[..., None])[..., 0].sum(-1)
    torch.testing.assert_close(ours.log_prob(x).double(), lp, atol=1e-4, rtol=0)
    # a shorter window keeps the first position embeddings
    short = load_gpt2(d, max_length=10)
    with torch.no_grad():
        assert (short(x[:, :10]) - want[:, :10]).abs().max() <= 1e-5


def test_gelu_new_is_not_gelu(tmp_path):
    """The activation matters at the issue's scale: reading a gelu_new model as exact GELU is off."""
    d = make_gpt2(tmp_path / "hf", "gelu_new")
    ref = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    ours = load_gpt2(d)
    wrong = create_model("transformer", ours.shape, ours.num_values, num_layers=2, num_heads=4, embed_dim=32, bias=True)
    wrong.load_state_dict(ours.state_dict())
    x = torch.randint(0, ours.num_values, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (wrong.eval()(x) - hf_logits(ref, x, ref.config.bos_token_id)).abs().max() > 1e-4


def test_tokenizer_files(tmp_path):
    """tokenizer.json and vocab.json + merges.txt give the same tokenizer, equal to transformers'
    tokenizer on the same files, and it saves / loads as chainrule JSON."""
    a = load_gpt2_tokenizer(make_gpt2(tmp_path / "a", tokenizer="json"))
    b = load_gpt2_tokenizer(make_gpt2(tmp_path / "b", tokenizer="vocab"))
    assert load_gpt2_tokenizer(make_gpt2(tmp_path / "c", tokenizer="none")) is None
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path / "b")  # GPT-2's tokenizer on vocab.json + merges.txt
    for s in ["Speak, speak.", "  You are all résolved!\n\nzzz <|endoftext|> x", ""]:
        assert a.encode(s) == b.encode(s) == ref(s)["input_ids"]
        assert a.decode(a.encode(s), skip_special=False) == s
    a.save(tmp_path / "tok.json")
    back = load_tokenizer(tmp_path / "tok.json")
    assert back.encode(TEXT[:200]) == a.encode(TEXT[:200]) and back.vocab_size == a.vocab_size


@pytest.mark.parametrize("bias, tied, activation", [(False, True, "gelu"), (True, False, "gelu_new")])
def test_export_loads_in_transformers(tmp_path, bias, tied, activation):
    """A chainrule GPT (nanoGPT-style, no biases, or GPT-2-style) exported: transformers' logits of the
    V tokens equal chainrule's, its generation never draws the start token, and importing the export
    gives the same model back exactly."""
    torch.manual_seed(3)
    model = create_model("transformer", (12,), 50, num_layers=2, num_heads=2, embed_dim=16, bias=bias,
                         tie_weights=tied, activation=activation).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    if not tied and bias:  # GPT-2's lm_head has no bias: only a zero one can be written
        with pytest.raises(InputError, match="bias"):
            export_gpt2(model, tmp_path / "refused")
        with torch.no_grad():
            model.out.bias.zero_()
    out = export_gpt2(model, tmp_path / "exp")
    ref = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert ref.config.vocab_size == 51 and ref.config.bos_token_id == 50
    x = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (hf_logits(ref, x, 50)[..., :50] - model(x)).abs().max() <= 1e-5
    gen = ref.generate(torch.full((8, 1), 50), do_sample=True, max_length=12, min_length=12)
    assert not (gen[:, 1:] == 50).any()
    back = load_gpt2(out)
    assert back.num_values == 50
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    with pytest.raises(InputError, match="already exists"):
        export_gpt2(model, out)


def test_export_refuses_what_gpt2_cannot_hold(tmp_path):
    with pytest.raises(InputError, match="left to right"):
        export_gpt2(create_model("transformer", (6,), 5, num_layers=1, num_heads=1, embed_dim=8, order="reversed"),
                    tmp_path / "a")
    with pytest.raises(InputError, match="transformer"):
        export_gpt2(create_model("made", (6,), 5), tmp_path / "b")


def test_bad_directories(tmp_path):
    d = make_gpt2(tmp_path / "hf")
    with pytest.raises(InputError, match="not a directory"):
        load_gpt2(tmp_path / "nothing")
    cfg = json.loads((d / "config.json").read_text())
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="model_type 'bert'"):
        load_gpt2(tmp_path / "bert")
    (tmp_path / "relu").mkdir()
    (tmp_path / "relu" / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(InputError, match="activation_function 'relu'"):
        load_gpt2(tmp_path / "relu")
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="never a pickle"):
        load_gpt2(tmp_path / "pickle")
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    (tmp_path / "small" / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape"):
        load_gpt2(tmp_path / "small")
    with pytest.raises(InputError, match="max_length"):
        load_gpt2(d, max_length=25)
    with pytest.raises(CheckpointError, match="import-hf"):  # a Hugging Face directory used as a run
        load(d)


def test_cli_on_imported_gpt2(tmp_path, capsys):
    """import-hf, then eval --text (bits per byte), generate, sample, compress / decompress, inspect, export-hf."""
    d = make_gpt2(tmp_path / "hf", tokenizer="vocab")
    run = tmp_path / "run"
    assert main(["import-hf", str(d), "--out", str(run)]) == 0
    assert "window 24 tokens" in capsys.readouterr().out
    assert main(["import-hf", str(d), "--out", str(run)]) == 2
    assert "already exists" in capsys.readouterr().err
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:300], encoding="utf-8")
    assert main(["eval", str(run), "--text", str(text), "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the same figure from transformers: every token given the ones before it in windows of 24
    ref = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
    tok = load_gpt2_tokenizer(d)
    ids = tok.encode(TEXT[:300])
    assert res["num_tokens"] == len(ids) and res["num_bytes"] == 300
    ours = load(run)
    first = torch.tensor([ids[:24]])
    lp = torch.log_softmax(hf_logits(ref, first, ref.config.bos_token_id).double(), -1).gather(-1, first[..., None])
    torch.testing.assert_close(ours.log_prob(first).double(), lp.sum().reshape(1), atol=1e-4, rtol=0)
    assert res["bits_per_byte"] == pytest.approx(res["total_bits"] / 300)
    assert main(["generate", str(run), "--prompt", "First", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("First")
    packed, back = tmp_path / "t.crz", tmp_path / "back.txt"
    assert main(["compress", str(run), str(text), str(packed)]) == 0
    assert main(["decompress", str(run), str(packed), str(back)]) == 0
    assert back.read_bytes() == text.read_bytes()
    assert main(["inspect", str(run), "--text", "Speak, speak.", "--out", str(tmp_path / "i.html")]) == 0
    assert (tmp_path / "i.html").is_file()
    exp = tmp_path / "exp"
    assert main(["export-hf", str(run), str(exp)]) == 0
    capsys.readouterr()
    again = transformers.GPT2LMHeadModel.from_pretrained(exp).eval()
    x = torch.tensor([ids[:24]])
    with torch.no_grad():
        assert (hf_logits(again, x, ours.num_values)[..., :ours.num_values] - ours(x)).abs().max() <= 1e-5
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(exp / "tokenizer.json"))
    assert fast("Speak, speak.")["input_ids"] == tok.encode("Speak, speak.")
    assert load_gpt2_tokenizer(exp).encode(TEXT[:100]) == tok.encode(TEXT[:100])


def test_cached_steps_equal_the_whole_pass(tmp_path):
    """The key/value cache of an imported GPT-2 (gelu_new) gives the teacher-forced logits."""
    model = load_gpt2(make_gpt2(tmp_path / "hf", "gelu_new"))
    x = torch.randint(0, model.num_values, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole = model(x)
        state = model.init_state(2)
        for i in range(24):
            logits, state = model.step(state, i, None if i == 0 else x[:, i - 1])
            assert (logits - whole[:, i]).abs().max() <= 1e-5
