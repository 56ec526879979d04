"""The README *runs* (issue 12, "a new user's first hour"): every ```python block executes, and the
`chainrule` walkthrough — every command of the ```bash blocks and every whole command quoted inline —
runs in README order, in one temporary directory, at tiny scale, each command reading the runs the
commands before it wrote, as a reader's would. tests/test_readme_commands.py only *parses* the
commands; this catches what fails at run time (a `generate --max-new-tokens` beyond the trained
window, a run no command writes, an option that parses but is refused).

A command runs in this process through `chainrule.cli.main.main(argv)` (torchrun: a subprocess of
the same launcher), made small only by options appended after it, which argparse lets win over the
README's own: `--max-steps 3 --epochs 1 --num-samples 2` for `train`, `--epochs 1 --max-seconds 10`
for `quickstart`, `--no-progress --threads 1` wherever accepted, and the few per-command additions
in EXTRA_ARGS, each with its reason. Placeholders (DATA, RUN, ...) are substituted by PLACEHOLDERS,
synopses run as the concrete commands of SYNOPSES, files a reader brings are written by FILES, and
the ```python blocks change only by PY_SUBSTITUTIONS. `test_the_tables_match_the_readme` fails when
an entry of a table no longer matches the README, so the tables cannot go stale.

Commands on data a fresh machine does not have (DATA_DATASETS, files under $CHAINRULE_DATA, which CI
sets) are skipped with the reason when $CHAINRULE_DATA is unset, and so are the commands reading the
runs they would have written; with it set, they all run.

Timings (2-core machine shared with other jobs; `--durations=0` shows each command's): about 45 s
without $CHAINRULE_DATA, 2.5 min with it (the largest: detect --train-background 26 s, the
binarized-MNIST PixelCNN 18 s, eval --bayes 15 s, the two-rank torchrun 11 s).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from chainrule.cli.main import build_parser, main

README_PATH = Path(__file__).resolve().parents[1] / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DATA = os.environ.get("CHAINRULE_DATA") or None
NO_DATA = "needs $CHAINRULE_DATA (the dataset files are not on a fresh machine; CI sets it)"

# datasets read from files in $CHAINRULE_DATA / --data-dir (digits and the user's own files are local)
DATA_DATASETS = {"mnist", "fashion-mnist", "binarized-mnist", "tinyshakespeare", "cifar10"}


# ====================================================================== the tables
# ---- ```python blocks, in README order: (name, a string of the block, [(README text, replacement, reason)])
PY_SUBSTITUTIONS: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    ("library", "from chainrule.training import Trainer, TrainConfig", [
        ("TrainConfig(epochs=200, lr=1e-3, patience=20)", "TrainConfig(epochs=1, max_steps=3, lr=1e-3, patience=20)",
         "200 epochs of an 8-mask MADE take minutes; 3 steps run every line after it the same way"),
        ("TrainConfig(epochs=50)", "TrainConfig(epochs=1, max_steps=3)",
         "50 epochs of NADE-200: minutes; 3 steps run every line after it the same way"),
        ("TrainConfig(epochs=20, lr=1e-3)", "TrainConfig(epochs=1, max_steps=3, lr=1e-3)",
         "20 epochs of a whole run: a minute; 3 steps write the same run directory"),
        ("TrainConfig(epochs=5)", "TrainConfig(epochs=2, steps_per_epoch=3)",
         "5 epochs of the 8-mask MADE: a minute; 2 short epochs still print both rows"),
    ]),
    ("sigma_gpt", 'create_model("sigma_gpt"', []),
    ("tokenizers", "from chainrule.text.tokenizers import", []),
]
# files a ```python block reads that the reader brings: name -> (its content, reason)
PY_FILES: dict[str, tuple[str, str]] = {
    "corpus.txt": (("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
                    "Any text: tabs\t, emoji \N{WAVING HAND SIGN}, accents \N{LATIN SMALL LETTER E WITH ACUTE}\n") * 40,
                   "the reader's own text for BPETokenizer.fit; a few kilobytes of it"),
}


def _ngram_text(seed: int, lines: int) -> str:
    words = "to be or not that is the question whether tis nobler in mind suffer slings and arrows".split()
    rng = np.random.default_rng(seed)
    return "".join("to be " + " ".join(rng.choice(words, size=int(rng.integers(3, 12)))) + "\n" for _ in range(lines))


def _write_npy(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((300, 1, 4, 4)) < 0.3).astype(np.uint8))


def _write_gpt2(path: Path) -> None:
    """A Hugging Face GPT-2 directory (config.json, model.safetensors, tokenizer.json), tiny and random:
    written by chainrule's export, which needs neither transformers nor the network."""
    from chainrule.interop.huggingface import export_gpt2
    from chainrule.models import create_model
    from chainrule.text.tokenizers import BPETokenizer

    tok = BPETokenizer.fit(PY_FILES["corpus.txt"][0], vocab_size=300, specials=())
    torch.manual_seed(0)
    model = create_model("transformer", (64,), tok.vocab_size, num_layers=1, num_heads=2, embed_dim=16, bias=True,
                         activation="gelu_new")
    export_gpt2(model, path, tok)


