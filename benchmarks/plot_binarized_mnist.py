"""Validation curves of the fixed-binarization MNIST runs, with the papers' numbers as lines.

Reads the result files of ``benchmarks/binarized_mnist.py`` (``benchmarks/results/*.json``) and
writes ``benchmarks/results/binarized_mnist_curves.png``:

    python benchmarks/plot_binarized_mnist.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = {  # result file -> (label, paper's test NLL or None)
    "binarized_mnist_fvsbn_wd0.01": ("FVSBN (AdamW, wd 0.01)", 97.45),
    "binarized_mnist_made_1hl8000": ("MADE 1x8000 + direct, 1 mask", 88.40),
    "binarized_mnist_nade500": ("NADE 500", 88.33),
    "binarized_mnist_made_2hl2000_32masks": ("MADE 2x2000, 32 masks (val: 4-mask ensemble)", 86.64),
    "binarized_mnist_eonade500_16": ("EoNADE 500, 16 orderings (val: 2-ordering ensemble)", None),
}


def main() -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (label, target) in RUNS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        curve = json.loads(path.read_text())["val_curve_nats"]
        line, = ax.plot(range(1, len(curve) + 1), curve, label=label)
        if target is not None:
            ax.axhline(target, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_ylim(84, 112)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NLL (nats / image)")
    ax.set_title("Fixed-binarization MNIST on 1 CPU thread (dotted: the papers' test NLL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / "binarized_mnist_curves.png"
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
