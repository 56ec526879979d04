"""A newcomer's first hour, second pass (issue 26): the command-line fixes named in errors, n-grams
at the character level and one seed rule, ``values_line`` on any dataset, ``--limit``, and every
later phase of a command with a progress bar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import chainrule
from chainrule.cli import main
from chainrule.data import load_dataset

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A character-level LSTM run of TEXT, trained for two steps (a real run directory)."""
    root = tmp_path_factory.mktemp("second")
    (root / "t.txt").write_text(TEXT, encoding="utf-8")
    run = root / "run"
    assert main(["train", "lstm", "--dataset", str(root / "t.txt"), "--block-size", "16", "-p", "hidden_size=8",
                 "--epochs", "1", "--steps-per-epoch", "2", "--num-samples", "1", "--no-progress", "--threads", "1",
                 "--out", str(run)]) == 0
    return root, run


# ---------------------------------------------------------------------- errors name the command-line fix
def test_a_too_long_prompt_names_sliding_window(char_run, capsys):
    _, run = char_run
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "First", "--max-new-tokens", "40", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sliding-window" in err and "--max-new-tokens 11" in err and "sliding=True" not in err
    assert len(err.splitlines()) == 1
    assert main(["generate", str(run), "--prompt", "First", "--max-new-tokens", "40", "--sliding-window",
                 "--no-progress"]) == 0


def test_compress_of_a_text_with_unknown_characters_names_level_byte(char_run, tmp_path, capsys):
    _, run = char_run
    (tmp_path / "readme.md").write_text("# chainrule\n`pip install .` — {braces} ~\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["compress", str(run), str(tmp_path / "readme.md"), str(tmp_path / "r.crz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--level byte" in err and "CharTokenizer.fit" not in err and "ByteTokenizer" not in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r.crz").exists()


def test_compress_of_a_text_with_a_run_not_trained_on_text_names_the_training(tmp_path, capsys):
    np.save(tmp_path / "x.npy", (np.random.default_rng(0).random((40, 6)) < 0.5).astype(np.int64))
    assert main(["train", "fvsbn", "--dataset", str(tmp_path / "x.npy"), "--epochs", "1", "--no-progress",
                 "--num-samples", "1", "--out", str(tmp_path / "run")]) == 0
    (tmp_path / "notes.txt").write_text("some text\n")
    capsys.readouterr()
    assert main(["compress", str(tmp_path / "run"), str(tmp_path / "notes.txt"), str(tmp_path / "n.crz")]) == 2
    err = capsys.readouterr().err
    assert "chainrule train transformer --dataset" in err and "--level byte" in err


# ---------------------------------------------------------------------- n-grams: --level char, <unk>, seeds
def test_ngram_generate_draws_with_seed_0_by_default_as_generate_does(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20)
    assert main(["ngram", "fit", str(tmp_path / "t.txt"), "--order", "2", "--out", str(tmp_path / "lm")]) == 0
    capsys.readouterr()
    texts = []
    for extra in ([], [], ["--seed", "0"]):
        assert main(["ngram", "generate", str(tmp_path / "lm"), "--num-tokens", "30", *extra]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2]
    others = set()
    for seed in range(1, 6):
        assert main(["ngram", "generate", str(tmp_path / "lm"), "--num-tokens", "30", "--seed", str(seed)]) == 0
        others.add(capsys.readouterr().out)
    assert len(others - {texts[0]}) >= 1


