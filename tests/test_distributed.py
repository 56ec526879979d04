"""Distributed data-parallel training (gloo, 2 CPU ranks of one thread each).

One set of spawned processes runs every in-process scenario (starting ranks costs seconds); each
test then checks one property of what they recorded. The CLI is run once under
``python -m torch.distributed.run``.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from chainrule.errors import InputError
from chainrule.models import create_model
from chainrule.training import TrainConfig, Trainer

WORLD = 2
SHAPE = (1, 4, 4)
TIMEOUT = 120  # seconds: a hang fails the test instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(n: int = 45) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey values in [0, 1] (dynamically binarized while training) and a binary validation set."""
    g = torch.Generator().manual_seed(123)
    grey = torch.rand(n, *SHAPE, generator=g)
    val = (torch.rand(20, *SHAPE, generator=g) < 0.5).long()
    return grey, val


def _binarize(batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.bernoulli(batch, generator=generator).long()


def _model(num_masks: int = 1):
    torch.manual_seed(0)
    return create_model("made", SHAPE, 2, hidden_sizes=[16], num_masks=num_masks)


# 45 examples, global batch 16: epochs of 16 + 16 + 13 (the last one split 7 / 6 between the ranks)
CONFIG = dict(epochs=2, batch_size=16, lr=1e-3, patience=None, eval_batch_size=8, seed=3, grad_clip=5.0)


def _fit(model, out_dir, **kw):
    grey, val = _data()
    t = Trainer(model, TrainConfig(**{**CONFIG, **kw}), out_dir=out_dir, progress=False)
    res = t.fit(grey, val, train_transform=_binarize)
    return t, res


def _spec_runs(tmp: Path, rank: int) -> dict:
    """``train_run(TrainSpec)`` on this rank (what ``chainrule train`` runs under torchrun), with the
    run's checks counted; then the same run again, which rank 0 refuses (the directory holds a run)."""
    import chainrule.apps.pipeline as pipeline
    from chainrule.apps.pipeline import TrainSpec, train_run

    counts = {"claim_run_dir": 0, "check_data_fits_model": 0, "check_global_batch": 0, "check_hyperparameters": 0}
    for module, name in ((pipeline, "claim_run_dir"), (pipeline, "check_data_fits_model"),
                         (pipeline, "check_global_batch"), (pipeline, "check_hyperparameters")):
        def counted(*args, _f=getattr(module, name), _name=name, **kwargs):
            counts[_name] += 1
            return _f(*args, **kwargs)

        setattr(module, name, counted)
    data = tmp / f"bits{rank}.npy"  # the same data on every rank
    np.save(data, (np.random.default_rng(0).random((60, *SHAPE)) < 0.5).astype(np.uint8))
    spec = TrainSpec("made", str(data), tmp / "spec_run", {"hidden_sizes": [16]},
                     TrainConfig(epochs=1, batch_size=16, patience=None, seed=3), progress=False, num_samples=2,
                     report=lambda line: None)
    out = {"spec_summary": train_run(spec), "spec_counts": dict(counts)}
    try:
        train_run(spec)
    except InputError as exc:
        out["spec_refused"] = str(exc)
    return out


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from chainrule.training import distributed

    out: dict = {}
    try:
        assert distributed.init_from_env("cpu", threads=1, timeout_seconds=60) == "cpu"
        out["world"], out["rank"], out["main"] = distributed.world_size(), distributed.rank(), distributed.is_main()
        # 1. the same run as one process: a separate run directory per rank, to see who writes
        t, res = _fit(_model(), Path(tmp) / f"run{rank}")
        out["params"] = {k: v.clone() for k, v in t.model.state_dict().items()}
        out["val"] = res.best_val_nll_nats
        out["history"] = res.history
        # an ensemble: every rank draws the same member each step
        t, _ = _fit(_model(num_masks=3), None, epochs=1)
        out["ens_params"] = {k: v.clone() for k, v in t.model.state_dict().items()}
        # 2. different data per rank: DDP averages the gradients, so the weights stay identical
        t = Trainer(_model(), TrainConfig(batch_size=8, lr=1e-2), progress=False)
        t._ddp = distributed.wrap_ddp(t.model, 8)
        x = (torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(100 + rank)) < 0.5).long()
        before = [p.detach().clone() for p in t.model.parameters()]
        t.train_step(x, None, 1e-2)
        out["sync_params"] = [p.detach().clone() for p in t.model.parameters()]
        out["sync_moved"] = any(not torch.equal(a, b) for a, b in zip(before, out["sync_params"]))
        # 3. one step's averaged gradient is the gradient of the global batch's mean loss, for an even
        # (8 / 8) and an uneven (7 / 6, a last short batch) split
        for n in (16, 13):
            xg = (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(7)) < 0.5).long()
            ref = Trainer(_model(), TrainConfig(batch_size=16), progress=False)  # no wrapper: one process
            ref.train_step(xg, None, 1e-3)
            t = Trainer(_model(), TrainConfig(batch_size=16), progress=False)
            t._ddp = distributed.wrap_ddp(t.model, 16)
            t.train_step(xg[distributed.shard(n)], None, 1e-3, global_size=n)
            out[f"grads{n}"] = [(p.grad.clone(), q.grad.clone()) for p, q in zip(t.model.parameters(), ref.model.parameters())]
        # 4. a global batch the ranks cannot split evenly
        try:
            Trainer(_model(), TrainConfig(batch_size=15), progress=False)
        except InputError as exc:
            out["odd_error"] = str(exc)
        # 5. the run pipeline on every rank: train_run(spec), its checks counted on each rank
        out.update(_spec_runs(Path(tmp), rank))
        distributed.barrier()
    except BaseException:
        out["error"] = traceback.format_exc()
    finally:
        torch.save(out, Path(tmp) / f"rank{rank}.pt")
        distributed.destroy()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks recorded (spawned once for the module)."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} ranks did not finish within {TIMEOUT} s (a hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    recs = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in recs:
        assert "error" not in r, r.get("error")
    return tmp, recs


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same runs in one process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("single")
        t, res = _fit(_model(), out / "run")
        params = {k: v.clone() for k, v in t.model.state_dict().items()}
        t, _ = _fit(_model(num_masks=3), None, epochs=1)
        ens = {k: v.clone() for k, v in t.model.state_dict().items()}
        return out / "run", res, params, ens
    finally:
        torch.set_num_threads(threads)


