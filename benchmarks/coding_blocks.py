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
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = chainrule.load(checkpoint_dir(args.run)).eval()
    x = torch.as_tensor(load_dataset(args.dataset, data_dir()).test[: args.images])
    best: dict[int, float] = {}
    for _ in range(args.repeats):
        for b in args.blocks:
            t = time.perf_counter()
            encoding_tables(model, x, precision=PRECISION, block_rows=b)
            rate = len(x) / (time.perf_counter() - t)
            best[b] = max(best.get(b, 0.0), rate)
            print(f"block {b:4d}: {rate:7.2f} images/s", flush=True)
    base = best[args.blocks[0]]
    result = {"model": model.config["model"], "run": args.run, "images": len(x),
              "images_per_s": {str(b): round(r, 2) for b, r in best.items()},
              "speedup_over_first": {str(b): round(r / base, 2) for b, r in best.items()}}
    write_result(f"coding_blocks_{model.config['model']}", result)


if __name__ == "__main__":
    main()
