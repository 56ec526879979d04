"""Text runs read as text (issue 12): evaluation per character / byte / token, and ``inspect``
showing the text itself coloured by each character's surprisal."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import chainrule
from chainrule.apps.inspection import inspect_text, write_text_surprisal_html
from chainrule.cli import main
from chainrule.data import WindowedSequence, load_dataset
from chainrule.errors import InputError
from chainrule.inference.likelihood import evaluate, evaluate_stream, token_unit
from chainrule.text.tokenizers import ByteTokenizer, CharTokenizer, WordTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8
WINDOW = 32
OLD_KEYS = ["nll_nats", "bits_per_dim", "perplexity", "num_examples", "dim"]


def text_run(tmp_path: Path, level: str = "char") -> tuple[Path, chainrule.AutoregressiveModel]:
    """A freshly initialised LSTM saved as a run of the text file, as `chainrule train` records one."""
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    ds = load_dataset(str(path), block_size=WINDOW, level=level)
    torch.manual_seed(0)
    model = chainrule.create_model("lstm", ds.shape, ds.num_values, hidden_size=8)
    ckpt = tmp_path / f"run-{level}"
    model.save(ckpt, extra={"dataset": str(path), "block_size": WINDOW, "level": level,
                            "tokenizer": ds.tokenizer.to_dict(), "conditional": False})
    return ckpt, model


# ---------------------------------------------------------------------- evaluation per token
def test_token_unit_from_tokenizer_or_dataset(tmp_path):
    assert token_unit(CharTokenizer.fit("abc")) == "char"
    assert token_unit(ByteTokenizer()) == "byte"
    assert token_unit(WordTokenizer.fit("a b a")) == "token"
    (tmp_path / "t.txt").write_text(TEXT)
    assert token_unit(load_dataset(str(tmp_path / "t.txt"), block_size=8)) == "char"
    assert token_unit(load_dataset(str(tmp_path / "t.txt"), block_size=8, level="byte")) == "byte"
    assert token_unit(SimpleNamespace(tokenizer=None, sample_rate=8000)) == "sample"
    assert token_unit(SimpleNamespace(tokenizer=None, sample_rate=None)) is None  # images, vectors
    assert token_unit(None) is None


def test_evaluate_per_char_leads_and_keeps_the_old_keys():
    torch.manual_seed(0)
    model = chainrule.create_model("lstm", (8,), 5, hidden_size=8)
    windows = WindowedSequence(torch.randint(5, (80,)), 8, 8)
    plain, text = evaluate(model, windows), evaluate(model, windows, unit="char")
    per_char = float(-model.log_prob_per_variable(windows[:]).detach().double().mean())
    assert text.nats_per_token == pytest.approx(per_char, rel=1e-6)
    assert text.bits_per_token == pytest.approx(per_char / math.log(2), rel=1e-6)
    assert text.perplexity == pytest.approx(math.exp(per_char), rel=1e-6)
    assert str(text).startswith(f"{text.nats_per_token:.4f} nats/char | {text.bits_per_token:.4f} bits/char | "
                                f"perplexity {text.perplexity:.4f} per char")
    assert "nats/example" in str(text)  # still there, last
    # images and vectors: the per-example convention and exactly the keys they had
    assert str(plain).startswith("NLL ") and list(plain.as_dict()) == OLD_KEYS
    d = text.as_dict()
    assert {k: d[k] for k in OLD_KEYS} == plain.as_dict()
    assert d["unit"] == "char" and d["nats_per_token"] == pytest.approx(per_char, rel=1e-6)
    assert d["bits_per_token"] == d["bits_per_dim"]
    assert "nats/token" in str(evaluate(model, windows, unit="token"))
    with pytest.raises(InputError, match="unit"):
        evaluate(model, windows, unit="per char")
    stream = evaluate_stream(model, windows.stream, unit="byte")
    assert str(stream).startswith(f"{stream.nats_per_token:.4f} nats/byte | ") and stream.as_dict()["unit"] == "byte"


@pytest.mark.parametrize("level,unit", [("char", "char"), ("byte", "byte")])
def test_cli_eval_of_a_text_run_reads_per_character(tmp_path, capsys, level, unit):
    ckpt, _ = text_run(tmp_path, level)
    assert main(["eval", str(ckpt), "--no-progress", "--json", "--threads", "1"]) == 0
    line, js = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("test: ") and line.split(" | ")[0].endswith(f"nats/{unit}")
    assert line.split(" | ")[1].endswith(f"bits/{unit}") and f"per {unit}" in line
    result = json.loads(js)
    assert result["unit"] == unit and all(k in result for k in OLD_KEYS)
    assert result["nats_per_token"] == pytest.approx(result["nll_nats"] / WINDOW)
    assert main(["eval", str(ckpt), "--no-progress", "--stride", "12", "--threads", "1"]) == 0
    assert f"bits/{unit}" in capsys.readouterr().out


def test_cli_train_of_a_text_run_reports_per_character(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    run = tmp_path / "lstm"
    assert main(["train", "lstm", "--dataset", str(tmp_path / "t.txt"), "--block-size", "16", "--steps-per-epoch", "2",
                 "--epochs", "1", "--out", str(run), "--no-progress", "--num-samples", "1", "--threads", "1",
                 "-p", "hidden_size=8"]) == 0
    test_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test: "))
    assert test_line.split(" | ")[0].endswith("nats/char") and "bits/char" in test_line
    result = json.loads((run / "results.json").read_text())["test"]
    assert result["unit"] == "char" and all(k in result for k in OLD_KEYS + ["nats_per_token", "bits_per_token"])


# ---------------------------------------------------------------------- inspect: the text, coloured
class Spans(HTMLParser):
    """The spans of a surprisal page that carry bits: their text, positions and bits."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self.depth = 0  # > 0 inside a span with data-bits (the newline marks are spans inside it)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and "data-bits" in a:
            self.spans.append({"text": "", "pos": [int(p) for p in a["data-pos"].split()],
                               "bits": [float(b) for b in a["data-bits"].split()], "title": a["title"]})
            self.depth = 1
        elif tag == "span" and self.depth:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag == "span" and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.spans[-1]["text"] += data


