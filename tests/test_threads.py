"""The default number of torch threads: the cores that are free now, said in one log line."""

from __future__ import annotations

import logging

import pytest
import torch

from chainrule.cli.common import set_threads
from chainrule.errors import InputError
from chainrule.training import threads


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.1, 2),   # idle: both cores
    (2, 0.6, 1),   # 1.4 free rounds to 1
    (2, 0.4, 2),
    (2, 3.9, 1),   # busier than the machine: still one thread
    (16, 5.2, 11),
    (1, 0.0, 1),
    (4, None, 4),  # no load figure: every core
])
def test_free_threads(cores, load, expected, monkeypatch):
    if load is None:
        monkeypatch.setattr(threads, "load_average", lambda: None)
    assert threads.free_threads(cores, load) == expected


def test_the_cli_default_uses_the_free_cores_and_says_so(monkeypatch, caplog):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    try:
        for load, n in ((3.5, 1), (0.2, 2)):
            monkeypatch.setattr(threads, "load_average", lambda load=load: load)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="chainrule.training.threads"):
                set_threads(None)
            assert torch.get_num_threads() == n
            lines = [r.getMessage() for r in caplog.records]
            assert lines == [f"threads: {n} of 2 cores (load average {load:.2f}; --threads N to choose)"]
        set_threads(1)  # explicit: as given
        assert torch.get_num_threads() == 1
        with pytest.raises(InputError, match="--threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_under_torchrun_the_launcher_decides(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    import chainrule.cli.common as common

    monkeypatch.setattr(common, "apply_default_threads", lambda: pytest.fail("chose threads under torchrun"))
    set_threads(None)  # left to distributed.init_from_env (free cores // ranks per node)