# files the walkthrough's commands read that the reader brings: name -> (writer, reason)
FILES = {
    "gpt2": (_write_gpt2, "'the files of GPT-2 small': a tiny random GPT-2 in the same layout (64 tokens, 1 layer)"),
    "essay.txt": (lambda p: p.write_text("The meaning of life is a question. " * 20),
                  "a text file of the reader's to score and compress with GPT-2"),
    "my_data.npy": (_write_npy, "'your own data': 300 random binary 4x4 images, (N, C, H, W)"),
    "notes.txt": (lambda p: p.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n"),
                  "a text file of your own for the text model (characters Shakespeare's text has)"),
    "train.txt": (lambda p: p.write_text(_ngram_text(0, 300)), "your own text, one sentence a line, with 'to be'"),
    "test.txt": (lambda p: p.write_text(_ngram_text(1, 30)), "your own held-out text, the same words"),
    "run.toml": (lambda p: p.write_text(toml_block()), "the README's ```toml block, as the text says"),
}

# placeholder words in commands -> what the test passes (whole words, also as a path component)
PLACEHOLDERS: dict[str, tuple[str | None, str]] = {
    "DATA": (DATA, "'a folder holding tinyshakespeare/input.txt', ...: $CHAINRULE_DATA"),
    "NAME": ("nade", "`chainrule models NAME`: any model name"),
    "RUN": ("runs/nade", "a run directory: the latest one written before the command (train nade ... --out runs/nade)"),
    "RUN2": ("runs/nade-again", "a new run directory"),
    # HOST and R (node rank) appear only in the multi-machine torchrun command, which NOT_RUN lists
}

# README lines (or inline commands) that are not run: text -> reason
NOT_RUN: dict[str, str] = {
    "pip install .": "installs the package: the test runs the installed checkout",
    'pip install ".[test]"': "installs the test extras: the test runs inside them",
    "python -m pytest": "the whole test suite, of which this test is a part",
    "torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 --nproc-per-node 4 "
    "-m chainrule train pixelcnn --dataset binarized-mnist --data-dir DATA --out /shared/runs/pixelcnn":
        "an illustration of a two-machine setup (HOST, node rank R, a shared /shared filesystem); "
        "the two-rank command above it runs",
    # inline mentions of a command in prose: a name, not a command to run
    "chainrule eval": "a command's name in prose",
    "chainrule inspect": "a command's name in prose",
    "chainrule train": "a command's name in prose",
    "chainrule generate --prompt": "an option's name in prose",
    "chainrule ngram generate --prompt": "an option's name in prose",
    "chainrule complete RUN --input INPUT --mask MASK": "a synopsis; the concrete `chainrule complete` commands run",
    "chainrule compose VQ PRIOR --out RUN": "a synopsis in prose; the concrete `chainrule compose` command runs",
    "chainrule complete runs/digits_sigma --input digits --index 0 1 2 3 4 5 --mask random:0.5 --num 5":
        "how a picture of the README was made, from a 25-CPU-minute benchmark run (benchmarks/any_order_mnist.py); "
        "the same command runs on runs/sgpt-mnist",
    "chainrule complete RUN --input binarized-mnist --index 0 1 2 3 --mask random:0.5 --num 4":
        "how the MNIST completion pictures were made, from a benchmark run; `chainrule complete runs/sgpt-mnist "
        "--input binarized-mnist ...` runs",
    # the pictures of a benchmark run: runs/binarized_mnist_row_lstm is written by
    # benchmarks/binarized_mnist.py (3 CPU-hours), not by a README command
    "chainrule sample runs/binarized_mnist_row_lstm -n 64 --seed 0":
        "how a picture of the README was made, from a 3-CPU-hour benchmark run; the same command runs on runs/pixelcnn",
    "chainrule complete runs/binarized_mnist_row_lstm --input binarized-mnist --split test --index 1500 3500 5500 "
    "8500 --mask top-half --num 6 --seed 0":
        "how a picture of the README was made, from a 3-CPU-hour benchmark run; the same command runs on runs/pixelcnn",
}

