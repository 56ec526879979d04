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


#: RGB colour (0..1) of hidden pixels in :func:`plot_completions`.
HIDDEN_COLOUR = (0.85, 0.12, 0.12)


def plot_completions(x: torch.Tensor, mask: torch.Tensor, completions: torch.Tensor, path: str | Path,
                     num_values: int | None, title: str = "") -> Path:
    """Save a figure of completions: one row per example, columns original | observed | completions.

    ``x`` ``(N, C, H, W)`` (C = 1 or 3), ``mask`` ``(N, C, H, W)`` bool (True = observed),
    ``completions`` ``(N, M, C, H, W)``. In the "observed" column a pixel with any hidden channel is
    drawn in :data:`HIDDEN_COLOUR` (red), the rest as in the original (grey images stay grey).
    Discrete values 0..K-1 map to 0..1 by /(K-1); real values are min-max scaled over the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, mask, comp = x.detach().cpu().float(), mask.detach().cpu().bool(), completions.detach().cpu().float()
    n, m = comp.shape[0], comp.shape[1]
    if x.dim() != 4 or x.shape[1] not in (1, 3) or tuple(comp.shape[2:]) != tuple(x.shape[1:]) or mask.shape != x.shape:
        raise ValueError(f"plot_completions expects x and mask (N, 1 or 3, H, W) and completions (N, M, C, H, W), "
                         f"got {tuple(x.shape)}, {tuple(mask.shape)}, {tuple(comp.shape)}")
    if num_values is not None:
        lo, hi = 0.0, float(num_values - 1)
    else:  # one scale for the whole figure, from the values a person sees (not the hidden placeholders)
        seen = torch.cat([x[mask], comp.reshape(-1)])
        lo, hi = float(seen.min()), float(seen.max())

    def rgb(t: torch.Tensor) -> np.ndarray:  # (C, H, W) -> (H, W, 3) in [0, 1]
        t = ((t - lo) / (hi - lo + 1e-12)).clamp(0, 1)
        # a copy: an expanded grey tensor shares one buffer for its 3 channels (colouring would tint all)
        return (t.expand(3, -1, -1) if t.shape[0] == 1 else t).permute(1, 2, 0).numpy().copy()

    ncol = m + 2
    size = 1.3
    fig, axes = plt.subplots(n, ncol, figsize=(size * ncol, (size + 0.15) * n + (0.9 if title else 0.6)), dpi=100,
                             squeeze=False)
    for i in range(n):
        observed = rgb(x[i])
        observed[~mask[i].all(0).numpy()] = HIDDEN_COLOUR
        panels = [rgb(x[i]), observed] + [rgb(comp[i, j]) for j in range(m)]
        for j, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(["original", "observed\n(red: hidden)"][j] if j < 2 else f"completion {j - 1}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=0.4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
