"""Pictures: sample grids as PNG (Pillow) and training curves (matplotlib, no display needed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, num_values: int | None, ncol: int | None = None, scale: int = 4,
               pad: int = 1) -> Image.Image:
    """Tile images ``(N, C, H, W)`` (C = 1 or 3) into one picture; values mapped to 0..255.

    Discrete values 0..K-1 are scaled by 255/(K-1); real values are min-max scaled.
    """
    x = images.detach().cpu().float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if num_values is not None:
        x = x * (255.0 / (num_values - 1))
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo + 1e-12) * 255.0
    n, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 128.0)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    arr = grid.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def save_image_grid(images: torch.Tensor, path: str | Path, num_values: int | None, ncol: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, num_values, ncol).save(path)
    return path


def plot_training_curve(log_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """Plot train and validation NLL (nats/example) per epoch from a trainer's ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(log_csv)))
    epochs = np.array([int(r["epoch"]) for r in rows]) + 1
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [float(r["train_nll_nats"]) for r in rows], label="train")
    val = [float(r["val_nll_nats"]) for r in rows if r.get("val_nll_nats")]
    if val:
        ax.plot(epochs[: len(val)], val, label="validation")
        best = int(np.argmin(val))
        ax.scatter([epochs[best]], [val[best]], color="C1", zorder=3, label=f"best {val[best]:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per example)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
