"""Distributed data-parallel training on PyTorch's own engine (``torch.distributed`` + DDP).

Launch with ``torchrun`` (or ``python -m torch.distributed.run``), which starts one process per
rank and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``:

- one machine, N processes::

      torchrun --nproc-per-node N -m chainrule train made --dataset binarized-mnist --batch-size 64

- M machines (run this on every node, R = 0..M-1, HOST:PORT reachable from all of them)::

      torchrun --nnodes M --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
               --nproc-per-node N -m chainrule train ...

The backend is **gloo** on CPU and **NCCL** on CUDA (each rank then uses ``cuda:LOCAL_RANK``).
``--batch-size`` keeps its single-process meaning: it is the *global* batch, and each of the
``W`` ranks computes ``batch_size / W`` examples of it (``batch_size % W == 0`` is required), so
an N-rank run takes the same optimizer steps as the single-process run (up to the order of
floating-point reductions). Only rank 0 writes files (``best/``, ``last/``, ``log.csv``, the
samples, ``results.json``) and prints.

Without ``WORLD_SIZE > 1`` in the environment nothing here does anything: :func:`init_from_env`
returns at once and the helpers answer as for a single process (rank 0 of 1).
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from chainrule.errors import InputError
from chainrule.training.threads import free_threads

log = logging.getLogger(__name__)

__all__ = ["init_from_env", "is_distributed", "rank", "local_rank", "world_size", "is_main", "barrier",
           "all_reduce_mean", "all_reduce_sum", "broadcast", "destroy", "check_global_batch", "wrap_ddp", "shard"]


def is_distributed() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (returned for convenience)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` averaged over the ranks, in place (returned for convenience)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank, in place (returned for convenience)."""
    if is_distributed():
        dist.broadcast(tensor, src)
    return tensor


def init_from_env(device: str | torch.device | None = None, threads: int | None = None,
                  timeout_seconds: float | None = None) -> str | torch.device | None:
    """Join the process group torchrun describes in the environment; returns this rank's device.

    Does nothing (returns ``device`` unchanged) unless ``WORLD_SIZE`` > 1. Otherwise: the backend
    is NCCL for CUDA tensors when ``device`` is CUDA (a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``,
    made the current device), with gloo beside it for the trainer's small CPU collectives (the stop
    decision, loss sums: NCCL refuses CPU tensors), and gloo alone otherwise; CUDA is never touched for a CPU run. Unless ``threads``
    was given (``--threads``), each rank gets ``free cores // LOCAL_WORLD_SIZE`` torch threads (at
    least 1; the free cores: :func:`chainrule.training.threads.free_threads`), so the ranks of a
    machine do not oversubscribe its cores.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = torch.device(device).type == "cuda" if device is not None else False
    if cuda:
        dev = torch.device(device)
        if dev.index is None:
            dev = torch.device("cuda", local_rank())
        torch.cuda.set_device(dev)
        device = dev
    if threads is None:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        torch.set_num_threads(max(1, free_threads() // max(1, per_node)))
    if not dist.is_initialized():
        kwargs = {}
        if timeout_seconds is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_seconds)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", **kwargs)
    return device


def destroy() -> None:
    """Leave the process group (nothing to do without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``batch_size`` is the global batch of ``world_size`` ranks: it must divide into equal slices."""
    if batch_size % world_size:
        raise InputError(f"batch_size {batch_size} is the global batch of all {world_size} ranks and must be "
                         f"divisible by their number: use a multiple of {world_size}, "
                         f"e.g. {batch_size // world_size * world_size or world_size}")


def wrap_ddp(model: torch.nn.Module, batch_size: int) -> torch.nn.Module:
    """``model`` in a ``DistributedDataParallel`` wrapper (which copies rank 0's weights and buffers
    to every rank) for the training steps of a global batch of ``batch_size``; the trainer keeps
    the plain model for evaluation and checkpoints."""
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    if is_main():
        w = world_size()
        log.info("DDP: %d ranks x %d = global batch %d (%s)", w, batch_size // w, batch_size, dist.get_backend())
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def shard(n: int) -> slice:
    """This rank's part of a global batch of ``n`` examples: contiguous, disjoint, sizes differing
    by at most one (equal when ``n`` is a multiple of the world size)."""
    r, w = rank(), world_size()
    return slice(r * n // w, (r + 1) * n // w)