# inline synopses run as a concrete command: README text -> (the command run, reason)
SYNOPSES: dict[str, tuple[str, str]] = {
    "chainrule generate RUN --draft SMALL_RUN --gamma 4":
        ("chainrule generate runs/gpt2 --draft runs/gpt2 --gamma 4 --max-new-tokens 8",
         "a synopsis; the imported GPT-2 of the section before as target and as its own draft"),
    "chainrule report RUN [RUN ...] [--out FILE.html]":
        ("chainrule report runs/cnade runs/nade --out report.html",
         "the README's only report command, a synopsis: two runs written just before it"),
    "chainrule train ... --out RUN --resume":
        ("chainrule train nade --dataset digits --save-every 200 --keep-last 3 --out runs/nade --resume",
         "a synopsis ('...' is the run's command): the runs/nade command above, resumed"),
}

# commands that read a run a later README command writes: README text -> (the run, reason); each
# runs right after the command whose --out is that run
FORWARD_REFERENCES: dict[str, tuple[str, str]] = {
    "chainrule compress runs/gpt notes.txt notes.crz":
        ("runs/gpt", "the compression section shows a text model; runs/gpt is trained in 'A character-level GPT'"),
    "chainrule inspect runs/nade --index 3":
        ("runs/nade", "runs/nade is trained in 'Command line' below"),
}

# options appended to every command of a subcommand (when its parser has them)
TRAIN_SHORT = ["--max-steps", "3", "--epochs", "1", "--num-samples", "2"]
QUICKSTART_SHORT = ["--epochs", "1", "--max-seconds", "10"]  # quickstart has no --max-steps: 1 epoch = 16 steps
COMMON = ["--no-progress", "--threads", "1"]
# options appended to one command: README text -> (options, reason)
EXTRA_ARGS: dict[str, tuple[list[str], str]] = {
    "chainrule train pixelcnn --dataset binarized-mnist --data-dir DATA -p channels=64 -p num_layers=12 "
    "--out runs/pixelcnn":
        (["-p", "channels=8", "-p", "num_layers=1"],
         "validation and test (20,000 28x28 images) of the 130k-parameter PixelCNN took 7.5 min with --max-steps 3"),
    "chainrule train gated_pixelcnn --dataset mnist --binarize threshold --class-conditional --out runs/cgated":
        (["-p", "channels=4", "-p", "num_layers=1", "-p", "head_channels=4", "-p", "first_kernel_size=3"],
         "the default 64 channels x 12 layers: minutes of validation and test on 28x28, and `eval --bayes` is 10 "
         "passes over the test split (100 s even at 8 channels x 2 layers)"),
    "chainrule eval runs/cgated --bayes":
        (["--batch-size", "128"], "10 passes over 10,000 images in batches of 1024 spent 2/3 of their 100 s in the "
                                  "kernel (page faults on the large activations); batches of 128: 20 s"),
    "chainrule train nade --dataset fashion-mnist --binarize threshold -p hidden_size=100 --epochs 5 --out runs/fnade":
        (["-p", "hidden_size=8"], "`detect --train-background` trains a background model of the run's size for whole "
                                  "epochs over 50,000 images: 155 s at hidden_size=100"),
    "chainrule detect runs/fnade --ood mnist --score input-complexity --compressor bz2":
        (["--bootstrap", "100"], "1000 bootstrap resamples of three metrics over 20,000 scores: 25 s of scikit-learn"),
    "chainrule detect runs/fnade --ood mnist --score likelihood-ratio --train-background 0.2":
        (["--bootstrap", "100", "--background-epochs", "1"],
         "as above; and one epoch of the background model (over 50,000 images) instead of 3"),
    "chainrule train sigma_gpt --dataset tinyshakespeare --data-dir DATA --block-size 65 --batch-size 12 "
    "--optimizer adamw --lr 1e-3 --beta2 0.99 --weight-decay 0.1 --warmup-steps 100 --schedule cosine "
    "--min-lr 1e-4 --grad-clip 1 --steps-per-epoch 500 --max-steps 2000 --epochs 4 --patience 0 --out runs/sgpt":
        (["--limit", "300"], "validation and test of every window of the text: the first 300 windows of each "
                             "split test the same command"),
    "chainrule train sigma_gpt --dataset binarized-mnist --data-dir DATA -p embed_dim=64 --batch-size 16 "
    "--out runs/sgpt-mnist":
        (["--limit", "64", "-p", "num_layers=1"],
         "validating and testing 20,000 digits of 784 positions took over ten minutes after 3 steps; 64 of each "
         "split and one layer run every later command the same way"),
    "chainrule compress runs/pixelcnn binarized-mnist mnist-test.crz":
        (["--index", "0", "1", "2"],
         "the whole test split is 10,000 x 784 incremental steps; three digits code and decode the same way"),
}

