"""Speed of the entropy coder's tables by block size: images per second of
``chainrule.inference.coding.encoding_tables`` (what compress and decompress run, one variable at a
time through the incremental step, one thread) for blocks of B rows, on the first N test images.

Every step runs on exactly B rows (the last block padded), so the per-step overhead of Python and of
small matrix products is paid once per B examples; the tables are bit-identical for a given B (and
may differ between two B: that is why a compressed file records its B). The block sizes alternate,
best of ``--repeats``.

    python benchmarks/coding_blocks.py runs/binarized_mnist_row_lstm --images 256 --blocks 16 64 128 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.apps.compression import PRECISION  # noqa: E402
from chainrule.apps.pipeline import checkpoint_dir  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.coding import encoding_tables  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a run directory (or checkpoint) of a binarized-MNIST model")
    ap.add_argument("--dataset", default="binarized-mnist")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 64, 128, 256])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--name", default=None, help="the result's name (default coding_blocks_MODEL)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = chainrule.load(checkpoint_dir(args.run)).eval()
    x = torch.as_tensor(load_dataset(args.dataset, data_dir()).test[: args.images])
    best: dict[int, float] = {}
    best_cpu: dict[int, float] = {}  # the process's CPU time: what counts on a shared machine
    for _ in range(args.repeats):
        for b in args.blocks:
            t, c = time.perf_counter(), time.process_time()
            encoding_tables(model, x, precision=PRECISION, block_rows=b)
            rate, rate_cpu = len(x) / (time.perf_counter() - t), len(x) / (time.process_time() - c)
            best[b] = max(best.get(b, 0.0), rate)
            best_cpu[b] = max(best_cpu.get(b, 0.0), rate_cpu)
            print(f"block {b:4d}: {rate:7.2f} images/s ({rate_cpu:7.2f} of CPU time)", flush=True)
    base = best[args.blocks[0]]
    result = {"model": model.config["model"], "run": args.run, "images": len(x),
              "images_per_s": {str(b): round(r, 2) for b, r in best.items()},
              "speedup_over_first": {str(b): round(r / base, 2) for b, r in best.items()},
              "images_per_s_cpu": {str(b): round(r, 2) for b, r in best_cpu.items()},
              "load_average_1_5_15": os.getloadavg()}
    write_result(args.name or f"coding_blocks_{model.config['model']}", result)


if __name__ == "__main__":
    main()
