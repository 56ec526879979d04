"""Data-parallel training throughput: one process vs N single-thread gloo ranks, same global batch.

Each configuration trains the same model on the same global batches through ``Trainer.fit`` (the
path ``torchrun -m chainrule train`` takes: sharded batches, DDP's gradient all-reduce, rank-0
validation), timed on rank 0. One
process and N ranks alternate ``--repeats`` times so that load on a shared machine hits both alike;
the best time of each is reported. Examples:

    python benchmarks/ddp_throughput.py                       # gated_pixelcnn and made, 1 vs 2 ranks
    python benchmarks/ddp_throughput.py --models made --ranks 2

A compute-heavy network (the Gated PixelCNN, ~10^5 parameters, a 28x28 batch costs ~10^2 ms)
should scale almost linearly; a light one with many parameters (MADE, 784-500-784: 0.8 M
parameters, each step a few ms) is bound by the all-reduce. The time is that of ``fit`` (3 epochs, each with a
one-batch validation on rank 0), after the processes have started.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

MODELS = {
    "gated_pixelcnn": dict(channels=32, num_layers=5),
    "made": dict(hidden_sizes=[500]),
}
SHAPE = (1, 28, 28)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, model_name: str, steps: int, batch: int, out: str) -> None:
    """Train 3 epochs of ``steps`` steps; rank 0 writes the seconds ``fit`` took."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from chainrule.models import create_model
    from chainrule.training import TrainConfig, Trainer, distributed

    if world > 1:
        distributed.init_from_env("cpu", threads=1, timeout_seconds=120)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(steps * batch, *SHAPE, generator=g) < 0.3).long()
    val = x[:batch]  # validation is rank 0's alone: keep it small next to the steps
    torch.manual_seed(0)
    model = create_model(model_name, SHAPE, 2, **MODELS[model_name])
    cfg = TrainConfig(epochs=3, batch_size=batch, lr=1e-3, patience=None, eval_batch_size=batch, seed=0)
    trainer = Trainer(model, cfg, progress=False)
    t0 = time.perf_counter()
    trainer.fit(x, val)
    total = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(repr(total))
    if world > 1:
        distributed.destroy()


def measure(model_name: str, world: int, steps: int, batch: int) -> float:
    """Seconds of ``3 * steps`` optimizer steps (plus 3 small validations) with ``world`` ranks."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "t.txt")
        mp.start_processes(_run, args=(world, _free_port(), model_name, steps, batch, out), nprocs=world,
                           join=True, start_method="spawn")
        return float(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch (3 epochs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="ddp_throughput", help="results/NAME.json")
    args = ap.parse_args()
    rows = {}
    for name in args.models:
        times: dict[int, list[float]] = {1: [], args.ranks: []}
        for r in range(args.repeats):
            for world in (1, args.ranks):
                s = measure(name, world, args.steps, args.batch_size)
                times[world].append(s)
                print(f"{name}: {world} rank(s), repeat {r}: {3 * args.steps / s:.2f} steps/s", flush=True)
        one, many = min(times[1]), min(times[args.ranks])
        rows[name] = {"seconds_1": times[1], f"seconds_{args.ranks}": times[args.ranks],
                      "steps_per_s_1": 3 * args.steps / one, f"steps_per_s_{args.ranks}": 3 * args.steps / many,
                      "speedup": one / many}
        print(f"{name}: {args.ranks} ranks vs 1 process: {one / many:.2f}x "
              f"({3 * args.steps / one:.2f} vs {3 * args.steps / many:.2f} steps/s, global batch {args.batch_size})")
    write_result(args.name, {"machine": machine(), "args": vars(args), "rows": rows,
                             "load_average_after": [round(v, 2) for v in os.getloadavg()]})


if __name__ == "__main__":
    main()
