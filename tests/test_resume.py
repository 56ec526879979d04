"""Exact resume from anywhere: mid-epoch checkpoints (save_every), SIGINT/SIGTERM, SIGKILL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import chainrule
from chainrule.cli import main
from chainrule.training import TrainConfig, Trainer
from chainrule.training.batches import batch_rng, epoch_order
from chainrule.training.budget import TimeBudget
from chainrule.training.trainer import TrainingInterrupted, derived_seed


class _Kill(Exception):
    pass


def _flip(batch: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """A random transform (like dynamic binarization) that uses the batch's generator."""
    flip = torch.rand(batch.shape, generator=g) < 0.1
    return torch.where(flip, 1 - batch, batch)


def _model(seed: int):
    torch.manual_seed(seed)
    return chainrule.create_model("made", (6,), 2, hidden_sizes=[12], num_masks=2)


def _config(steps_per_epoch):
    return TrainConfig(epochs=4, batch_size=8, lr=3e-2, patience=None, seed=5, save_every=3,
                       steps_per_epoch=steps_per_epoch, schedule="cosine")


def _interrupt_at(monkeypatch, call: int, action):
    """Make the ``call``-th training step run ``action`` (before the step)."""
    original = Trainer.train_step
    n = [0]

    def step(self, *args, **kwargs):
        n[0] += 1
        if n[0] == call:
            action()
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Trainer, "train_step", step)


