"""What a run writes besides best/ and last/: the K most recent checkpoints (keep_last), TensorBoard
event files, progress bars, one epoch convention everywhere, and format versions of checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import chainrule
from chainrule.cli import main
from chainrule.errors import CheckpointError, InputError
from chainrule.io import run_state
from chainrule.training import TrainConfig, Trainer
from chainrule.training.callbacks import Callback
from chainrule.training.trainer import STATE_VERSION


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return chainrule.create_model("made", (6,), 2, hidden_sizes=[12])


def _data(n: int = 40) -> torch.Tensor:
    return torch.randint(2, (n, 6), generator=torch.Generator().manual_seed(0))


def _steps(run) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


# ---------------------------------------------------------------------- keep_last
def test_keep_last_is_validated():
    for bad in (0, -1, 1.5, True, None, "2"):
        with pytest.raises(InputError, match="keep_last must be an integer >= 1"):
            TrainConfig(keep_last=bad)
    with pytest.raises(InputError, match="save_last=False"):
        TrainConfig(keep_last=3, save_last=False)
    with pytest.raises(InputError, match="tensorboard must be True, False or None"):
        TrainConfig(tensorboard="yes")
    assert TrainConfig().keep_last == 1 and TrainConfig().tensorboard is None


def test_keep_last_keeps_the_k_most_recent_checkpoints(tmp_path):
    """5 steps per epoch, a checkpoint every 2 steps and at every epoch end: steps 2 4 5 6 8 10 12
    14 15; keep_last=3 leaves 12, 14, 15, each a complete checkpoint (15 = last/), and a resume from
    a copy of an older one ends as the uninterrupted run."""
    data = _data()
    config = TrainConfig(epochs=3, batch_size=8, lr=3e-2, patience=None, seed=1, save_every=2, keep_last=3)
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000001").mkdir(parents=True)  # not chainrule's: must stay
    (run / "checkpoints" / "notes.txt").write_text("mine")
    seen = []
    original = run_state.keep_checkpoint

    def spy(out_dir, step, keep_last):
        original(out_dir, step, keep_last)
        seen.append(_steps(run))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(run_state, "keep_checkpoint", spy)
        ref = _model()
        Trainer(ref, config, out_dir=run, progress=False).fit(data, data[:16])
    assert seen[0] == [1, 2] and seen[2] == [1, 2, 4, 5]  # never more than 3 of chainrule's
    assert _steps(run) == [1, 12, 14, 15]
    assert (run / "checkpoints" / "notes.txt").read_text() == "mine"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries left
    for step in (12, 14, 15):
        ck = run / "checkpoints" / f"step-{step:06d}"
        state = json.loads((ck / "trainer_state.json").read_text())
        assert state["step"] == step and state["version"] == STATE_VERSION
        chainrule.load(ck)  # a model checkpoint like best/ and last/
    a = load_file(str(run / "last" / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / "step-000015" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # any kept checkpoint resumes: put step 12 (mid-epoch 3) back as last/
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(run / "checkpoints" / "step-000012", other / "last")
    resumed = _model(seed=7)
    Trainer(resumed, dataclasses.replace(config, keep_last=1), out_dir=other,
            progress=False).fit(data, data[:16], resume=True)
    for (k, x), y in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), k
    # a fresh run in the same directory starts its checkpoints afresh (chainrule's only)
    Trainer(_model(), TrainConfig(epochs=1, batch_size=8, patience=None), out_dir=run, progress=False).fit(data)
    assert _steps(run) == [1]


def test_keep_last_from_the_command_line_and_a_config_file(tmp_path, capsys):
    data = tmp_path / "bits.npy"
    np.save(data, (np.random.default_rng(0).random((100, 6)) < 0.4).astype(np.uint8))
    common = ["train", "fvsbn", "--dataset", str(data), "--epochs", "3", "--batch-size", "20", "--patience", "0",
              "--no-progress", "--num-samples", "2"]
    assert main([*common, "--out", str(tmp_path / "a"), "--keep-last", "2"]) == 0
    assert _steps(tmp_path / "a") == [8, 12]  # 4 steps per epoch (80 training examples)
    assert "keep-last = 2" in (tmp_path / "a" / "config.toml").read_text()
    (tmp_path / "run.toml").write_text("keep-last = 3\nsave-every = 2\n")
    assert main([*common, "--out", str(tmp_path / "b"), "--config", str(tmp_path / "run.toml")]) == 0
    assert _steps(tmp_path / "b") == [8, 10, 12]
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "c"), "--keep-last", "0"]) == 2
    assert "--keep-last must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------- format versions
def test_newer_format_versions_are_refused_clearly(tmp_path):
    data = _data()
    run = tmp_path / "run"
    Trainer(_model(), TrainConfig(epochs=1, batch_size=8, patience=None), out_dir=run, progress=False).fit(data)
    # the model checkpoint (config.json's format_version)
    cfg_path = run / "best" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"newer chainrule \(format version 99, this one reads up to 2\)"):
        chainrule.load(run / "best")
    cfg["format_version"] = "two"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a version number"):
        chainrule.load(run / "best")
    # resuming: last/config.json, then trainer_state.json's own version
    state_path = run / "last" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    assert state["version"] == STATE_VERSION
    state_path.write_text(json.dumps({**state, "version": STATE_VERSION + 1}))
    with pytest.raises(CheckpointError, match=f"newer chainrule \\(trainer state version {STATE_VERSION + 1}"):
        Trainer(_model(), TrainConfig(epochs=2, batch_size=8), out_dir=run, progress=False).fit(data, resume=True)
    state_path.write_text(json.dumps(state))
    last_cfg = run / "last" / "config.json"
    last_cfg.write_text(json.dumps({**json.loads(last_cfg.read_text()), "format_version": 3}))
    with pytest.raises(CheckpointError, match="newer chainrule"):
        Trainer(_model(), TrainConfig(epochs=2, batch_size=8), out_dir=run, progress=False).fit(data, resume=True)


def test_version_1_trainer_state_is_upgraded_to_epochs_from_1(tmp_path):
    """A last/ written before the epoch convention (no version: epochs counted from 0) resumes with
    its history and best epoch counted from 1, and log.csv rewritten to match."""
    data = _data()
    run = tmp_path / "run"
    config = TrainConfig(epochs=2, batch_size=8, patience=None)
    Trainer(_model(), config, out_dir=run, progress=False).fit(data, data[:16])
    path = run / "last" / "trainer_state.json"
    state = json.loads(path.read_text())
    del state["version"]
    state["result"]["history"] = [{**r, "epoch": r["epoch"] - 1} for r in state["result"]["history"]]
    state["result"]["best_epoch"] -= 1
    path.write_text(json.dumps(state))
    res = Trainer(_model(), TrainConfig(epochs=3, batch_size=8, patience=None), out_dir=run,
                  progress=False).fit(data, data[:16], resume=True)
    assert [r["epoch"] for r in res.history] == [1, 2, 3] and 1 <= res.best_epoch <= 3
    assert [int(r["epoch"]) for r in csv.DictReader(open(run / "log.csv"))] == [1, 2, 3]


# ---------------------------------------------------------------------- TensorBoard
def test_tensorboard_event_files_hold_the_logged_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _data()
    run = tmp_path / "run"
    res = Trainer(_model(), TrainConfig(epochs=3, batch_size=8, patience=None, schedule="cosine"), out_dir=run,
                  progress=False).fit(data, data[:16])
    files = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    val = acc.Scalars("val/nll_nats")
    assert [e.step for e in val] == [5, 10, 15]  # optimizer steps at the epoch ends
    assert [e.value for e in val] == pytest.approx([r["val_nll_nats"] for r in res.history], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/nll_nats")] == pytest.approx(
        [r["train_nll_nats"] for r in res.history], rel=1e-6)
    assert [e.value for e in acc.Scalars("epoch")] == [1, 2, 3]
    assert [e.step for e in acc.Scalars("train/batch_nll_nats")] == list(range(1, 16))
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert len(lr) == 15 and lr[0] > lr[-1]  # the cosine schedule, step by step
    # the per-step curve carries nll_offset as the epoch rows do (standardized data: the NLL of x, not of z)
    res = Trainer(_model(), TrainConfig(epochs=1, batch_size=8, patience=None), out_dir=tmp_path / "offset",
                  progress=False, nll_offset=100.0).fit(data)
    acc = EventAccumulator(str(tmp_path / "offset" / "tensorboard"))
    acc.Reload()
    batches = [e.value for e in acc.Scalars("train/batch_nll_nats")]
    assert len(batches) == 5 and sum(batches) / 5 == pytest.approx(res.history[0]["train_nll_nats"], rel=1e-6)
    assert res.history[0]["train_nll_nats"] > 100
    # off on request
    Trainer(_model(), TrainConfig(epochs=1, batch_size=8, tensorboard=False), out_dir=tmp_path / "off",
            progress=False).fit(data)
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_tensorboard_after_a_resume_shows_each_step_once(tmp_path, monkeypatch):
    """Killed at step 9 (the checkpoint is step 6's), resumed: TensorBoard hides the killed run's
    events after step 6 (purge_step), so every step appears once, with the uninterrupted values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _data()
    config = TrainConfig(epochs=3, batch_size=8, patience=None, save_every=3)
    Trainer(_model(), config, out_dir=tmp_path / "ref", progress=False).fit(data, data[:16])

    class Kill(Exception):
        pass
    original, calls = Trainer.train_step, [0]

    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 9:
            raise Kill
        return original(self, *args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", step)
        with pytest.raises(Kill):
            Trainer(_model(), config, out_dir=tmp_path / "run", progress=False).fit(data, data[:16])
    Trainer(_model(), config, out_dir=tmp_path / "run", progress=False).fit(data, data[:16], resume=True)
    scalars = {}
    for name in ("ref", "run"):
        acc = EventAccumulator(str(tmp_path / name / "tensorboard"))
        acc.Reload()
        scalars[name] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
                         for tag in ("train/batch_nll_nats", "val/nll_nats", "train/lr")}
    assert [s for s, _ in scalars["run"]["train/batch_nll_nats"]] == list(range(1, 16))
    assert scalars["run"] == scalars["ref"]


def test_without_tensorboard_training_works_and_writes_no_event_files(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    data = _data()
    res = Trainer(_model(), TrainConfig(epochs=2, batch_size=8, patience=None), out_dir=tmp_path / "run",
                  progress=False).fit(data, data[:16])
    assert res.epochs_run == 2 and (tmp_path / "run" / "log.csv").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()
    with pytest.raises(InputError, match=r"tensorboard=True needs the tensorboard package"):
        Trainer(_model(), TrainConfig(epochs=1, tensorboard=True), out_dir=tmp_path / "req", progress=False).fit(data)
    assert not (tmp_path / "req").exists()  # refused before anything was written


# ---------------------------------------------------------------------- progress bars
def test_progress_bars_show_totals_and_log_lines_start_on_their_own_line(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="chainrule.training.trainer")
    handler = logging.StreamHandler(sys.stderr)  # the console handler a CLI user has (capsys's stderr)
    handler.setFormatter(logging.Formatter("LOGLINE %(message)s"))
    logging.root.addHandler(handler)
    try:
        data = _data()
        res = Trainer(_model(), TrainConfig(epochs=3, batch_size=8, steps_per_epoch=7, patience=5), out_dir=tmp_path,
                      progress=True).fit(data, data[:16])
    finally:
        logging.root.removeHandler(handler)
    err = capsys.readouterr().err
    assert res.epochs_run == 3
    assert re.search(r"epoch 1: +0%\|[^\r\n]*\| 0/7 ", err), err  # the step bar, with its total
    assert "train (early stopping)" in err  # the epoch count is a ceiling
    assert re.search(r"train \(early stopping\): 100%\|[^\r\n]*\| 3/3 ", err), err  # ends at the right count
    lines = re.findall(r"(?:^|[\r\n])([^\r\n]*)LOGLINE epoch (\d)", err)
    assert [n for _, n in lines] == ["1", "2", "3"], err
    assert all(before.strip() == "" for before, _ in lines), err  # nothing glued before a log line
    # off: nothing on stderr
    Trainer(_model(), TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path / "quiet", progress=False).fit(data)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------- one epoch convention
def test_printed_best_epoch_results_json_and_log_csv_agree(tmp_path, capsys):
    """Epochs count from 1 everywhere: the printed best epoch, results.json's best_epoch,
    best/config.json's, and the log.csv row (its `epoch` column) of the lowest validation NLL."""
    data = tmp_path / "bits.npy"
    rng = np.random.default_rng(0)
    np.save(data, (rng.random((200, 8)) < 0.3).astype(np.uint8))
    run = tmp_path / "run"
    # a learning rate so large that validation stops improving soon: early stopping
    assert main(["train", "fvsbn", "--dataset", str(data), "--epochs", "60", "--batch-size", "16", "--lr", "2.0",
                 "--patience", "3", "--out", str(run), "--no-progress", "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    printed = re.search(r"best epoch (\d+)", out)
    assert printed, out
    results = json.loads((run / "results.json").read_text())
    rows = list(csv.DictReader(open(run / "log.csv")))
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(1, results["epochs_run"] + 1))
    best_row = min(rows, key=lambda r: float(r["val_nll_nats"]))
    best_cfg = json.loads((run / "best" / "config.json").read_text())["extra"]["best_epoch"]
    agreed = {"log.csv": int(best_row["epoch"]), "results.json": results["best_epoch"],
              "best/config.json": best_cfg, "printed": int(printed.group(1))}
    assert len(set(agreed.values())) == 1, agreed


# ---------------------------------------------------------------------- callbacks
class _Recorder(Callback):
    """Every hook the loop calls, in order, with what it was given."""

    def __init__(self, fail_at_step: int | None = None):
        self.calls, self.fail_at_step = [], fail_at_step

    def on_fit_start(self, trainer, state, resume):
        self.calls.append(("fit_start", resume, state.step))

    def on_steps_start(self, trainer, epoch, first, last):
        self.calls.append(("steps_start", epoch, first, last))

    def on_step(self, trainer, step):
        self.calls.append(("step", step.epoch, step.batch, step.step, step.examples, step.epoch_examples))
        if step.step == self.fail_at_step:
            raise RuntimeError("a callback failed")

    def on_steps_end(self, trainer):
        self.calls.append(("steps_end",))

    def on_epoch_end(self, trainer, row, state):
        self.calls.append(("epoch_end", dict(row), trainer.stopping))

    def on_fit_end(self, trainer, state):
        self.calls.append(("fit_end", state.step))


def test_a_user_callback_sees_every_step_and_every_epoch_row(tmp_path):
    """Trainer(callbacks=[...]) runs after the default ones (log.csv, TensorBoard, the bars): every
    hook in order, each epoch's row exactly as log.csv and the history hold it; on a resume inside an
    epoch the steps start where the checkpoint stopped; a model fitted by counting gets its one row."""
    data = _data()  # 40 examples, batch 16: 3 steps an epoch (16, 16, 8)
    rec = _Recorder()
    config = TrainConfig(epochs=2, batch_size=16, patience=None, tensorboard=False, save_every=1, keep_last=10)
    trainer = Trainer(_model(), config, out_dir=tmp_path / "run", progress=False, callbacks=[rec])
    assert [type(c).__name__ for c in trainer.callbacks] == ["CSVLog", "TensorBoardLog", "ProgressBars", "_Recorder"]
    res = trainer.fit(data, data[:16])

    def epoch(e):  # batches of 16, 16 and 8 examples; the running count of the epoch's examples
        return [("steps_start", e, 0, 3), *[("step", e, b, 3 * (e - 1) + b + 1, n, c)
                                            for b, (n, c) in enumerate([(16, 16), (16, 32), (8, 40)])], ("steps_end",)]
    rows = [c[1] for c in rec.calls if c[0] == "epoch_end"]
    assert [c for c in rec.calls if c[0] != "epoch_end"] == [("fit_start", False, 0), *epoch(1), *epoch(2), ("fit_end", 6)]
    assert [c[0] for c in rec.calls].index("epoch_end") == 6  # after the epoch's steps
    assert rows == res.history and [r["epoch"] for r in rows] == [1, 2]
    assert [c[2] for c in rec.calls if c[0] == "epoch_end"] == [None, "all steps taken"]
    with open(tmp_path / "run" / "log.csv") as f:
        assert [float(r["val_nll_nats"]) for r in csv.DictReader(f)] == [r["val_nll_nats"] for r in rows]

    # a callback that raises: the run stops, every callback's on_fit_end still runs (log.csv closed)
    failing = _Recorder(fail_at_step=2)
    with pytest.raises(RuntimeError, match="a callback failed"):
        Trainer(_model(), config, out_dir=tmp_path / "fail", progress=False, callbacks=[failing]).fit(data, data[:16])
    assert failing.calls[-2:] == [("steps_end",), ("fit_end", 2)]

    # resumed after batch 2 of epoch 2 (the kept checkpoint of step 5 put back as last/)
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step-000005", tmp_path / "mid" / "last")
    rec = _Recorder()
    resumed = Trainer(_model(), config, out_dir=tmp_path / "mid", progress=False, callbacks=[rec]).fit(data, data[:16],
                                                                                                      resume=True)
    assert rec.calls[:4] == [("fit_start", True, 5), ("steps_start", 2, 2, 3), ("step", 2, 2, 6, 8, 40), ("steps_end",)]
    def figures(row):
        return {k: v for k, v in row.items() if k != "seconds"}
    assert figures(rec.calls[-2][1]) == figures(resumed.history[-1]) == figures(res.history[-1])  # bit-identical

    # a model fitted by counting: one row, no steps
    rec = _Recorder()
    hist = chainrule.create_model("histogram", (6,), 2)
    Trainer(hist, config, progress=False, callbacks=[rec]).fit(data, data[:16])
    assert [c[0] for c in rec.calls] == ["fit_start", "epoch_end", "fit_end"] and rec.calls[1][1]["epoch"] == 1

