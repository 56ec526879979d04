"""Validation curves of the fixed-binarization MNIST image-model runs against their training time,
with the papers' test NLLs as dotted lines.

The runs of ``benchmarks/binarized_mnist.py`` for the image models go on from session to session
(``--resume``), so they have no final result file; this reads their ``runs/NAME/log.csv`` (one row
per epoch: validation NLL and the training seconds so far, one thread), copies the curves to
``benchmarks/results/binarized_mnist_image_curves.json`` and draws
``benchmarks/results/binarized_mnist_image_curves.png``:

    python benchmarks/plot_image_runs.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = {  # run directory under runs/ -> (label, the paper's test NLL)
    "binarized_mnist_pixelcnn": ("PixelCNN (12 blocks, 2h = 64)", 81.30),
    "binarized_mnist_gated_pixelcnn": ("Gated PixelCNN (8 layers of 32)", 81.0),
    "binarized_mnist_row_lstm": ("Row LSTM (4 layers, h = 32)", 80.54),
    "binarized_mnist_diagonal_bilstm": ("Diagonal BiLSTM (7 layers, h = 16)", 79.20),
}


def read_curve(log: Path) -> list[dict[str, float]]:
    """``log.csv`` -> ``[{epoch, val_nll_nats, train_nll_nats, lr, hours}]`` (rows with a validation NLL)."""
    rows = []
    with log.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val_nll_nats"):
                rows.append({"epoch": int(row["epoch"]), "val_nll_nats": round(float(row["val_nll_nats"]), 3),
                             "train_nll_nats": round(float(row["train_nll_nats"]), 3), "lr": float(row["lr"]),
                             "hours": round(float(row["seconds"]) / 3600, 3)})
    return rows


def main() -> None:
    curves = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (label, paper) in RUNS.items():
        log = ROOT / "runs" / name / "log.csv"
        if not log.exists():
            continue
        curve = read_curve(log)
        if not curve:
            continue
        curves[name] = {"label": label, "paper_test_nll_nats": paper, "curve": curve}
        line, = ax.plot([r["hours"] for r in curve], [r["val_nll_nats"] for r in curve], marker="o", markersize=3,
                        label=f"{label}: {min(r['val_nll_nats'] for r in curve):.2f}")
        ax.axhline(paper, color=line.get_color(), linestyle=":", linewidth=1)
        for before, row in zip(curve, curve[1:]):  # a lowered rate (a resume with --lr, or the plateau schedule)
            if row["lr"] != before["lr"]:
                ax.annotate(f"lr {row['lr']:g}", (row["hours"], row["val_nll_nats"]), textcoords="offset points",
                            xytext=(4, 6), fontsize=7, color=line.get_color())
    ax.set_ylim(78, 100)
    ax.set_xlabel("training time, hours on one CPU thread")
    ax.set_ylabel("validation NLL (nats / image)")
    ax.set_title("Fixed-binarization MNIST image models (dotted: the papers' test NLL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "binarized_mnist_image_curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    out = RESULTS / "binarized_mnist_image_curves.png"
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