# what a command must leave behind (besides exit status 0): README text -> paths (globs)
EXPECTED_FILES: dict[str, list[str]] = {
    "chainrule quickstart": ["runs/quickstart/best", "runs/quickstart/samples.png", "runs/quickstart/curve.png",
                             "runs/quickstart/log.csv"],
    "chainrule compress runs/pixelcnn binarized-mnist mnist-test.crz": ["mnist-test.crz"],
    "chainrule decompress runs/pixelcnn mnist-test.crz mnist-test.npy": ["mnist-test.npy"],
    "chainrule inspect runs/gpt --split val --index 0 --out val0.html": ["val0.html"],
    "chainrule train nade --dataset digits --save-every 200 --keep-last 3 --out runs/nade":
        ["runs/nade/checkpoints/step-*", "runs/nade/last"],
    "chainrule ngram export-arpa runs/kn5 kn5.arpa": ["kn5.arpa"],
    "chainrule report RUN [RUN ...] [--out FILE.html]": ["report.html"],
    "chainrule train --config RUN/config.toml --out RUN2": ["runs/nade-again/config.toml"],
}

# what a command must print: README text -> a substring of its output
EXPECTED_OUTPUT: dict[str, str] = {
    "chainrule quickstart": "Test NLL:",
    "torchrun --nproc-per-node 2 -m chainrule train made --dataset digits --batch-size 64 --out runs/ddp":
        "DDP: 2 ranks",
    "chainrule generate runs/gpt --prompt \"ROMEO:\" --max-new-tokens 200 --temperature 0.8 --sliding-window": "ROMEO:",
}


# ====================================================================== reading the README
def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def toml_block() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 1, f"the README has {len(blocks)} ```toml blocks; `train --config run.toml` reads one"
    return blocks[0]


def _normal(text: str) -> str:
    return " ".join(text.split())