def test_ranks_joined_the_group(ranks):
    _, recs = ranks
    assert [(r["world"], r["rank"], r["main"]) for r in recs] == [(2, 0, True), (2, 1, False)]


def test_two_ranks_take_the_single_process_steps(ranks, single):
    _, recs = ranks
    _, res, params, _ = single
    # 6 Adam steps at lr 1e-3: Adam divides by sqrt(v) + 1e-8, which magnifies the float-rounding
    # differences of near-zero gradient components (measured: 1.5e-6 at most; a wrongly weighted
    # slice would be off by ~lr / 10 = 1e-4)
    for r in recs:
        assert r["params"].keys() == params.keys()
        for k, v in params.items():
            torch.testing.assert_close(r["params"][k], v, atol=1e-5, rtol=0, msg=f"parameter {k}")
        assert r["val"] == pytest.approx(res.best_val_nll_nats, abs=1e-6)
        # the logged training NLL is the global one, on every rank
        assert [h["train_nll_nats"] for h in r["history"]] == pytest.approx(
            [h["train_nll_nats"] for h in res.history], abs=1e-5)
    # and the parameters actually moved (the comparison means something)
    init = _model().state_dict()
    assert any(not torch.allclose(params[k], init[k]) for k in params)


@pytest.mark.parametrize("n", [16, 13], ids=["even-split", "uneven-split"])
def test_averaged_gradient_is_the_global_batch_gradient(ranks, n):
    _, recs = ranks
    for r in recs:
        for ddp_grad, one_process_grad in r[f"grads{n}"]:
            scale = one_process_grad.abs().max()
            assert scale > 0
            assert (ddp_grad - one_process_grad).abs().max() <= 1e-6 * scale


