"""The causal-conv ARM of "Deep Generative Modeling" (ch. 2) on scikit-learn's 8x8 digits.

The book's configuration: 4 causal 1-D convolutions (kernel 7, M=256 channels, first layer option
A), categorical over 17 values, Adamax lr 1e-3, batch 64, split train[:1000] / val[1000:1350] /
test[1350:], early stopping after 21 epochs without validation improvement (the notebook stops
when its counter exceeds 20), at most 1000 epochs. Reports test NLL in nats per image (sum over
the 64 pixels, mean over the 447 test images) for each seed.

    python benchmarks/digits_arm.py --seeds 0 1 2 --threads 1

The peer number (the book's own notebook, jmtomczak/intro_dgm `arms/`) is measured by running that
code beside this script on the same machine; it is not part of this repository.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.likelihood import evaluate  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("digits")
    runs = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = chainrule.create_model("causalconv", ds.shape, ds.num_values)  # defaults = the book's
        config = TrainConfig(epochs=1000, batch_size=64, lr=1e-3, optimizer="adamax", patience=21, seed=seed)
        result = Trainer(model, config, progress=False).fit(ds.train, ds.val)
        test = evaluate(model, ds.test)
        runs.append({"seed": seed, "test_nll_nats": test.nll_nats, "test_bits_per_dim": test.bits_per_dim,
                     "best_val_nll_nats": result.best_val_nll_nats, "epochs_run": result.epochs_run,
                     "best_epoch": result.best_epoch, "train_seconds": round(result.train_seconds, 1),
                     "seconds_per_epoch": round(result.train_seconds / result.epochs_run, 2)})
        print(runs[-1], flush=True)
    nll = [r["test_nll_nats"] for r in runs]
    write_result("digits_arm", {"parameters": model.num_parameters(), "runs": runs,
                                "test_nll_nats_mean": statistics.mean(nll),
                                "test_nll_nats_std": statistics.stdev(nll) if len(nll) > 1 else 0.0,
                                "threads": args.threads})


if __name__ == "__main__":
    main()
