"""Trainer, evaluation, checkpoints and the command line, end to end on tiny data."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import chainrule
from chainrule.io.checkpoint import read_config
from chainrule.cli import main
from chainrule.errors import CheckpointError, InputError
from chainrule.inference.likelihood import evaluate
from chainrule.training import TrainConfig, Trainer
from chainrule.training.budget import TimeBudget


def _toy_data(n=600, d=8, seed=0):
    """Correlated binary data: x_j copies x_{j-1} with probability 0.9 — learnable structure."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, d, dtype=torch.long)
    x[:, 0] = torch.randint(2, (n,), generator=g)
    for j in range(1, d):
        flip = torch.rand(n, generator=g) < 0.1
        x[:, j] = torch.where(flip, 1 - x[:, j - 1], x[:, j - 1])
    return x


def test_training_learns_and_beats_uniform(tmp_path):
    x = _toy_data(2000)
    model = chainrule.create_model("made", (8,), 2, hidden_sizes=[32])
    before = evaluate(model, x[1800:]).nll_nats
    res = Trainer(model, TrainConfig(epochs=30, batch_size=50, lr=1e-2, patience=5), out_dir=tmp_path,
                  progress=False).fit(x[:1500], x[1500:1800])
    after = evaluate(model, x[1800:])
    # the true entropy: ln 2 + 7 * H(0.1) = 0.693 + 7 * 0.325 = 2.97 nats
    assert after.nll_nats < 3.3 < before
    assert after.bits_per_dim == pytest.approx(after.nll_nats / (8 * math.log(2)))
    assert 1 <= res.best_epoch <= res.epochs_run  # epochs counted from 1
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == res.epochs_run and "val_nll_nats" in rows[0]
    # the best checkpoint holds the model the trainer ended with
    best = chainrule.load(tmp_path / "best")
    assert torch.allclose(best.log_prob(x[1800:]), model.log_prob(x[1800:]))
    assert read_config(tmp_path / "best")["extra"]["best_val_nll_nats"] == pytest.approx(res.best_val_nll_nats)


def test_early_stopping_stops():
    x = _toy_data(200)
    model = chainrule.create_model("fvsbn", (8,), 2)
    # lr so large that validation cannot keep improving: must stop after `patience` bad epochs
    res = Trainer(model, TrainConfig(epochs=200, batch_size=200, lr=5.0, patience=3), progress=False).fit(x[:100], x[100:])
    assert res.stopped_early and res.epochs_run < 200
    assert res.epochs_run - res.best_epoch == 3  # best_epoch counts from 1, as epochs_run


def test_ensemble_training_visits_every_member_through_the_module_call():
    """The trainer draws one member per step and computes the loss through model(x, member=k)
    (the call a DistributedDataParallel wrapper hooks into)."""
    x = _toy_data(300)
    model = chainrule.create_model("made", (8,), 2, hidden_sizes=[16], num_masks=3, order_agnostic=True)
    seen = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get("member")), with_kwargs=True)
    Trainer(model, TrainConfig(epochs=2, batch_size=20, patience=None, eval_batch_size=1000), progress=False).fit(x[:200])
    train_calls = seen[:10]  # 10 steps in the first epoch, before validation
    assert set(train_calls) <= {0, 1, 2} and len(set(seen)) == 3


class _Interrupt(Exception):
    pass


def _noisy_flip(after: int | None = None):
    """A train_transform that draws from the trainer's generator and from torch's global one (as
    dropout does), so resuming must restore both, and raises after ``after`` calls (a crash)."""
    calls = [0]

    def transform(batch: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        calls[0] += 1
        if after is not None and calls[0] > after:
            raise _Interrupt
        flip = torch.rand(batch.shape, generator=g) < 0.1 * torch.rand(())
        return torch.where(flip, 1 - batch, batch)
    return transform


@pytest.mark.parametrize("schedule", ["plateau", "cosine"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, schedule):
    """Crash in epoch 3 of 5, resume from last/: the same weights, history and best model as a
    run that never stopped (optimizer moments, RNGs, ensemble component choice, schedule)."""
    data = torch.randint(2, (96, 6))
    config = TrainConfig(epochs=5, batch_size=16, lr=3e-2, schedule=schedule, patience=2, seed=3)

    def fresh(seed: int):
        torch.manual_seed(seed)
        return chainrule.create_model("made", (6,), 2, hidden_sizes=[12], num_masks=3, order_agnostic=True)

    ref = fresh(0)
    ref_result = Trainer(ref, config, out_dir=tmp_path / "a", progress=False).fit(data, data[:32], _noisy_flip())
    model = fresh(0)
    with pytest.raises(_Interrupt):
        Trainer(model, config, out_dir=tmp_path / "b", progress=False).fit(data, data[:32], _noisy_flip(after=2 * 6 + 3))
    assert json.loads((tmp_path / "b" / "last" / "trainer_state.json").read_text())["epochs_done"] == 2
    resumed = fresh(1)  # different initial weights: all must come from the checkpoint
    result = Trainer(resumed, config, out_dir=tmp_path / "b", progress=False).fit(data, data[:32], _noisy_flip(), resume=True)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in ref_result.history]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
    assert result.best_epoch == ref_result.best_epoch and result.best_val_nll_nats == ref_result.best_val_nll_nats
    rows = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(ref_result.history) + 1))


