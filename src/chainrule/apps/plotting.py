"""Pictures: sample grids as PNG (Pillow) and training curves (matplotlib, no display needed)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image



def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure to ``path`` (its folder made if needed), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

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


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN or infinite): what a log or
    results file may hold in a cell."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def read_training_log(path: str | Path) -> tuple[list[int | float], list[float | None], list[float | None]]:
    """A trainer's ``log.csv``: epochs (counted from 1, the epochs completed; an older chainrule's
    0-based log is shifted; a run stopped by its time budget inside an epoch ends with a fraction,
    e.g. 3.25), training and validation NLL per epoch (None where missing or not finite). Rows
    without an epoch are skipped; an unreadable file gives empty lists."""
    epochs: list[int | float] = []
    train: list[float | None] = []
    val: list[float | None] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                try:
                    e = float(row["epoch"])
                except (KeyError, TypeError, ValueError):
                    continue
                if not math.isfinite(e):
                    continue
                epochs.append(int(e) if e.is_integer() else e)
                train.append(finite_float(row.get("train_nll_nats")))
                val.append(finite_float(row.get("val_nll_nats")))
    except OSError:
        pass
    if epochs and min(epochs) == 0:  # a log of an older chainrule, which counted epochs from 0
        epochs = [e + 1 for e in epochs]
    return epochs, train, val


def plot_training_curve(log_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """Plot train and validation NLL (nats/example) per epoch from a trainer's ``log.csv``
    (:func:`read_training_log`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, train, val = read_training_log(log_csv)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [math.nan if v is None else v for v in train], label="train")
    pts = [(e, v) for e, v in zip(epochs, val) if v is not None]
    if pts:
        ax.plot([e for e, _ in pts], [v for _, v in pts], label="validation")
        best = min(pts, key=lambda p: p[1])
        ax.scatter([best[0]], [best[1]], color="C1", zorder=3, label=f"best {best[1]:.2f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per example)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_nll_maps(x: torch.Tensor, maps: np.ndarray | torch.Tensor, path: str | Path, num_values: int | None,
                  labels: list[str] | None = None, title: str = "", unit: str = "bits", per_row: int = 8) -> Path:
    """Save images next to their per-variable NLL heat maps: each example an image (top) over
    its map (below), ``per_row`` examples a row, one colour scale for the whole figure.

    ``x`` ``(N, C, H, W)`` (C = 1 or 3), ``maps`` ``(N, C, H, W)``: -log p(x_j | x_<j) per variable
    (:func:`chainrule.apps.anomaly.nll_map`), summed over the channels of a pixel. ``labels``: a
    caption per example (e.g. its index and score). Discrete values 0..K-1 map to 0..1 by
    /(K-1); real values are min-max scaled over the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().cpu().float() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)).float()
    m = np.asarray(maps.detach().cpu() if isinstance(maps, torch.Tensor) else maps, dtype=np.float64)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or m.shape != tuple(x.shape):
        raise ValueError(f"plot_nll_maps expects x and maps (N, 1 or 3, H, W) of one shape, got {tuple(x.shape)}, {m.shape}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("plot_nll_maps: no examples to draw")
    lo, hi = (0.0, float(num_values - 1)) if num_values is not None else (float(x.min()), float(x.max()))
    heat = m.sum(1)  # (N, H, W): a pixel's surprise over its channels
    vmax = float(heat.max()) if heat.size and heat.max() > 0 else 1.0
    ncol = min(per_row, n)
    nrow = math.ceil(n / ncol)
    size = 1.3
    fig, axes = plt.subplots(2 * nrow, ncol, figsize=(size * ncol + 0.9, 2 * (size + 0.2) * nrow + (0.6 if title else 0.3)),
                             dpi=100, squeeze=False)
    last = None
    for i in range(nrow * ncol):
        r, c = divmod(i, ncol)
        top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        if i >= n:
            top.axis("off")
            bottom.axis("off")
            continue
        img = ((x[i] - lo) / (hi - lo + 1e-12)).clamp(0, 1)
        top.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1,
                   interpolation="nearest")
        last = bottom.imshow(heat[i], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        if labels is not None:
            top.set_title(labels[i], fontsize=7)
        if c == 0:
            top.set_ylabel("input", fontsize=7)
            bottom.set_ylabel(f"NLL ({unit})", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=0.3)
    if last is not None:
        bar = fig.colorbar(last, ax=axes.ravel().tolist(), shrink=0.6, pad=0.02)
        bar.set_label(f"-log p(x_j | x_<j), {unit} per variable", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return save_figure(fig, path)


def plot_score_histograms(in_scores: np.ndarray, out_scores: np.ndarray, path: str | Path,
                          in_label: str = "in-distribution", out_label: str = "OOD", score_name: str = "score",
                          title: str = "", note: str = "", bins: int = 50) -> Path:
    """Save overlaid histograms (densities, shared bins) of the scores of in-distribution and OOD
    inputs; ``note`` (e.g. the AUROC) goes in a box in the corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    both = np.concatenate([a, b])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(a, bins=edges, density=True, alpha=0.55, color="C0", label=f"{in_label} ({len(a)})")
    ax.hist(b, bins=edges, density=True, alpha=0.55, color="C3", label=f"{out_label} ({len(b)})")
    ax.set_xlabel(f"{score_name} (higher = more anomalous)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if note:
        ax.text(0.02, 0.97, note, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    fig.tight_layout()
    return save_figure(fig, path)


def plot_probe(layers: list[int], val_accuracy: list[float], test_accuracy: list[float], path: str | Path,
               baseline_test: float | None = None, title: str = "") -> Path:
    """Linear-probe accuracy (fractions in [0, 1], drawn in %) against the layer probed (iGPT, Chen
    et al. 2020, fig. 3), validation and test; ``baseline_test`` (the raw-pixel probe) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (len(layers) == len(val_accuracy) == len(test_accuracy)) or not layers:
        raise ValueError(f"plot_probe expects one validation and one test accuracy per layer, got {len(layers)} "
                         f"layers, {len(val_accuracy)} and {len(test_accuracy)} accuracies")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(layers, [100 * a for a in val_accuracy], marker="o", label="validation")
    ax.plot(layers, [100 * a for a in test_accuracy], marker="o", label="test")
    if baseline_test is not None:
        ax.axhline(100 * baseline_test, color="0.4", linestyle="--", label=f"raw pixels (test) {100 * baseline_test:.1f}%")
    ax.set_xlabel("layer")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.set_xticks(layers)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
