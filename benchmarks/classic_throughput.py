"""Training throughput (images/s) of the classic estimators on 28x28 binary images, side by side.

One optimizer step = forward, backward and Adam update on a batch of fixed-binarization MNIST
training images (batch 100, the papers' setting). The models are timed in interleaved rounds and
the median step time is reported, so that load on a shared machine hits them all alike; the
figure to quote is the ratio. "nade (autograd reference)" is the same NADE with its block-wise
hand-written pass replaced by plain autograd through one (batch x 784 x H) cumulative sum
(:func:`chainrule.models.nade.nade_pass_reference`), to show what the hand-written pass buys.

    python benchmarks/classic_throughput.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir, write_result  # noqa: E402

import chainrule  # noqa: E402
from chainrule.data import load_dataset  # noqa: E402
from chainrule.models.nade import nade_pass_reference  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "fvsbn": ("fvsbn", {}),
    "nade 500": ("nade", {"hidden_size": 500}),
    "nade 500 (autograd reference)": ("nade", {"hidden_size": 500}),
    "made 1x500": ("made", {"hidden_sizes": [500]}),
    "made 1x8000 + direct": ("made", {"hidden_sizes": [8000], "direct_connections": True}),
    "made 2x2000, 32 masks": ("made", {"hidden_sizes": [2000, 2000], "num_masks": 32}),
}


def use_reference_pass(model: Any) -> None:
    """Swap NADE's block-wise pass for the plain-autograd reference (same numbers, more memory)."""
    def forward_embedded(e: torch.Tensor, o: torch.Tensor, context: Any) -> torch.Tensor:
        seq = nade_pass_reference(e[:, o], model.W[o], model.c, model.V[o], model.b[o], model.activation)
        params = torch.empty_like(seq)
        params[:, o] = seq
        return params
    model.forward_embedded = forward_embedded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = load_dataset("binarized-mnist", data_dir()).train
    setups = {}
    for label, (name, hp) in MODELS.items():
        model = chainrule.create_model(name, (28, 28), 2, **hp)
        if "reference" in label:
            use_reference_pass(model)
        setups[label] = (model, Trainer(model, TrainConfig(batch_size=args.batch_size), progress=False))

    def step(model: Any, trainer: Trainer) -> None:
        # the trainer's own step: loss through model(x) (an ensemble: one member per step), Adam
        x = train[torch.randint(len(train), (args.batch_size,))]
        trainer.train_step(model.validate(x)[0], None, 1e-3)

    times: dict[str, list[float]] = {label: [] for label in setups}
    for label, (model, opt) in setups.items():  # warm-up
        step(model, opt)
    for _ in range(args.rounds):
        for label, (model, opt) in setups.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(model, opt)
            times[label].append((time.perf_counter() - t0) / args.steps)
    rows = {}
    for label, ts in times.items():
        med = statistics.median(ts)
        rows[label] = {"parameters": setups[label][0].num_parameters(), "median_step_seconds": round(med, 4),
                       "images_per_second": round(args.batch_size / med, 1)}
    ref, fast = rows["nade 500 (autograd reference)"], rows["nade 500"]
    write_result("classic_throughput", {
        "config": vars(args), "rows": rows,
        "nade_blockwise_speedup_over_autograd": round(ref["median_step_seconds"] / fast["median_step_seconds"], 2),
    })


if __name__ == "__main__":
    main()
