"""Training a VQ-VAE run (``chainrule train vqvae``): the checks of its hyperparameters and data, the
training itself, and what it leaves in the run directory: ``codes/`` (the code grids of the train,
val and test splits, computed once when training ends: the dataset ``latents:RUN`` of a prior's
run) and ``reconstructions.png``. :func:`chainrule.apps.pipeline.train_run` calls these for the
model ``"vqvae"``; :mod:`chainrule.apps.latent` (the latent runs) re-exports them."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from chainrule.apps.plotting import image_grid, plot_training_curve
from chainrule.apps.rundir import RunReplacement, replacing
from chainrule.data import CODES_DIR, LATENTS_PREFIX, Dataset
from chainrule.errors import InputError
from chainrule.io.checkpoint import atomic_write
from chainrule.latent import VQVAE
from chainrule.training import TrainConfig, Trainer


def check_vqvae_hyperparameters(hyperparameters: dict[str, Any]) -> None:
    """Unknown ``-p`` names of ``vqvae``: an InputError listing the accepted ones."""
    import inspect

    accepted = [p for p in inspect.signature(VQVAE.__init__).parameters if p not in ("self", "shape", "num_values")]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise InputError(f"model 'vqvae' has no hyperparameter(s) {', '.join(unknown)}; it accepts: {', '.join(accepted)}")


def check_data_fits_vqvae(ds: Dataset) -> None:
    """The VQ-VAE models discrete images (C, H, W)."""
    if ds.num_values is None:
        raise InputError(f"vqvae models discrete pixels, but {ds.name} is real-valued: quantize the data or pass --binarize")
    if len(ds.shape) != 3 or ds.shape[0] not in (1, 3):
        raise InputError(f"vqvae models images (C, H, W) with 1 or 3 channels, but {ds.name} has examples of shape {ds.shape}")


def write_codes(model: VQVAE, ds: Dataset, out: str | Path) -> Path:
    """Compute the code grids of ``ds``'s train/val/test splits (train as the model saw it: a dynamic
    binarization drawn once with seed 0) and cache them in ``out/codes/`` (written into a temporary
    folder and renamed: never half-written). Returns the folder."""
    out = Path(out)
    folder, tmp = out / CODES_DIR, out / (CODES_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dtype = np.uint16 if model.codebook_size <= 65536 else np.int64
    for split in ("train", "val", "test"):
        x, y = ds.split(split)
        if split == "train" and ds.train_transform is not None:
            x = ds.train_transform(x, torch.Generator().manual_seed(0))
        z = model.encode_all(x) if len(x) else torch.zeros(0, *model.grid, dtype=torch.long)
        np.save(tmp / f"{split}.npy", z.numpy().astype(dtype), allow_pickle=False)
        if y is not None:
            np.save(tmp / f"{split}_labels.npy", y.numpy().astype(np.int64), allow_pickle=False)
    meta = {"codebook_size": model.codebook_size, "grid": list(model.grid), "dataset": ds.name,
            "num_classes": ds.num_classes, "class_names": list(ds.class_names) if ds.class_names else None}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def codebook_usage(codes: torch.Tensor, k: int) -> dict[str, float]:
    """Perplexity exp(H) of the code frequencies and the share of the K codes used, of grids ``(N, h, w)``."""
    counts = torch.bincount(codes.reshape(-1), minlength=k).double()
    p = counts / counts.sum()
    h = -float((p[p > 0] * p[p > 0].log()).sum())
    return {"codebook_perplexity": math.exp(h), "codebook_used": float((counts > 0).double().mean())}


def reconstructions_figure(model: VQVAE, x: torch.Tensor, path: Path, n: int = 16) -> Path:
    """``path``: a PNG of ``n`` images spread over ``x`` (top row; test sets are often sorted by
    class) above their reconstructions (the decoder's mean)."""
    x = x[torch.linspace(0, len(x) - 1, min(n, len(x))).long()]
    with torch.no_grad():
        r = model.decode(model.encode(x).to(model.device), "mean").cpu()
    atomic_write(path, lambda p: image_grid(torch.cat([x.cpu(), r]), model.num_values, ncol=len(x)).save(p, format="PNG"))
    return path


def fit_vqvae_run(ds: Dataset, out: Path, hp: dict[str, Any], config: TrainConfig, extra: dict[str, Any],
                  progress: bool, resume: bool, device: str | torch.device | None,
                  report: Callable[[str], None], force: bool, created: bool = False) -> dict[str, Any]:
    """The VQ-VAE's part of :func:`chainrule.apps.pipeline.train_run`, once the run is checked and
    seeded (its directory held, the data and hyperparameters accepted): train the VQ-VAE (with the
    ordinary trainer: its objective is :meth:`~chainrule.latent.vqvae.VQVAE.training_loss`),
    evaluate the reconstruction NLL and codebook usage on the test split, cache the codes of every
    split (``out/codes/``) and write ``reconstructions.png``; returns the summary also written to
    ``results.json``. With ``force`` the previous run is moved aside and removed once this one
    has written its first checkpoint (:class:`~chainrule.apps.rundir.RunReplacement`, as for
    every other model); a failure before that puts it back."""
    model = VQVAE(ds.shape, ds.num_values, **hp)
    report(f"model vqvae: {model.num_parameters():,} parameters, codes {model.grid[0]}x{model.grid[1]} of "
           f"K={model.codebook_size} ({model.mode} codebook); data {ds.name}: {len(ds.train)} train / {len(ds.val)} val / "
           f"{len(ds.test)} test, shape {ds.shape}, num_values {ds.num_values}")
    replacement = None if resume else RunReplacement(out, force, created)
    trainer = Trainer(model, config, out_dir=out, extra={**(extra or {}), "conditional": False},
                      progress=progress, device=device,
                      on_checkpoint=replacement.commit if replacement is not None else None)
    if replacement is None:
        report(f"resuming from {out / 'last'}")
    else:
        replacement.begin(report)
    has_val = len(ds.val) > 0
    with replacing(replacement):
        result = trainer.fit(ds.train, ds.val if has_val else None, train_transform=ds.train_transform, resume=resume)
    report(f"trained {result.epochs_run} epochs in {result.train_seconds:.1f} s (best epoch {result.best_epoch})")
    t0 = time.perf_counter()
    recon = model.evaluate_reconstruction(ds.test)
    rec = float(recon.mean())
    folder = write_codes(model, ds, out)
    test_codes = torch.from_numpy(np.load(folder / "test.npy").astype(np.int64))
    usage = codebook_usage(test_codes, model.codebook_size)
    h, w = model.grid
    uniform = rec + h * w * math.log(model.codebook_size)
    dim_bits = model.dim * math.log(2)
    report(f"test: reconstruction NLL -log p(x|z*) {rec:.4f} nats/example = {rec / dim_bits:.4f} bits/dim | codebook "
           f"perplexity {usage['codebook_perplexity']:.1f} of K={model.codebook_size}, "
           f"{100 * usage['codebook_used']:.1f}% of the codes used")
    report(f"test: upper bound on NLL with a uniform prior over the codes (no prior trained yet): {uniform:.2f} "
           f"nats/example = {uniform / dim_bits:.4f} bits/dim")
    plot_training_curve(out / "log.csv", out / "curve.png", title=f"vqvae on {ds.name} (reconstruction NLL)")
    reconstructions_figure(model, ds.test, out / "reconstructions.png")
    summary = {"model": "vqvae", "dataset": ds.name, "parameters": model.num_parameters(),
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
               "best_val_reconstruction_nll_nats": result.best_val_nll_nats,
               "test_reconstruction": {"nll_nats": rec, "bits_per_dim": rec / dim_bits, "num_examples": len(recon),
                                       "dim": model.dim, **usage},
               "test_uniform_prior_bound": {"nll_upper_bound_nats": uniform,
                                            "bits_per_dim_upper_bound": uniform / dim_bits},
               "code_grid": [h, w], "codebook_size": model.codebook_size, "eval_seconds": time.perf_counter() - t0,
               "torch_threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    report(f"wrote {out / 'best'}, {out / 'log.csv'}, {out / 'reconstructions.png'}, {folder} (the dataset "
           f"{LATENTS_PREFIX}{out} of a prior)")
    return summary