def readme_lines() -> list[tuple[int, str]]:
    """(offset, text) of every shell command of the README in reading order: each `&&` part of each
    line of the ```bash blocks (continuations joined, trailing comments dropped), and every inline
    code span that starts with `chainrule `."""
    found = []
    for block in re.finditer(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.group(1).replace("\\\n", " ")
        pos = block.start(1)
        for i, line in enumerate(text.splitlines()):
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                if part.strip():
                    found.append((pos + i, _normal(part)))
    for span in re.finditer(r"(?<!`)`(chainrule [^`]*)`(?!`)", README):
        found.append((span.start(), _normal(span.group(1))))
    return sorted(found)


def walkthrough() -> list[str]:
    """The README's commands (whitespace normalized) in the order they run: README order, each
    forward reference moved right after the command writing the run it reads."""
    texts = [text for _, text in readme_lines()]
    ordered = [t for t in texts if t not in FORWARD_REFERENCES]
    for t in texts:
        if t in FORWARD_REFERENCES:
            run = FORWARD_REFERENCES[t][0]
            writers = [i for i, w in enumerate(ordered) if w not in NOT_RUN and _writes(readme_words(w)) == run]
            assert writers, f"{t!r} reads {run}, which no README command writes (--out {run})"
            ordered.insert(writers[0] + 1, t)
    return ordered


# ====================================================================== the tables against the README
def test_the_readme_has_python_blocks_and_commands():
    assert len(python_blocks()) >= 2
    assert len([t for t in walkthrough() if t not in NOT_RUN]) >= 40


def test_the_tables_match_the_readme():
    blocks = python_blocks()
    assert len(blocks) == len(PY_SUBSTITUTIONS), "a ```python block was added or removed: list it in PY_SUBSTITUTIONS"
    for (_, marker, subs), block in zip(PY_SUBSTITUTIONS, blocks):
        assert marker in block, f"python block marker {marker!r} is no longer in its block"
        for old, _, _ in subs:
            assert block.count(old) == 1, f"substitution {old!r} matches {block.count(old)} times in its block"
    texts = set(walkthrough())
    for table in (NOT_RUN, SYNOPSES, FORWARD_REFERENCES, EXTRA_ARGS, EXPECTED_FILES, EXPECTED_OUTPUT):
        stale = set(table) - texts
        assert not stale, f"entries that are no longer README commands: {sorted(stale)}"
    for name in [*FILES, *PY_FILES]:
        assert name in README, f"{name} is no longer mentioned in the README"
    for word in PLACEHOLDERS:
        assert re.search(rf"\b{word}\b", README), f"placeholder {word} no longer appears in the README"
    for text in texts - set(NOT_RUN):
        assert text.split()[0] in ("chainrule", "torchrun"), (
            f"README shell line {text!r} is neither a chainrule command nor listed in NOT_RUN")


# ====================================================================== the python blocks
@pytest.mark.parametrize("index", range(len(PY_SUBSTITUTIONS)), ids=[name for name, _, _ in PY_SUBSTITUTIONS])
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    """The block runs as written, but for PY_SUBSTITUTIONS, in an empty directory holding PY_FILES."""
    block = python_blocks()[index]
    for old, new, _ in PY_SUBSTITUTIONS[index][2]:
        assert block.count(old) == 1, f"substitution {old!r} no longer matches the README"
        block = block.replace(old, new)
    monkeypatch.chdir(tmp_path)
    for name, (content, _) in PY_FILES.items():
        if re.search(rf"\b{re.escape(name)}\b", block):
            (tmp_path / name).write_text(content, encoding="utf-8")
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


# ====================================================================== the walkthrough
@dataclass
class Walk:
    root: Path
    skipped: dict[str, str] = field(default_factory=dict)   # run -> why the command that would write it was skipped
    ran: set[str] = field(default_factory=set)              # the commands run or skipped so far


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme-walk")
    for name, (write, _) in FILES.items():
        write(root / name)
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(root)
    try:
        yield Walk(root)
    finally:  # the commands ran in this process: --threads 1 is torch's global setting
        os.chdir(cwd)
        torch.set_num_threads(threads)


def _options(parser: argparse.ArgumentParser, words: list[str]) -> set[str]:
    """The option strings of the (sub)command ``words`` names, e.g. ["train"] or ["ngram", "fit"]."""
    for w in words:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or w not in sub.choices:
            break
        parser = sub.choices[w]
    return {s for a in parser._actions for s in a.option_strings}


def _substitute(words: list[str]) -> list[str]:
    out = []
    for w in words:
        parts = w.split("/")
        if any(p in PLACEHOLDERS for p in parts):
            values = [PLACEHOLDERS[p][0] if p in PLACEHOLDERS else p for p in parts]
            assert None not in values, f"placeholder in {w} has no value"
            w = "/".join(values)  # type: ignore[arg-type]
        out.append(w)
    return out


def _common(options: set[str]) -> list[str]:
    return [*(["--no-progress"] if "--no-progress" in options else []),
            *(["--threads", "1"] if "--threads" in options else [])]


def readme_words(text: str) -> list[str]:
    """The words of README command ``text`` (the concrete command of a synopsis), placeholders kept."""
    return shlex.split(SYNOPSES[text][0] if text in SYNOPSES else text)


def build_argv(text: str) -> list[str]:
    """What runs for README command ``text``: placeholders substituted, the short-run options
    appended; torchrun becomes this interpreter's ``-m torch.distributed.run``, the same launcher."""
    words = _substitute(readme_words(text))
    if words[0] == "torchrun":
        m = words.index("-m")
        launcher, cli = [sys.executable, "-m", "torch.distributed.run", *words[1:m], "-m", "chainrule"], words[m + 2:]
    else:
        launcher, cli = ["chainrule"], words[1:]
    extra = TRAIN_SHORT if cli[0] == "train" else QUICKSTART_SHORT if cli[0] == "quickstart" else []
    return [*launcher, *cli, *extra, *_common(_options(build_parser(), cli)), *EXTRA_ARGS.get(text, ([], ""))[0]]


def _needs_data(text: str) -> str | None:
    """What of DATA_DATASETS README command ``text`` reads (named, in DATA, or by its --config file), or None."""
    words = readme_words(text)
    named = [w for w in words if w in DATA_DATASETS]
    if "--config" in words:
        config = Path(_substitute([words[words.index("--config") + 1]])[0])
        if config.is_file() and (name := tomllib.loads(config.read_text()).get("dataset")) in DATA_DATASETS:
            named.append(f"{name} (in {config})")
    if named or "DATA" in words:
        return ", ".join(dict.fromkeys(named)) or "DATA"
    return None


def _cli_args(argv: list[str]) -> tuple[list[str], argparse.Namespace]:
    """The words after ``chainrule`` (or torchrun's ``-m chainrule``), and what the real parser makes of them."""
    cli = argv[len(argv) - argv[::-1].index("chainrule"):]
    return cli, build_parser().parse_args(cli)


def _reads(argv: list[str]) -> list[str]:
    """The run directories a command reads (its positional run(s), a --config file's run)."""
    _, args = _cli_args(argv)
    runs = [getattr(args, "run", None), getattr(args, "model_dir", None), *(getattr(args, "runs", None) or [])]
    if getattr(args, "config", None) and Path(args.config).parent != Path("."):
        runs.append(str(Path(args.config).parent))
    return [r for r in runs if r]


def _writes(argv: list[str]) -> str | None:
    """The run directory a command writes (train, quickstart, import-hf, ngram fit), else None."""
    if "chainrule" not in argv:
        return None
    cli, args = _cli_args(argv)
    if args.command in ("train", "quickstart", "import-hf") or (args.command == "ngram" and cli[1] == "fit"):
        return args.out
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS = walkthrough()
# run -> the README commands writing it, in walkthrough order
WRITERS: dict[str, list[str]] = {}
for _text in STEPS:
    if _text not in NOT_RUN and (_run := _writes(readme_words(_text))):
        WRITERS.setdefault(_run, []).append(_text)


@pytest.mark.parametrize("text", STEPS, ids=[t[:90] for t in STEPS])
def test_readme_command_runs(text, walk, capsys):
    """README command ``text`` runs (exit status 0), in the walkthrough's directory, after the ones before it."""
    if text in NOT_RUN:
        pytest.skip(f"not run: {NOT_RUN[text]}")
    if DATA is None and (needs := _needs_data(text)):
        if (out := _writes(readme_words(text))) is not None:
            walk.skipped[out] = f"reads {needs}: {NO_DATA}"
        pytest.skip(f"reads {needs}: {NO_DATA}")
    argv = build_argv(text)
    for run in _reads(argv):
        if not (walk.root / run).exists():
            earlier = [w for w in WRITERS.get(run, []) if STEPS.index(w) < STEPS.index(text)]
            if run in walk.skipped:
                if (out := _writes(argv)) is not None:
                    walk.skipped[out] = walk.skipped[run]
                pytest.skip(f"reads {run}, whose command was skipped ({walk.skipped[run]})")
            if not earlier:
                later = (f" (a later one does, `{WRITERS[run][0]}`: list it in FORWARD_REFERENCES)"
                         if run in WRITERS else "")
                pytest.fail(f"`{text}` reads {run}, which no earlier README command writes{later}")
            if not walk.ran & set(earlier):
                pytest.skip(f"reads {run}, whose command `{earlier[-1]}` did not run in this session")
            pytest.fail(f"`{text}` reads {run}, which `{earlier[-1]}` ran and did not write")
    walk.ran.add(text)
    if argv[0] == "chainrule":
        rc = main(argv[1:])
        captured = capsys.readouterr()
        output = captured.out + captured.err
    else:  # torchrun: a subprocess, the rendezvous on a free local port (PET_* are torchrun's option variables)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PET_MASTER_ADDR": "127.0.0.1",
               "PET_MASTER_PORT": str(_free_port())}
        p = subprocess.run(argv, env=env, cwd=walk.root, capture_output=True, text=True, timeout=900)
        rc, output = p.returncode, p.stdout + p.stderr
    assert rc == 0, f"`{text}` (run as {shlex.join(argv)}) exited {rc}:\n{output[-3000:]}"
    if (expected := EXPECTED_OUTPUT.get(text)) is not None:
        assert expected in output, f"`{text}` did not print {expected!r}:\n{output[-3000:]}"
    for pattern in EXPECTED_FILES.get(text, []):
        assert list(walk.root.glob(pattern)), f"`{text}` did not write {pattern}"