def test_ngram_char_level_and_the_unk_note(tmp_path, capsys):
    """Word n-grams on a small text with --min-count 2 draw mostly <unk> and say why; the character
    level (--level char) draws characters, spaces included, and eval scores characters too."""
    words = " ".join(f"w{i}" for i in range(200))  # 200 words seen once each: all <unk> at --min-count 2
    (tmp_path / "t.txt").write_text("\n".join([words, "to be or not to be"] * 3) + "\n")
    assert main(["ngram", "fit", str(tmp_path / "t.txt"), "--order", "3", "--min-count", "4",
                 "--out", str(tmp_path / "w")]) == 0
    capsys.readouterr()
    assert main(["ngram", "generate", str(tmp_path / "w"), "--num-tokens", "50"]) == 0
    out, err = capsys.readouterr()
    assert out.count("<unk>") > 10
    assert "are <unk>" in err and "--min-count" in err and "--level char" in err
    assert main(["ngram", "fit", str(tmp_path / "t.txt"), "--order", "4", "--level", "char",
                 "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["ngram", "generate", str(tmp_path / "c"), "--prompt", "to be", "--num-tokens", "40"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("to be") and "<unk>" not in out and "\u2581" not in out and "note" not in err
    assert len(out) - 1 == len("to be") + 40  # 40 characters (a sentence's end: a line break) and print's newline
    (tmp_path / "test.txt").write_text("to be or not\n")
    assert main(["ngram", "eval", str(tmp_path / "c"), str(tmp_path / "test.txt")]) == 0
    out = capsys.readouterr().out
    assert "tokens: 13 " in out  # 12 characters of "to be or not" and </s>


# ---------------------------------------------------------------------- data: values_line, --limit
def test_values_line_works_on_every_dataset(tmp_path):
    assert load_dataset("digits").values_line() == "data: digits: values 0..16 -> K=17 (fixed by the dataset)"
    np.save(tmp_path / "x.npy", np.array([[0, 1], [1, 1], [0, 0]], dtype=np.uint8))
    ds = load_dataset(str(tmp_path / "x.npy"))
    assert ds.values_line() == ds.values.line() and "K=2" in ds.values_line()
    (tmp_path / "t.txt").write_text(TEXT)
    assert "tokens 0.." in load_dataset(str(tmp_path / "t.txt"), block_size=8).values_line()


def test_limit_keeps_the_first_n_examples_of_each_split(tmp_path, capsys):
    ds = load_dataset("digits")
    small = ds.limited(20)
    for split in ("train", "val", "test"):
        x, y = small.split(split)
        assert torch.equal(x, ds.split(split)[0][:20]) and torch.equal(y, ds.split(split)[1][:20])
    with pytest.raises(chainrule.errors.DataError, match="positive integer"):
        ds.limited(0)
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--dataset", "digits", "--limit", "30", "--epochs", "1", "--no-progress",
                 "--threads", "1", "--num-samples", "1", "--out", str(run)]) == 0
    assert "30 train / 30 val / 30 test" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["test"]["num_examples"] == 30
    assert main(["eval", str(run), "--limit", "7", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["num_examples"] == 7
    assert main(["eval", str(run), "--limit", "0", "--no-progress"]) == 2


# ---------------------------------------------------------------------- progress everywhere
def test_eval_sample_and_bayes_show_bars_and_no_progress_silences_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "nade", "--dataset", "digits", "--class-conditional", "-p", "hidden_size=8", "--limit", "50",
                 "--epochs", "1", "--threads", "1", "--num-samples", "2", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    for bar in ("epoch 1", "validation", "test", "sampling 2"):
        assert bar in err, bar
    for argv, bar in ((["eval", str(run)], "eval"), (["eval", str(run), "--bayes"], "class 10/10"),
                      (["sample", str(run), "-n", "3", "--out", str(tmp_path / "s.png")], "sampling 3")):
        assert main([*argv, "--threads", "1"]) == 0
        assert bar in capsys.readouterr().err, argv
        assert main([*argv, "--threads", "1", "--no-progress", *(["--force"] if "--out" in argv else [])]) == 0
        assert capsys.readouterr().err == ""


def test_compress_and_decompress_show_bars(char_run, tmp_path, capsys):
    _, run = char_run
    (tmp_path / "in.txt").write_text(TEXT[:40], encoding="utf-8")
    capsys.readouterr()
    assert main(["compress", str(run), str(tmp_path / "in.txt"), str(tmp_path / "in.crz"), "--threads", "1"]) == 0
    assert "compressing" in capsys.readouterr().err
    assert main(["decompress", str(run), str(tmp_path / "in.crz"), str(tmp_path / "out.txt"), "--threads", "1"]) == 0
    assert "decompressing" in capsys.readouterr().err
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == TEXT[:40]
    assert main(["compress", str(run), str(tmp_path / "in.txt"), str(tmp_path / "b.crz"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_compress_with_an_ensemble_names_member(tmp_path, capsys):
    assert main(["train", "made", "--dataset", "digits", "-p", "hidden_sizes=[8]", "-p", "num_masks=2", "--limit", "40",
                 "--epochs", "1", "--no-progress", "--threads", "1", "--num-samples", "1", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    argv = ["compress", str(tmp_path / "r"), "digits", str(tmp_path / "e.crz"), "--index", "0", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pass --member K (0..1)" in err and "member=k" not in err
    assert main(argv + ["--member", "1"]) == 0


def test_a_command_from_the_shell_counts_its_budget_from_the_process_start():
    """`chainrule train --max-seconds S` run from the shell is its process: the interpreter's start-up
    and the imports count against S (process_start reads the start from /proc)."""
    import subprocess
    import sys

    code = ("import time; time.sleep(1.0); from chainrule.cli.common import process_start; "
            "print(time.perf_counter() - process_start())")
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.0 <= age < 60


def test_main_called_from_python_counts_from_the_call(monkeypatch):
    """main(argv) inside a longer Python process (a notebook, these tests) counts from the call; the
    console script, main() with the process's own argv, from the process's start."""
    import importlib
    import sys
    import time

    cli_main = importlib.import_module("chainrule.cli.main")  # the module (chainrule.cli.main is also the function)
    seen = []
    monkeypatch.setattr(cli_main, "cmd_models", lambda args: seen.append(args.started) or 0)
    monkeypatch.setattr(cli_main, "process_start", lambda: -123.0)
    t0 = time.perf_counter()
    assert cli_main.main(["models"]) == 0
    monkeypatch.setattr(sys, "argv", ["chainrule", "models"])
    assert cli_main.main() == 0
    assert seen[0] >= t0 and seen[1] == -123.0
