"""Evaluation speed against the evaluation batch size: wall, user and system CPU time of exact NLL.

Large batches make activations of hundreds of MB; on a CPU their allocation can cost more in page
faults (system time) than the arithmetic (user time). This measures it for a dense and a
convolutional model with random weights (the speed does not depend on them), batch sizes
alternating, best of ``--repeats``:

    python benchmarks/eval_batch.py --threads 1
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

from chainrule import create_model  # noqa: E402
from chainrule.inference.likelihood import evaluate  # noqa: E402

MODELS = {
    "nade": ((1, 28, 28), 2, dict(hidden_size=500), 4096),
    "gated_pixelcnn": ((1, 28, 28), 256, dict(channels=32, num_layers=5, head_channels=32, head="logistic_mixture"), 1024),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 256, 64, 16])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        shape, k, hp, n = MODELS[name]
        torch.manual_seed(0)
        model = create_model(name, shape, k, **hp).eval()
        x = torch.randint(0, k, (n, *shape))
        best: dict[int, tuple[float, float, float]] = {}
        for _ in range(args.repeats):
            for bs in args.batch_sizes:
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                evaluate(model, x, batch_size=bs)
                wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
                m = (wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime)
                if bs not in best or m[0] < best[bs][0]:
                    best[bs] = m
        for bs in args.batch_sizes:
            wall, user, sys_t = best[bs]
            rows.append({"model": name, "examples": n, "batch_size": bs, "wall_s": round(wall, 2),
                         "user_s": round(user, 2), "sys_s": round(sys_t, 2), "examples_per_s": round(n / wall, 1)})
            print(f"{name:15s} batch {bs:5d}: {wall:6.2f} s wall ({user:.2f} user, {sys_t:.2f} sys), {n / wall:8.1f} examples/s",
                  flush=True)
    write_result("eval_batch", {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
