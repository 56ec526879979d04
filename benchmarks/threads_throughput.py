"""Intra-op threads: one against two (or ``--threads-list``), for training steps and sampling of the
image models and the GPT, alternating in one process, with the machine's load average recorded
before and after (on a shared machine the answer depends on it: that is why the CLI's default is
the free cores, :func:`chainrule.training.threads.free_threads`).

    python benchmarks/threads_throughput.py --repeats 5

Training: one step (forward, float32 loss, backward, Adam) in float32 at batch 32 (images) / 12
(GPT windows of 65). Sampling: ``model.sample(16)`` (the cached form) for the image models.
Data-parallel ranks: ``benchmarks/ddp_throughput.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402

MODELS = {
    "pixelcnn": ((1, 28, 28), 2, dict(channels=64, num_layers=12, head_channels=64), 32),
    "gated_pixelcnn": ((1, 28, 28), 2, dict(channels=32, num_layers=5, head_channels=32), 32),
    "transformer": ((65,), 65, dict(num_layers=4, num_heads=4, embed_dim=128), 12),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads-list", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--sample", type=int, default=16, help="images drawn per sampling timing (0: no sampling)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    result: dict = {"threads": args.threads_list, "load_average_before": [round(v, 2) for v in load_before], "models": {}}
    for name in args.models:
        shape, k, hp, batch = MODELS[name]
        torch.manual_seed(0)
        model = chainrule.create_model(name, shape, k, **hp)
        t = Trainer(model, TrainConfig(precision="float32"), progress=False)
        x = torch.randint(k, (batch, *shape))
        step: dict[int, list[float]] = {n: [] for n in args.threads_list}
        draw: dict[int, list[float]] = {n: [] for n in args.threads_list}
        for r in range(args.repeats + 1):
            for n in args.threads_list:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                t.train_step(x, None, 1e-3)
                dt = time.perf_counter() - t0
                if r:
                    step[n].append(dt)
                if args.sample and name != "transformer" and r in (1, args.repeats):
                    t0 = time.perf_counter()
                    model.sample(args.sample, generator=torch.Generator().manual_seed(r))
                    draw[n].append(time.perf_counter() - t0)
        row = {"train_step_median_s": {n: round(statistics.median(v), 4) for n, v in step.items()}}
        one = statistics.median(step[args.threads_list[0]])
        row["train_speedup_vs_first"] = {n: round(one / statistics.median(v), 3) for n, v in step.items()}
        if any(draw.values()):
            row["sample_seconds_best"] = {n: round(min(v), 2) for n, v in draw.items() if v}
        result["models"][name] = row
        print(name, row, flush=True)
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    write_result("threads_throughput", result)


if __name__ == "__main__":
    main()
