"""Signals and exact resume under 2-rank DDP (gloo), through ``python -m torch.distributed.run``.

One chain of launches keeps the first test short (each launch starts three Python processes,
importing torch): an uninterrupted reference run, alongside a run stopped by SIGTERM to the
torchrun launcher (it must save and say so); its resume, killed with SIGKILL after a mid-epoch
checkpoint; and a second resume that finishes. The finished run must hold the reference's weights, bit for bit.

torchrun starts every rank in a session (process group) of its own, so killing the launcher's
group does not reach the ranks: "SIGKILL to everything" is the launcher's group and each rank's.
A SIGKILL to the launcher alone leaves the ranks without it; they stop by themselves (second test).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

TIMEOUT = 120  # seconds per launch: a hang fails the test instead of blocking CI
EPOCHS, STEPS_PER_EPOCH = 2, 60  # 480 training examples, global batch 8 (2 ranks x 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(data: Path, run: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "chainrule", "train", "fvsbn", "--dataset", str(data),
            "--epochs", str(EPOCHS), "--batch-size", "8", "--save-every", "5", "--patience", "0", "--out", str(run),
            "--device", "cpu", "--threads", "1", "--num-samples", "2", *more]


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    # a session of its own: SIGKILL goes to the launcher and both ranks at once (os.killpg)
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"a 2-rank run did not end within {TIMEOUT} s (a hang):\n{out}\n{err}")


def _state(run: Path) -> dict | None:
    try:
        return json.loads((run / "last" / "trainer_state.json").read_text())
    except (OSError, ValueError):  # not written yet, or between the renames
        return None


def _wait_for(proc: subprocess.Popen, run: Path, ok) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        st = _state(run)
        if st is not None and ok(st):
            return st
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the awaited checkpoint:\n{out}\n{err}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    pytest.fail("no checkpoint in time")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc: the ranks of a torchrun launcher)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state: the parent
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for ``pids`` (not our children: no wait()) to end; the ones still alive."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in pids if _alive(p)]


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {d: load_file(str(run / d / "model.safetensors")) for d in ("last", "best")}


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_ddp_sigterm_and_sigkill_then_resume_is_bit_identical(tmp_path):
    data = tmp_path / "bits.npy"
    np.save(data, (np.random.default_rng(0).random((600, 12)) < 0.3).astype(np.uint8))

    # the reference, uninterrupted (with progress bars: rank 0 alone shows them), runs meanwhile
    ref = tmp_path / "ref"
    reference = _start(_cmd(data, ref), tmp_path)

    # SIGTERM to the launcher: torchrun passes it to both ranks, which agree on a step, save
    # last/, print what they saved and exit; the launcher exits non-zero
    run = tmp_path / "run"
    proc = _start(_cmd(data, run, "--no-progress"), tmp_path)
    _wait_for(proc, run, lambda s: s["step"] >= 12)
    proc.send_signal(signal.SIGTERM)
    out, err = _finish(proc)
    assert proc.returncode != 0, out + err
    st = _state(run)
    assert st is not None and 12 <= st["step"] < EPOCHS * STEPS_PER_EPOCH, st
    assert f"chainrule: SIGTERM: stopped after step {st['step']}; saved {run / 'last'}" in err, err
    assert "--resume" in err and err.count("chainrule: SIGTERM") == 1, err  # rank 0 alone says it
    stopped_at = st["step"]

    # the resume, killed hard at its first mid-epoch checkpoint (the rest of the run, ~100 steps,
    # is the time the kill has to land): the ranks' process groups and the launcher's
    proc = _start(_cmd(data, run, "--no-progress", "--resume"), tmp_path)
    st = _wait_for(proc, run, lambda s: s["step"] > stopped_at and s["batch"] > 0)
    ranks = _children(proc.pid)
    assert len(ranks) == 2, ranks
    for pid in ranks:
        os.killpg(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    _finish(proc)
    assert not _wait_gone(ranks, 10)
    st = _state(run) or st
    assert st["epochs_done"] < EPOCHS and st["step"] > stopped_at, st  # killed before the end

    # the second resume finishes: the reference's weights (last/ and best/) and log, exactly
    out, err = _finish(_start(_cmd(data, run, "--no-progress", "--resume"), tmp_path))
    assert f"trained {EPOCHS} epochs" in out, out + err
    out, err = _finish(reference)
    assert reference.returncode == 0 and f"trained {EPOCHS} epochs" in out, out + err
    assert err.count("train:   0%") == 1, err  # one epoch bar: none on rank 1
    a, b = _weights(ref), _weights(run)
    for d in a:
        assert a[d].keys() == b[d].keys()
        for k in a[d]:
            assert torch.equal(a[d][k], b[d][k]), (d, k)
    assert _log(run) == _log(ref)
    assert [int(r["epoch"]) for r in _log(run)] == list(range(1, EPOCHS + 1))


def test_ddp_ranks_stop_when_the_launcher_is_killed(tmp_path):
    """SIGKILL to the torchrun launcher alone (which it cannot pass on): the ranks notice that it is
    gone, agree on a step, save last/ and exit with the usual message, instead of training on as
    orphans that a --resume would race for the run directory."""
    data = tmp_path / "bits.npy"
    np.save(data, (np.random.default_rng(0).random((600, 12)) < 0.3).astype(np.uint8))
    run = tmp_path / "run"
    proc = _start(_cmd(data, run, "--no-progress", "--epochs", "50"), tmp_path)
    _wait_for(proc, run, lambda s: s["step"] >= 10)
    ranks = _children(proc.pid)
    assert len(ranks) == 2, ranks
    launcher = proc.pid
    proc.send_signal(signal.SIGKILL)
    try:
        _, err = _finish(proc)  # the pipes close when the ranks, which share them, have ended
    finally:
        for pid in _wait_gone(ranks, 20):
            os.killpg(pid, signal.SIGKILL)  # do not leave them running if they failed to stop
    assert not _wait_gone(ranks, 0), "the ranks went on without their launcher"
    st = _state(run)
    assert st is not None and 10 <= st["step"] and st["epochs_done"] < 50, st
    assert (f"chainrule: the torchrun launcher (pid {launcher}) is gone: stopped after step {st['step']}; "
            f"saved {run / 'last'}") in err, err
