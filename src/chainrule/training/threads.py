"""How many torch threads a command uses by default: the cores that are free now.

torch's own default is one intra-op thread per core, which pays on an idle machine and costs a lot
on a busy one: threads that wait for a core stall every parallel operation at its barrier. On a
2-core machine under a load average of ~8, ``chainrule sample -n 16`` took 50 s with torch's two
threads and 4.0 s with one (issue 26). So the default is the number of cores this process may run
on minus the load average of the last minute, rounded, at least 1 and at most the cores; the
command line's ``--threads N`` overrides it. The load average counts runnable processes, so it is
read before this process starts working.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The load average of the last minute (None where the system does not tell)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def free_threads(cores: int | None = None, load: float | None = None) -> int:
    """``round(cores - load)`` clamped to ``[1, cores]``: the threads that can run without waiting.
    ``cores`` / ``load``: default :func:`usable_cores` / :func:`load_average` (no load figure: all
    cores)."""
    cores = usable_cores() if cores is None else max(1, int(cores))
    load = load_average() if load is None else load
    if load is None:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def apply_default_threads() -> int:
    """Set torch's intra-op threads to :func:`free_threads` and say so in one log line; returns the number."""
    cores, load = usable_cores(), load_average()
    n = free_threads(cores, load)
    torch.set_num_threads(n)
    where = f"load average {load:.2f}" if load is not None else "load unknown"
    log.info("threads: %d of %d cores (%s; --threads N to choose)", n, cores, where)
    return n