def _strip(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.parametrize("steps_per_epoch", [None, 5])
def test_mid_epoch_resume_is_bit_identical(tmp_path, monkeypatch, steps_per_epoch):
    """Killed at step 7 (after the step-6 checkpoint, mid-epoch 1), resumed: the same weights,
    history and best model as an uninterrupted run."""
    data = torch.randint(2, (40, 6))  # 5 batches of 8 per epoch
    config = _config(steps_per_epoch)
    ref = _model(0)
    ref_result = Trainer(ref, config, out_dir=tmp_path / "a", progress=False).fit(data, data[:16], _flip)

    with monkeypatch.context() as m:
        def kill():
            raise _Kill
        _interrupt_at(m, 7, kill)
        with pytest.raises(_Kill):
            Trainer(_model(0), config, out_dir=tmp_path / "b", progress=False).fit(data, data[:16], _flip)
    state = json.loads((tmp_path / "b" / "last" / "trainer_state.json").read_text())
    assert (state["step"], state["epochs_done"], state["batch"]) == (6, 1, 1)

    resumed = _model(1)  # different initial weights: everything must come from last/
    result = Trainer(resumed, config, out_dir=tmp_path / "b", progress=False).fit(data, data[:16], _flip, resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert _strip(result.history) == _strip(ref_result.history)
    assert result.best_epoch == ref_result.best_epoch and result.examples_seen == ref_result.examples_seen
    a, b = load_file(str(tmp_path / "a" / "last" / "model.safetensors")), load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_signal_saves_and_resume_is_exact(tmp_path, monkeypatch):
    """SIGINT during step 4: the step finishes, last/ is written mid-epoch, fit raises a
    TrainingInterrupted (a KeyboardInterrupt) with the message; the handlers are restored and a
    resume equals the uninterrupted run."""
    data = torch.randint(2, (40, 6))
    config = TrainConfig(epochs=3, batch_size=8, lr=3e-2, patience=None, seed=2)  # no save_every
    ref = _model(0)
    Trainer(ref, config, out_dir=tmp_path / "a", progress=False).fit(data, None, _flip)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        _interrupt_at(m, 4, lambda: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(TrainingInterrupted) as info:
            Trainer(_model(0), config, out_dir=tmp_path / "b", progress=False).fit(data, None, _flip)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert isinstance(info.value, KeyboardInterrupt) and info.value.exit_code == 130
    assert "SIGINT" in str(info.value) and "--resume" in str(info.value)
    state = json.loads((tmp_path / "b" / "last" / "trainer_state.json").read_text())
    assert (state["step"], state["epochs_done"], state["batch"]) == (4, 0, 4)
    resumed = _model(1)
    Trainer(resumed, config, out_dir=tmp_path / "b", progress=False).fit(data, None, _flip, resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_with_changed_options(tmp_path, monkeypatch, caplog):
    """A resume with other training options: what cannot continue the run is refused before
    anything is touched (another optimizer; inside an epoch, another batch size or seed), the
    rest goes on and is said in one warning (a lower learning rate, more epochs)."""
    import dataclasses
    import logging

    data = torch.randint(2, (40, 6))  # 5 batches of 8 per epoch
    config = TrainConfig(epochs=2, batch_size=8, lr=3e-2, patience=None, seed=5, save_every=3)
    with monkeypatch.context() as m:
        def kill():
            raise _Kill
        _interrupt_at(m, 4, kill)  # after the step-3 checkpoint: inside epoch 1, batch 3
        with pytest.raises(_Kill):
            Trainer(_model(0), config, out_dir=tmp_path, progress=False).fit(data, data[:16])
    last = tmp_path / "last"
    saved = {p.name: p.read_bytes() for p in last.iterdir()}
    for change, says in (({"optimizer": "adamw"}, "--optimizer adam"), ({"batch_size": 4}, "--batch-size 8"),
                         ({"seed": 6}, "--seed 5")):
        bad = dataclasses.replace(config, **change)
        with pytest.raises(chainrule.InputError, match="resume with " + says):
            Trainer(_model(1), bad, out_dir=tmp_path, progress=False).fit(data, data[:16], resume=True)
        assert {p.name: p.read_bytes() for p in last.iterdir()} == saved  # nothing was written
    # a lower rate and two more epochs: allowed, said, and the run ends at 4 epochs with the new rate
    more = dataclasses.replace(config, epochs=4, lr=1e-2, max_seconds=100.0)
    with caplog.at_level(logging.WARNING, logger="chainrule.training.trainer"):
        result = Trainer(_model(1), more, out_dir=tmp_path, progress=False).fit(data, data[:16], resume=True)
    said = [r.getMessage() for r in caplog.records if "changed training options" in r.getMessage()]
    assert len(said) == 1 and "epochs 2 -> 4" in said[0] and "lr 0.03 -> 0.01" in said[0]
    assert "max_seconds" not in said[0]  # a budget counted from the resume is not a change of the run
    # (epoch 1 was resumed inside itself: its row, written at its end, has the new rate too)
    assert result.epochs_run == 4 and [row["lr"] for row in result.history] == [1e-2] * 4
    # at an epoch's end the batch size may change
    caplog.clear()
    wider = dataclasses.replace(more, epochs=5, batch_size=16)
    Trainer(_model(1), wider, out_dir=tmp_path, progress=False).fit(data, data[:16], resume=True)
    assert any("batch_size 8 -> 16" in r.getMessage() for r in caplog.records)


def test_data_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(3, 50, 2), epoch_order(3, 50, 2))
    assert not torch.equal(epoch_order(3, 50, 2), epoch_order(3, 50, 3))
    assert epoch_order(3, 50, 2, steps_per_epoch=10) is None  # every batch draws its own examples
    assert torch.equal(torch.rand(4, generator=batch_rng(3, 1, 2)), torch.rand(4, generator=batch_rng(3, 1, 2)))
    assert len({derived_seed(3, 1, e) for e in range(100)} | {derived_seed(4, 1, e) for e in range(100)}) == 200
    with pytest.raises(chainrule.errors.InputError, match="save_every"):
        TrainConfig(save_every=0)


# ---------------------------------------------------------------------- the CLI, in a subprocess
def _cli(data, run, *more):
    return ["train", "fvsbn", "--dataset", str(data), "--epochs", "4", "--batch-size", "8", "--save-every", "2",
            "--out", str(run), "--no-progress", "--threads", "1", "--num-samples", "2", "--patience", "0", *more]


def _state(run):
    try:
        return json.loads((run / "last" / "trainer_state.json").read_text())
    except (OSError, ValueError):  # not written yet, or between the renames
        return None


def _spawn(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "chainrule", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, run, ok, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _state(run)
        if st is not None and ok(st):
            return st
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the checkpoint: {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("no checkpoint in time")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.npy"
    np.save(path, (np.random.default_rng(0).random((1000, 12)) < 0.3).astype(np.uint8))
    return path


def _weights(run):
    return {f: load_file(str(run / f / "model.safetensors")) for f in ("last", "best")}


def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny):
    ref = tmp_path / "ref"
    assert main(_cli(tiny, ref)) == 0
    run = tmp_path / "run"
    proc = _spawn(_cli(tiny, run), tmp_path)
    st = _wait_for(proc, run, lambda s: s["step"] >= 30)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    st = _state(run) or st
    assert st["epochs_done"] < 4  # killed before the end
    assert main(_cli(tiny, run, "--resume")) == 0
    a, b = _weights(ref), _weights(run)
    for f in a:
        assert a[f].keys() == b[f].keys()
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)


def test_sigterm_saves_last_and_exits_143(tmp_path, tiny):
    run = tmp_path / "run"
    proc = _spawn(_cli(tiny, run, "--epochs", "50"), tmp_path)
    _wait_for(proc, run, lambda s: s["step"] >= 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "saved" in err and "--resume" in err, err
    st = _state(run)
    assert st is not None and st["step"] >= 4 and st["epochs_done"] < 50
    assert "stopped after step " + str(st["step"]) in err


def test_time_budget_stops_mid_epoch_and_resume_is_exact(tmp_path, monkeypatch):
    """The time budget is checked after every step: a run whose budget runs out inside an epoch
    writes last/ at that position, validates the weights reached (a row with the fraction of epochs
    done) and a resume ends bit-identical to the uninterrupted run, history included."""
    data = torch.randint(2, (40, 6))  # 5 batches of 8 per epoch
    config = dataclasses.replace(_config(None), save_every=None)
    ref = _model(0)
    ref_result = Trainer(ref, config, out_dir=tmp_path / "a", progress=False).fit(data, data[:16], _flip)

    # the clock runs out after the 7th step of the call (epoch 2, batch 2): no sleeping in a test
    monkeypatch.setattr(TimeBudget, "seconds_left", lambda self: 1e9 if self.steps < 7 else -1.0)
    budget = dataclasses.replace(config, max_seconds=1000.0)
    stopped = Trainer(_model(0), budget, out_dir=tmp_path / "b", progress=False).fit(data, data[:16], _flip)
    monkeypatch.undo()
    assert stopped.stopped_by_time and stopped.history[-1]["epoch"] == pytest.approx(1.4)
    assert "val_nll_nats" in stopped.history[-1]
    state = json.loads((tmp_path / "b" / "last" / "trainer_state.json").read_text())
    assert (state["step"], state["epochs_done"], state["batch"]) == (7, 1, 2)
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[-1].startswith("1.4,")  # header, epoch 1, the 0.4 of epoch 2
    assert (tmp_path / "b" / "best" / "model.safetensors").is_file()

    resumed = _model(1)
    result = Trainer(resumed, config, out_dir=tmp_path / "b", progress=False).fit(data, data[:16], _flip, resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert _strip(result.history) == _strip(ref_result.history)  # the budget's row is not the run's
    assert result.best_epoch == ref_result.best_epoch


def test_time_budget_without_validation_keeps_the_weights_reached(tmp_path, monkeypatch):
    """No validation data and no epoch finished: best/ holds the weights the budget stopped at."""
    data = torch.randint(2, (40, 6))
    monkeypatch.setattr(TimeBudget, "seconds_left", lambda self: 1e9 if self.steps < 2 else -1.0)
    model = _model(0)
    config = TrainConfig(epochs=3, batch_size=8, patience=None, max_seconds=1000.0, steps_per_epoch=10**9)
    result = Trainer(model, config, out_dir=tmp_path, progress=False).fit(data, None)
    assert result.stopped_by_time and result.history[-1]["epoch"] == pytest.approx(2e-9)
    best = chainrule.load(tmp_path / "best")
    assert torch.equal(best.log_prob(data), model.log_prob(data))