def test_resume_errors(tmp_path):
    data = torch.randint(2, (32, 4))
    model = chainrule.create_model("fvsbn", (4,), 2)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(model, TrainConfig(epochs=1), out_dir=tmp_path, progress=False).fit(data, resume=True)
    with pytest.raises(InputError, match="out_dir"):
        Trainer(model, TrainConfig(epochs=1), progress=False).fit(data, resume=True)
    Trainer(model, TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path, progress=False).fit(data)
    other = chainrule.create_model("made", (4,), 2, hidden_sizes=[8])
    with pytest.raises(CheckpointError, match="different model"):
        Trainer(other, TrainConfig(epochs=2), out_dir=tmp_path, progress=False).fit(data, resume=True)
    # a finished run resumed with more epochs trains on
    more = Trainer(model, TrainConfig(epochs=3, batch_size=8), out_dir=tmp_path, progress=False).fit(data, resume=True)
    assert more.epochs_run == 3 and len(more.history) == 3
    nosave = tmp_path / "nosave"
    Trainer(model, TrainConfig(epochs=1, save_last=False), out_dir=nosave, progress=False).fit(data)
    assert not (nosave / "last").exists()


def test_trainer_errors():
    model = chainrule.create_model("fvsbn", (8,), 2)
    with pytest.raises(InputError, match="empty"):
        Trainer(model, progress=False).fit(torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(InputError, match="0..1"):
        Trainer(model, progress=False).fit(torch.full((10, 8), 2))
    with pytest.raises(InputError, match="optimizer"):
        TrainConfig(optimizer="sgdx")
    with pytest.raises(InputError, match="empty"):
        evaluate(model, torch.zeros(0, 8, dtype=torch.long))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        chainrule.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a chainrule checkpoint"):
        chainrule.load(tmp_path / "empty")
    model = chainrule.create_model("fvsbn", (4,), 2)
    model.save(tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        chainrule.load(tmp_path / "ck")
    model.save(tmp_path / "ck2")
    (tmp_path / "ck2" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        chainrule.load(tmp_path / "ck2")
    model.save(tmp_path / "ck3")
    cfg = json.loads((tmp_path / "ck3" / "config.json").read_text())
    cfg["shape"] = [5]
    (tmp_path / "ck3" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        chainrule.load(tmp_path / "ck3")


def test_cli_train_eval_sample_on_user_file(tmp_path, capsys):
    data = _toy_data(400).numpy().astype(np.int64)
    np.save(tmp_path / "toy.npy", data)
    run = tmp_path / "run"
    assert main(["train", "fvsbn", "--dataset", str(tmp_path / "toy.npy"), "--epochs", "3", "--out", str(run),
                 "--no-progress", "--order", "reversed"]) == 0
    out = capsys.readouterr().out
    assert "test: NLL" in out and "nats/example" in out and "bits/dim" in out and "perplexity" in out
    for f in ("best/config.json", "best/model.safetensors", "log.csv", "curve.png", "results.json", "samples.npy"):
        assert (run / f).is_file(), f
    assert json.loads((run / "results.json").read_text())["test"]["nll_nats"] > 0
    assert main(["eval", str(run), "--split", "val", "--json", "--no-progress"]) == 0
    assert '"split": "val"' in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (5, 8) and set(np.unique(s)) <= {0, 1}
    # train on: --resume continues from last/ with the log appended
    assert main(["train", "fvsbn", "--dataset", str(tmp_path / "toy.npy"), "--epochs", "5", "--out", str(run),
                 "--no-progress", "--order", "reversed", "--resume", "--patience", "0"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert [int(r["epoch"]) for r in csv.DictReader(open(run / "log.csv"))] == [1, 2, 3, 4, 5]
    # a different model in the same run directory: a one-line error, nonzero exit
    assert main(["train", "made", "--dataset", str(tmp_path / "toy.npy"), "--out", str(run), "--no-progress", "--resume"]) != 0
    assert "different model" in capsys.readouterr().err


def test_cli_quickstart_short(tmp_path, capsys):
    run = tmp_path / "qs"
    assert main(["quickstart", "--out", str(run), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Test NLL" in out and "bits/dim" in out
    from PIL import Image

    img = Image.open(run / "samples.png")
    assert img.size[0] > 64 and (run / "curve.png").stat().st_size > 1000
    assert chainrule.load(run / "best").name == "gated_pixelcnn"
    assert main(["quickstart", "--out", str(tmp_path / "book"), "--model", "causalconv", "--epochs", "1", "--no-progress"]) == 0
    assert chainrule.load(tmp_path / "book" / "best").name == "causalconv"


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "nosuchmodel", "--dataset", "digits"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a chainrule checkpoint" in capsys.readouterr().err
    assert main(["train", "made", "--dataset", "digits", "-p", "hidden=3"]) == 2
    assert "no hyperparameter" in capsys.readouterr().err
    assert main(["train", "made", "--dataset", "nosuchdata"]) == 2
    assert "digits" in capsys.readouterr().err  # lists the known datasets


def test_cli_lists(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in chainrule.list_models():
        assert name in out
    assert main(["datasets"]) == 0
    assert "binarized-mnist" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_run(tmp_path):
    """`--seed` covers the initial weights as well as the data order: two runs agree number for number."""
    data = _toy_data(200).numpy().astype(np.int64)
    np.save(tmp_path / "toy.npy", data)
    logs = []
    for name in ("a", "b"):
        assert main(["train", "made", "--dataset", str(tmp_path / "toy.npy"), "-p", "hidden_sizes=[16]", "--epochs", "2",
                     "--seed", "3", "--out", str(tmp_path / name), "--no-progress", "--threads", "1"]) == 0
        logs.append([(r["train_nll_nats"], r["val_nll_nats"]) for r in csv.DictReader(open(tmp_path / name / "log.csv"))])
    assert logs[0] == logs[1]


def test_the_run_records_where_its_data_came_from(tmp_path, monkeypatch):
    """A relative data file and $CHAINRULE_DATA are recorded resolved, so `eval` works from elsewhere."""
    data = _toy_data(100).numpy().astype(np.int64)
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "toy.npy", data)
    monkeypatch.chdir(tmp_path / "d")
    monkeypatch.setenv("CHAINRULE_DATA", str(tmp_path / "d"))
    assert main(["train", "fvsbn", "--dataset", "toy.npy", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    extra = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["extra"]
    assert extra["dataset"] == str(tmp_path / "d" / "toy.npy") and extra["data_dir"] == str(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHAINRULE_DATA")
    assert main(["eval", str(tmp_path / "run"), "--no-progress"]) == 0


def test_cli_time_budget_covers_a_huge_epoch_and_the_bars_follow_it(tmp_path, capsys):
    """--max-seconds is checked every step: an epoch of 10^9 steps ends at the budget (plus a step
    and the evaluation), the epoch's bar ends where the budget does, and validation, test and
    sampling each show a bar of their own."""
    import time

    run = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(["train", "made", "--dataset", "digits", "-p", "hidden_sizes=[16]", "--max-seconds", "2",
                 "--steps-per-epoch", "1000000000", "--threads", "1", "--num-samples", "4", "--out", str(run)]) == 0
    wall = time.perf_counter() - t0
    out, err = capsys.readouterr()
    results = json.loads((run / "results.json").read_text())
    assert wall < 2 + 10  # the budget, a step (milliseconds here) and the evaluation, with room for a busy machine
    assert results["command_seconds"] <= wall
    assert "time budget of 2 s reached" in out
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 1 and 0 < float(rows[0]["epoch"]) < 1e-3 and float(rows[0]["val_nll_nats"]) > 0
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["epochs_done"] == 0 and state["batch"] == state["step"] > 0  # resumable where it stopped
    for bar in ("validation", "test", "sampling 4"):
        assert bar in err, bar


def test_the_bars_end_where_the_time_budget_does(monkeypatch, capsys):
    """With a time budget the step bar's total is the steps the budget holds, and the epoch bar's
    total the epochs it holds, not --steps-per-epoch / --epochs (the quick start's bar said 38
    minutes for a 90-second run). A clock that holds 10 steps: no sleeping in a test."""
    monkeypatch.setattr(TimeBudget, "seconds_left", lambda self: (10 - self.steps) * self.mean_step_seconds())
    x = _toy_data(64)
    config = TrainConfig(epochs=1, batch_size=8, patience=None, max_seconds=1000.0, steps_per_epoch=10**6)
    trainer = Trainer(chainrule.create_model("fvsbn", (8,), 2), config, progress=True)
    res = trainer.fit(x)
    err = capsys.readouterr().err
    assert res.stopped_by_time and res.history[-1]["epoch"] == pytest.approx(10 / 10**6)
    assert "epoch 1 (time budget)" in err and "/10 [" in err
    config = TrainConfig(epochs=1000, batch_size=8, patience=None, max_seconds=1000.0, steps_per_epoch=2)
    res = Trainer(chainrule.create_model("fvsbn", (8,), 2), config, progress=True).fit(x)
    renders = [r for r in capsys.readouterr().err.replace("\r", "\n").splitlines() if r.startswith("train (")]
    assert res.stopped_by_time and res.epochs_run <= 5
    assert "/1000 " not in renders[-1]  # the epochs the budget holds


def _moons(n=300, seed=0):
    """Two interleaved half circles in 2-D with noise: real-valued vectors of order 1."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.stack([torch.where(upper, t.cos(), 1 - t.cos()), torch.where(upper, t.sin(), 0.5 - t.sin())], 1)
    return (x + 0.1 * torch.randn(n, 2, generator=g)).to(torch.float32)


def test_standardize_reports_the_data_nll_through_the_jacobian(tmp_path, capsys):
    """--standardize trains on z = (x - mean) / std with the training split's statistics; the run
    reports log p(x) = log p(z) - sum_d log std_d: data scaled by c give the same z, hence the same
    model, and NLLs exactly D log c apart. eval and sample apply / invert the stored statistics;
    vectors are reported per dimension, not per token; without --standardize, data of a large scale
    get a note saying when to use it."""
    x = _moons().numpy()
    scale = np.array([100.0, 0.01], dtype=np.float32)
    np.save(tmp_path / "a.npy", x + 5)
    np.save(tmp_path / "b.npy", (x + 5) * scale)
    common = ["rnade", "-p", "hidden_size=8", "-p", "num_mixture_components=2", "--epochs", "2", "--batch-size", "32",
              "--no-progress", "--threads", "1", "--num-samples", "50"]
    results = {}
    for name in ("a", "b"):
        assert main(["train", *common, "--dataset", str(tmp_path / f"{name}.npy"), "--standardize",
                     "--out", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        assert "standardizing" in out and "nats/dim" in out and "per token" not in out
        results[name] = json.loads((tmp_path / name / "results.json").read_text())["test"]["nll_nats"]
    assert results["b"] - results["a"] == pytest.approx(float(np.log(scale).sum()), abs=1e-4)
    # eval: the stored statistics applied, the NLL of x in its own units = -(log p(z) - sum log std)
    run = tmp_path / "b"
    assert main(["eval", str(run), "--json", "--no-progress"]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])["nll_nats"]
    assert got == pytest.approx(results["b"], rel=1e-6)
    from chainrule.apps.pipeline import dataset_of, run_standardization

    st = run_standardization(run / "best")
    raw = chainrule.load_dataset(str(tmp_path / "b.npy")).test
    model = chainrule.load(run / "best")
    with torch.no_grad():
        manual = -(model.log_prob(st.apply(raw)).double() - st.log_det).mean()
    assert got == pytest.approx(float(manual), rel=1e-5)
    train = chainrule.load_dataset(str(tmp_path / "b.npy")).train
    assert torch.allclose(st.mean, train.double().mean(0)) and torch.allclose(st.std, train.double().std(0))
    assert torch.allclose(dataset_of(run / "best").test, st.apply(raw))
    # samples in the data's units
    assert main(["sample", str(run), "-n", "200", "--out", str(tmp_path / "s.npy"), "--no-progress"]) == 0
    s = np.load(tmp_path / "s.npy")
    assert abs(np.log(s[:, 0].std() / s[:, 1].std()) - np.log(1e4)) < 1.5
    # without --standardize: a note on when to use it
    assert main(["train", *common, "--dataset", str(tmp_path / "b.npy"), "--out", str(tmp_path / "c")]) == 0
    assert "--standardize" in capsys.readouterr().out
    np.save(tmp_path / "unit.npy", x)
    assert main(["train", *common, "--dataset", str(tmp_path / "unit.npy"), "--out", str(tmp_path / "d")]) == 0
    assert "--standardize" not in capsys.readouterr().out  # scales of order 1 about 0: no note
