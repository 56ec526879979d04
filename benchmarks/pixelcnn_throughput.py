"""PixelCNN training throughput, side by side with pytorch-generative's PixelCNN (its code, run
beside ours from a checkout of github.com/EugenHotaj/pytorch-generative; nothing of it is copied).

Both networks have the same architecture: a 7x7 type-A convolution to 2h maps, ``--blocks``
residual blocks (1x1 2h -> h, 3x3 type B, 1x1 h -> 2h) and two 1x1 layers to one logit per pixel;
pytorch-generative stores the masked-out kernel weights as parameters, chainrule does not store
the rows below the centre, so its parameter count is lower for the same network (both counts are
reported). One training step (forward, Bernoulli NLL, backward, Adam) on a batch of binarized
MNIST-shaped images; the two alternate step by step so that the machine's load hits both alike.
chainrule is measured at its default ``precision="auto"`` (which times float32 / bf16 and the two
layouts at its first step, inside the warm-up rounds, and trains in the fastest), and at each
fixed arm: float32 and bf16 autocast, each with channels-last and with NCHW feature maps
(:func:`chainrule.nn.pixel.feature_layout`), to show what each is worth and that ``auto`` is not
slower than the fastest of them.

    git clone https://github.com/EugenHotaj/pytorch-generative /tmp/pg   # or a snapshot of it
    python benchmarks/pixelcnn_throughput.py --pg /tmp/pg --threads 1

Targets: chainrule >= 2x pytorch-generative's images/s (issues 10, 21); ``auto`` within 5% of the
fastest fixed arm (issue 21).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402

import chainrule  # noqa: E402
import chainrule.nn.pixel as pixel_layers  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402


def load_pytorch_generative_pixelcnn(root: Path) -> type:
    """Import pytorch-generative's PixelCNN without its package __init__ (which pulls in torchvision
    datasets and the trainer): stub packages with the right __path__, then the real modules."""
    pkg = root / "pytorch_generative"
    for name, path in (("pytorch_generative", pkg), ("pytorch_generative.models", pkg / "models"),
                       ("pytorch_generative.models.autoregressive", pkg / "models" / "autoregressive")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    return importlib.import_module("pytorch_generative.models.autoregressive.pixel_cnn").PixelCNN


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", required=True, help="a checkout of pytorch-generative")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--h", type=int, default=32, help="h: the 3x3 convolutions' maps (2h between blocks)")
    ap.add_argument("--head", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    PGPixelCNN = load_pytorch_generative_pixelcnn(Path(args.pg))

    torch.manual_seed(0)
    x = (torch.rand(args.batch_size, 1, 28, 28) < 0.2).long()
    ours = chainrule.create_model("pixelcnn", (1, 28, 28), 2, channels=2 * args.h, num_layers=args.blocks,
                                  head_channels=args.head)
    trainers = {p: Trainer(ours, TrainConfig(precision=p), progress=False) for p in ("auto", "float32", "bfloat16")}
    theirs = PGPixelCNN(in_channels=1, out_channels=1, n_residual=args.blocks, residual_channels=args.h,
                        head_channels=args.head)
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    xf = x.float()

    def step_theirs() -> None:
        logits = theirs(xf)
        loss = F.binary_cross_entropy_with_logits(logits, xf, reduction="none").sum((1, 2, 3)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def nchw(precision: str):  # the same step with MaskedConv2d's outputs left contiguous
        def step() -> None:
            with pixel_layers.feature_layout(False):
                trainers[precision].train_step(x, None, 1e-3)
        return step

    runs = {"chainrule auto": lambda: trainers["auto"].train_step(x, None, 1e-3),
            "chainrule float32": lambda: trainers["float32"].train_step(x, None, 1e-3),
            "chainrule float32 NCHW": nchw("float32"),
            "chainrule bfloat16": lambda: trainers["bfloat16"].train_step(x, None, 1e-3),
            "chainrule bfloat16 NCHW": nchw("bfloat16"),
            "pytorch-generative": step_theirs}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for k in range(args.steps + 2):
        for label, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            if k >= 2:  # the first two rounds warm up
                times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch_size / v for k, v in med.items()}
    result = {
        "benchmark": "pixelcnn_throughput", "command": " ".join(["python"] + sys.argv), "machine": machine(),
        "batch_size": args.batch_size, "blocks": args.blocks, "h": args.h, "head_channels": args.head,
        "parameters": {"chainrule": ours.num_parameters(), "pytorch-generative": sum(p.numel() for p in theirs.parameters())},
        "median_step_seconds": {k: round(v, 4) for k, v in med.items()},
        "images_per_second": {k: round(v, 1) for k, v in ips.items()},
        "auto_chose": trainers["auto"].choose_precision(x).label,
        "auto_measured_ms": {k: round(v * 1000, 1) for k, v in trainers["auto"].choose_precision(x).seconds.items()},
        "ratio_auto_over_pytorch_generative": round(ips["chainrule auto"] / ips["pytorch-generative"], 2),
        "ratio_auto_over_fastest_fixed_arm": round(ips["chainrule auto"] / max(v for k, v in ips.items()
                                                                                if k.startswith("chainrule") and k != "chainrule auto"), 3),
        "ratio_chainrule_float32_over_pytorch_generative": round(ips["chainrule float32"] / ips["pytorch-generative"], 2),
        "ratio_bfloat16_over_float32": round(ips["chainrule bfloat16"] / ips["chainrule float32"], 2),
        "ratio_channels_last_over_nchw": round(ips["chainrule float32"] / ips["chainrule float32 NCHW"], 2),
        "cpu_flags_bf16": sorted(f for f in open("/proc/cpuinfo").read().split() if "bf16" in f or f.startswith("amx"))[:4],
    }
    print(result)
    write_result("pixelcnn_throughput", result)


if __name__ == "__main__":
    main()
