"""bf16 autocast training against float32: the same model, seed, batches and steps, trained twice
(``precision="float32"`` and ``precision="bfloat16"``), then evaluated in float32 on the test split.
The issue's bar: the bf16-trained model's test NLL within 0.3% of the float32 one's.

    python benchmarks/precision_parity.py gpt --threads 1        # tiny Shakespeare, nanoGPT's CPU config
    python benchmarks/precision_parity.py gated --threads 1      # Gated PixelCNN, binarized MNIST
    python benchmarks/precision_parity.py gated_digits --threads 1   # Gated PixelCNN, 8x8 digits (17 values)

Writes ``results/precision_parity_<which>.json``.
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
from chainrule.data import load_dataset  # noqa: E402
from chainrule.inference.likelihood import evaluate, evaluate_stream  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402


def run(which: str, precision: str, steps: int, seed: int) -> dict:
    if which == "gpt":
        ds = load_dataset("tinyshakespeare", data_dir(), block_size=65)
        torch.manual_seed(seed)
        model = chainrule.create_model("transformer", ds.shape, ds.num_values, num_layers=4, num_heads=4, embed_dim=128)
        config = TrainConfig(epochs=1, batch_size=12, lr=1e-3, optimizer="adamw", weight_decay=0.1, schedule="cosine",
                             warmup_steps=100, min_lr=1e-4, betas=(0.9, 0.99), grad_clip=1.0, patience=None,
                             steps_per_epoch=steps, max_steps=steps, seed=seed, precision=precision, save_last=False)
        t0 = time.perf_counter()
        res = Trainer(model, config, progress=False).fit(ds.train)  # no validation: the last weights
        seconds = time.perf_counter() - t0
        test = evaluate_stream(model, ds.val.stream, stride=64)  # nanoGPT's validation loss, exactly
        return {"precision": precision, "train_seconds": round(seconds, 1), "steps_per_second": round(steps / res.step_seconds, 2),
                "test_nll_nats_per_char": test.nats_per_token}
    ds = load_dataset("binarized-mnist" if which == "gated" else "digits", data_dir())
    torch.manual_seed(seed)
    model = chainrule.create_model("gated_pixelcnn", ds.shape, ds.num_values, channels=32, num_layers=5, head_channels=32)
    config = TrainConfig(epochs=1, batch_size=32, lr=2e-3, patience=None, steps_per_epoch=steps, max_steps=steps,
                         seed=seed, precision=precision, save_last=False)
    t0 = time.perf_counter()
    res = Trainer(model, config, progress=False).fit(ds.train)
    seconds = time.perf_counter() - t0
    test = evaluate(model, ds.test)
    return {"precision": precision, "train_seconds": round(seconds, 1), "steps_per_second": round(steps / res.step_seconds, 2),
            "test_nll_nats": test.nll_nats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=("gpt", "gated", "gated_digits"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="default: 2000 (gpt), 500 (gated)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (2000 if args.which == "gpt" else 500)
    rows = [run(args.which, p, steps, args.seed) for p in ("float32", "bfloat16")]
    key = [k for k in rows[0] if k.startswith("test_nll")][0]
    rel = (rows[1][key] - rows[0][key]) / rows[0][key]
    write_result(f"precision_parity_{args.which}", {"steps": steps, "runs": rows,
                                                    "relative_difference_bf16_vs_float32": round(rel, 5),
                                                    "within_0.3_percent": abs(rel) <= 0.003})


if __name__ == "__main__":
    main()