def read_spans(path: Path) -> list[dict]:
    parser = Spans()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.spans


def test_cli_inspect_a_text_writes_png_and_html_with_the_model_s_surprisal(tmp_path, capsys):
    ckpt, model = text_run(tmp_path)
    text = "Before we speak,\nhear me."
    assert main(["inspect", str(ckpt), "--text", text, "--out", str(tmp_path / "s.png"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 100
    assert main(["inspect", str(ckpt), "--text", text, "--out", str(tmp_path / "s.html"), "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == out.splitlines()[0]
    spans = read_spans(tmp_path / "s.html")
    assert "".join(s["text"] for s in spans) == text  # the characters themselves, in order
    assert [s["pos"] for s in spans] == [[i] for i in range(len(text))]  # one character, one span
    # the surprisal shown is -log2 of the model's own conditionals
    tok = CharTokenizer.fit(TEXT, specials=())
    ids = tok.encode(text)
    padded = torch.tensor(ids + [0] * (WINDOW - len(ids))).unsqueeze(0)
    lp = model.log_prob_per_variable(padded).detach().double()[0, :len(ids)]
    shown = torch.tensor([s["bits"][0] for s in spans], dtype=torch.float64)
    assert torch.allclose(shown, -lp / math.log(2), atol=1e-6)
    assert "bits" in spans[0]["title"]
    # the five most surprising characters are printed, the worst first
    worst = int(shown.argmax())
    assert "most surprising chars: " + repr(text[worst]) + f" at {worst} ({shown[worst]:.2f} bits)" in out
    assert out.split("most surprising chars: ")[1].count(" bits)") == 5


def test_cli_inspect_a_text_run_s_example_sums_to_log_prob(tmp_path, capsys):
    ckpt, model = text_run(tmp_path)
    assert main(["inspect", str(ckpt), "--index", "1", "--out", str(tmp_path / "e.html"), "--threads", "1"]) == 0
    assert "test example 1: " in capsys.readouterr().out
    window = load_dataset(str(tmp_path / "t.txt"), block_size=WINDOW).test[1]
    spans = read_spans(tmp_path / "e.html")
    assert "".join(s["text"] for s in spans) == CharTokenizer.fit(TEXT, specials=()).decode(window.tolist())
    total_nats = sum(b for s in spans for b in s["bits"]) * math.log(2)
    assert total_nats == pytest.approx(float(-model.log_prob(window.unsqueeze(0)).detach()), rel=1e-5)
    assert main(["inspect", str(ckpt), "--index", "0", "--threads", "1"]) == 0  # default: a PNG beside the checkpoint
    assert (ckpt.parent / "inspect-test-0.png").is_file() and not (ckpt / "inspect-test-0.png").exists()


def test_inspect_text_bytes_words_and_errors(tmp_path):
    torch.manual_seed(0)
    model = chainrule.create_model("lstm", (16,), 256, hidden_size=8)
    ins = inspect_text(model, ByteTokenizer(specials=()), "café!")
    assert ins.unit == "byte" and len(ins.ids) == 6 and ins.text == "café!"
    assert [p for _, p in ins.spans] == [[0], [1], [2], [3, 4], [5]]  # é: one character, two bytes
    spans = read_spans(write_text_surprisal_html(ins, tmp_path / "b.html"))
    assert spans[3]["text"] == "é" and spans[3]["bits"] == pytest.approx(ins.bits[3:5].tolist())
    words = WordTokenizer.fit("to be or not to be")
    wmodel = chainrule.create_model("lstm", (8,), words.vocab_size, hidden_size=8)
    wins = inspect_text(wmodel, words, "to be or not")
    assert wins.unit == "token" and wins.text == "to be or not" and len(wins.ids) == 4
    # a text longer than the window: window by window, every byte once, the first window whole
    long_ids = torch.randint(256, (37,), generator=torch.Generator().manual_seed(1))
    long = inspect_text(model, ByteTokenizer(specials=()), long_ids)
    first = model.log_prob_per_variable(long_ids[:16].unsqueeze(0)).detach().double()[0]
    last = model.log_prob_per_variable(long_ids[-16:].unsqueeze(0)).detach().double()[0, -1]
    assert len(long.bits) == 37 and torch.allclose(long.bits[:16], -first / math.log(2), atol=1e-6)
    assert float(long.bits[-1]) == pytest.approx(float(-last / math.log(2)), abs=1e-6)
    with pytest.raises(InputError, match="empty"):
        inspect_text(model, ByteTokenizer(specials=()), "")
    image = chainrule.create_model("fvsbn", (1, 2, 2), 2)
    with pytest.raises(InputError, match="text model"):
        inspect_text(image, ByteTokenizer(specials=()), "ab")


def test_cli_inspect_text_on_a_run_without_text_is_refused(tmp_path, capsys):
    chainrule.create_model("fvsbn", (4,), 2).save(tmp_path / "vec")
    assert main(["inspect", str(tmp_path / "vec"), "--text", "hello"]) == 2
    assert "not trained on text" in capsys.readouterr().err


def test_a_window_of_t_tokens_holds_t_predictions_and_per_char_divides_by_t():
    """The GPT reads a start token before the window, so a window of T tokens holds T predictions:
    the first from no context, then T - 1 with 1..T-1 tokens of context (a 65-token window: 65
    predictions, 64 of them with context, as nanoGPT's 64-token blocks). Per-token figures divide the
    window's NLL by exactly those T predictions."""
    torch.manual_seed(0)
    model = chainrule.create_model("transformer", (9,), 6, num_layers=1, num_heads=2, embed_dim=8)
    x = torch.randint(6, (4, 9))
    per = -model.log_prob_per_variable(x).detach().double()  # (4, 9): one term per prediction
    assert per.shape == (4, 9)
    assert torch.allclose(per.sum(1), -model.log_prob(x).detach().double(), atol=1e-5)
    # the first prediction has no context: the same for every window
    other = x.clone()
    other[:, 1:] = (other[:, 1:] + 1) % 6
    assert torch.allclose(-model.log_prob_per_variable(other).detach().double()[:, 0], per[:, 0])
    res = evaluate(model, x, unit="char")
    assert res.nats_per_token == pytest.approx(float(per.sum(1).mean()) / 9, rel=1e-6)
    assert res.nats_per_token == pytest.approx(float(per.mean()), rel=1e-6)


def test_the_training_bar_of_a_text_run_shows_the_loss_per_character(tmp_path, capsys):
    """A text run's bars show nats per character (about 1.9 for a trained tiny-Shakespeare GPT), not
    the window's total (about 65 x that); images and vectors keep nats per example."""
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    assert main(["train", "lstm", "--dataset", str(tmp_path / "t.txt"), "--block-size", "16", "-p", "hidden_size=8",
                 "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "4", "--num-samples", "1",
                 "--threads", "1", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "train_nats_per_char=" in err and "val_nats_per_char=" in err and "train_nll_nats" not in err
    row = json.loads((tmp_path / "run" / "results.json").read_text())
    shown = [float(p.split("=")[1].split(",")[0].split("]")[0]) for p in err.replace("\r", "\n").split()
             if p.startswith("val_nats_per_char=")]
    assert shown and shown[-1] == pytest.approx(row["best_val_nll_nats"] / 16, rel=1e-3)
    assert math.log(4) < shown[-1] < math.log(40)  # near uniform over the ~30 characters after 3 steps


def test_compress_of_a_text_reports_bits_per_character(tmp_path, capsys):
    """`compress` of a text prints bits per character of the file (its tokens), not bits/dim."""
    ckpt, _ = text_run(tmp_path)
    (tmp_path / "in.txt").write_text(TEXT[:100], encoding="utf-8")
    assert main(["compress", str(ckpt), str(tmp_path / "in.txt"), str(tmp_path / "in.crz"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" not in out and "bits/char (payload)" in out
    payload = int(out.split("payload ")[1].split()[0])
    achieved = float(out.split("achieved: ")[1].split()[0])
    assert achieved == pytest.approx(8 * payload / 100, abs=1e-3)  # over the file's 100 characters