def test_ensemble_ranks_draw_the_same_member(ranks, single):
    _, recs = ranks
    ens = single[3]
    for r in recs:
        for k, v in ens.items():
            torch.testing.assert_close(r["ens_params"][k], v, atol=1e-6, rtol=0, msg=f"parameter {k}")


def test_gradients_are_synchronized(ranks):
    _, (r0, r1) = ranks
    assert r0["sync_moved"] and r1["sync_moved"]
    for a, b in zip(r0["sync_params"], r1["sync_params"]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_only_rank_0_writes(ranks, single):
    tmp, _ = ranks
    run0, run1 = tmp / "run0", tmp / "run1"
    assert (run0 / "best").is_dir() and (run0 / "last").is_dir() and (run0 / "log.csv").is_file()
    assert not run1.exists() or not any(run1.iterdir())
    with open(run0 / "log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(single[0] / "log.csv") as f:
        ref = list(csv.DictReader(f))
    assert len(rows) == len(ref) == 2
    for a, b in zip(rows, ref):
        assert float(a["val_nll_nats"]) == pytest.approx(float(b["val_nll_nats"]), abs=1e-6)
    state = json.loads((run0 / "last" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["epochs_done"] == 2


def test_batch_not_divisible_by_world_size_is_refused(ranks):
    _, recs = ranks
    for r in recs:
        msg = r.get("odd_error", "")
        assert "batch_size 15" in msg and "2 ranks" in msg and "multiple of 2" in msg


def test_single_process_unaffected_by_world_size_check():
    Trainer(_model(), TrainConfig(batch_size=15), progress=False)  # no process group: any batch size


def test_cli_under_torchrun(tmp_path):
    data = tmp_path / "bits.npy"
    np.save(data, (np.random.default_rng(0).random((60, *SHAPE)) < 0.5).astype(np.uint8))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "chainrule", "train", "made", "--dataset", str(data),
           "-p", "hidden_sizes=[16]", "--epochs", "2", "--batch-size", "16", "--out", str(out), "--no-progress",
           "--device", "cpu", "--num-samples", "4"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("DDP: 2 ranks x 8 = global batch 16") == 1, p.stdout
    assert p.stdout.count("test: NLL") == 1, p.stdout  # rank 0 alone evaluates and reports
    assert list(tmp_path.rglob("log.csv")) == [out / "log.csv"]
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (out / "best").is_dir() and (out / "last").is_dir() and (out / "results.json").is_file()
    # an odd global batch: a clear error before anything runs
    cmd[cmd.index("--master-port") + 1] = str(_free_port())
    cmd[cmd.index("--batch-size") + 1] = "15"
    cmd[cmd.index("--out") + 1] = str(tmp_path / "odd")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert p.returncode != 0
    assert "--batch-size 15 is the global batch, split over 2 ranks" in p.stderr
    assert not (tmp_path / "odd").exists()


def test_every_rank_runs_train_run_once_checked(ranks):
    """Under torchrun every rank runs train_run (no separate path for ranks > 0): each makes the checks
    that need no directory once; rank 0 alone claims the run directory and writes; rank 1 trains and
    returns {}; a directory rank 0 refuses stops rank 1 too (instead of leaving it waiting)."""
    tmp, recs = ranks
    for r in recs:
        counts = r["spec_counts"]
        assert counts["check_data_fits_model"] == counts["check_global_batch"] == counts["check_hyperparameters"] == 1
    assert recs[0]["spec_counts"]["claim_run_dir"] == 1 and recs[1]["spec_counts"]["claim_run_dir"] == 0
    assert recs[0]["spec_summary"]["test"]["num_examples"] > 0 and recs[1]["spec_summary"] == {}
    assert (tmp / "spec_run" / "best").is_dir() and (tmp / "spec_run" / "results.json").is_file()
    assert "already holds a run" in recs[0]["spec_refused"]
    assert "rank 0 refused the run directory" in recs[1]["spec_refused"]
