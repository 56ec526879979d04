"""Anomaly and out-of-distribution (OOD) detection from a model's exact likelihood.

Every function here is written once over the model contract (``log_prob``,
``log_prob_per_variable``, ``shape``, ``num_values``, ``dim``): it works for every registered
model, ensembles included, with no per-model code.

**Why not just the likelihood?** A low likelihood is the obvious anomaly score, and it works when
the anomalies are *more complex* than the training data. It famously fails on the classic image
pairs (Nalisnick et al. 2019, "Do deep generative models know what they don't know?", ICLR): a
model trained on Fashion-MNIST gives MNIST digits a *higher* likelihood than its own test set,
and a model of CIFAR-10 does the same for SVHN. The likelihood of an image is dominated by how
simple it is (large flat backgrounds, few strokes), not by what it shows. (Those results are
for 8-bit images. Measured here on *thresholded* binary images, a small NADE of Fashion-MNIST is
not fooled — MNIST gets the higher NLL, AUROC 0.75 — but the scores below still separate the two
better or worse depending on the pair; measure, with ``chainrule detect``.) The other scores
correct for that:

- ``nll``: -log2 p(x) / D, bits per dimension (the baseline);
- ``likelihood-ratio`` (Ren et al. 2019, "Likelihood Ratios for Out-of-Distribution Detection",
  NeurIPS): -[log p(x) - log p_bg(x)] / (D ln 2), where the *background* model p_bg has the same
  architecture and is trained on perturbed inputs (:func:`perturb`, :func:`train_background`):
  it learns the population-level statistics (smoothness, background) but not the semantics, so
  the ratio cancels what both models find easy;
- ``input-complexity`` (Serrà et al. 2020, "Input complexity and out-of-distribution detection
  with likelihood-based generative models", ICLR): S(x) = NLL_bits(x) / D - L(x) / D with L(x) the
  code length in bits of x under a general-purpose lossless compressor (PNG by default; ``xz``,
  ``bz2`` on the raw bytes): how much better than a generic compressor the model codes x;
- ``typicality`` (Nalisnick et al. 2019b, "Detecting out-of-distribution inputs to deep
  generative models using typicality"): |NLL(x) - Ĥ| in bits/dim with Ĥ the mean NLL on
  held-out in-distribution data (an estimate of the entropy rate): in high dimension the samples
  of a model lie in its *typical set*, whose NLL is close to the entropy — an input *more* likely
  than typical is as suspicious as a less likely one. The paper's real proposal is the batch
  test :func:`typicality_test` on groups of M inputs, far more powerful than the per-example
  score for M >= 2.

Every score is ``(model, x, ...) -> (N,)`` float64 NumPy array, higher = more anomalous, in bits
per dimension; :data:`SCORES` holds them by name (:func:`compute_score`).

Metrics (:func:`auroc`, :func:`aupr`, :func:`fpr_at_95_tpr`, with scikit-learn) treat the
in-distribution inputs as negatives and the OOD inputs as positives; :func:`detection_metrics`
adds percentile-bootstrap 95% intervals (the two sets resampled separately, seeded).

Per-variable maps (:func:`nll_map`) show *where* an input is unusual: -log p(x_j | x_<j) for
every variable, in the event shape (figures: :func:`chainrule.apps.plotting.plot_nll_maps`).

Background models from the command line: ``chainrule detect RUN ... --score likelihood-ratio
--train-background 0.2`` trains one with the run's own model configuration and training settings
(``--background-epochs``, default 3) on the run's training data, perturbed afresh every epoch, and
saves it in ``RUN/background/`` (a run directory, reused by later calls); ``--background DIR``
uses any other run of the same shape trained on perturbed data.
"""

from __future__ import annotations

import bz2
import io
import lzma
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.inference.likelihood import EVAL_BATCH_SIZE, context_rows, per_example_nll
from chainrule.models import create_model
from chainrule.training import TrainConfig, Trainer

LN2 = math.log(2.0)

# ---------------------------------------------------------------------- helpers


def _bits_per_dim(nll_nats: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """nats per example ``(N,)`` -> bits per dimension ``(N,)`` float64."""
    return np.asarray(nll_nats, dtype=np.float64) / (dim * LN2)


def nll_bits_per_dim(model: ARModel, x: Any, context: Any = None, batch_size: int = EVAL_BATCH_SIZE,
                     progress: bool = False) -> np.ndarray:
    """-log2 p(x) / D for every example, ``(N, *shape)`` -> ``(N,)`` float64 (ensembles: the whole
    mixture)."""
    return _bits_per_dim(per_example_nll(model, x, context, batch_size, progress, desc="score").numpy(), model.dim)


# ---------------------------------------------------------------------- scores


def nll_score(model: ARModel, x: Any, *, context: Any = None, batch_size: int = EVAL_BATCH_SIZE, progress: bool = False) -> np.ndarray:
    """Negative log-likelihood in bits/dim, ``(N, *shape)`` -> ``(N,)`` float64: -log p(x) / (D ln 2)."""
    return nll_bits_per_dim(model, x, context, batch_size, progress)


def likelihood_ratio_score(model: ARModel, x: Any, *, background: Any, context: Any = None, batch_size: int = EVAL_BATCH_SIZE,
                           progress: bool = False) -> np.ndarray:
    """Ren et al. (2019): -[log p(x) - log p_bg(x)] / (D ln 2), bits/dim, ``(N,)`` float64.

    ``background``: a model of the same shape and values trained on perturbed inputs
    (:func:`train_background`); it is called with the same ``context``."""
    check_compatible(model, background, "the background model")
    return nll_bits_per_dim(model, x, context, batch_size, progress) - nll_bits_per_dim(
        background, x, context, batch_size, progress)


#: Compressors of :func:`code_length_bits`.
COMPRESSORS = ("png", "xz", "bz2")


def _as_bytes_array(v: np.ndarray, num_values: int | None) -> np.ndarray:
    """The smallest lossless integer type for discrete values (uint8 up to 256 values), float32 else."""
    if num_values is None:
        return v.astype(np.float32)
    if num_values <= 256:
        return v.astype(np.uint8)
    return v.astype(np.uint16 if num_values <= 65536 else np.int64)


def code_length_bits(x: Any, num_values: int | None, compressor: str = "png") -> np.ndarray:
    """Length in bits of each example compressed on its own, ``(N, *shape)`` -> ``(N,)`` float64.

    ``png``: images ``(N, C, H, W)``, C = 1 (grey) or 3 (RGB), of discrete values up to 256,
    written as 8-bit PNG with their values as they are (0..K-1; Pillow, ``optimize=True``;
    rescaling to 0..255 would hardly change the length, the filters and Huffman codes being
    invariant to relabelling the levels). ``xz`` (LZMA, preset 9 extreme) and ``bz2`` (level 9)
    compress the raw bytes of the values (uint8 up to 256 values, uint16 up to 65536, float32 for
    real values), row-major. Bits = 8 * bytes, container headers included: a constant offset (PNG:
    about 70 bytes) that does not change any ranking. On small binary images PNG (8 bits a pixel
    before deflate) is a poor estimate of complexity: for Fashion-MNIST vs MNIST thresholded, the
    input-complexity AUROC was 0.66 with png, 0.89 with xz and 0.92 with bz2 (NADE, measured).
    """
    if compressor not in COMPRESSORS:
        raise InputError(f"compressor must be one of {', '.join(COMPRESSORS)}, got {compressor!r}")
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim < 1 or len(a) == 0:
        raise InputError(f"code_length_bits expects a non-empty batch (N, *shape), got shape {a.shape}")
    out = np.empty(len(a), dtype=np.float64)
    if compressor == "png":
        from PIL import Image

        if a.ndim != 4 or a.shape[1] not in (1, 3):
            raise InputError(f"the png compressor needs images (N, 1 or 3, H, W), got shape {a.shape}; "
                             "use --compressor xz or bz2 for other data")
        if num_values is None or num_values > 256:
            raise InputError("the png compressor needs discrete images of at most 256 values; "
                             f"this data has {'real values' if num_values is None else f'{num_values} values'} "
                             "(use xz or bz2)")
        for i, img in enumerate(a):
            pixels = img.astype(np.uint8)
            pil = Image.fromarray(pixels[0], mode="L") if pixels.shape[0] == 1 else \
                Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB")
            buf = io.BytesIO()
            pil.save(buf, format="PNG", optimize=True)
            out[i] = 8.0 * len(buf.getvalue())
        return out
    pack = (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)) if compressor == "xz" else \
        (lambda b: bz2.compress(b, 9))
    for i, ex in enumerate(a):
        out[i] = 8.0 * len(pack(np.ascontiguousarray(_as_bytes_array(ex, num_values)).tobytes()))
    return out


def input_complexity_score(model: ARModel, x: Any, *, compressor: str = "png", context: Any = None,
                           batch_size: int = EVAL_BATCH_SIZE, progress: bool = False) -> np.ndarray:
    """Serrà et al. (2020): S(x) = NLL_bits(x) / D - L(x) / D, bits/dim, ``(N,)`` float64.

    L(x): the code length of x under ``compressor`` (:func:`code_length_bits`). A positive S means
    the model codes x worse than a generic compressor: likely OOD."""
    xv, _ = model.validate(x)
    return nll_bits_per_dim(model, xv, context, batch_size, progress) - \
        code_length_bits(xv.cpu(), model.num_values, compressor) / model.dim


def entropy_estimate(model: ARModel, reference: Any, context: Any = None, batch_size: int = EVAL_BATCH_SIZE,
                     progress: bool = False) -> float:
    """Ĥ: the mean NLL in bits/dim of held-out in-distribution data ``reference`` ``(M, *shape)``
    (e.g. the validation split), an estimate of the model's entropy rate."""
    return float(nll_bits_per_dim(model, reference, context, batch_size, progress).mean())


def typicality_score(model: ARModel, x: Any, *, reference: Any, context: Any = None, batch_size: int = EVAL_BATCH_SIZE,
                     progress: bool = False) -> np.ndarray:
    """Nalisnick et al. (2019b), per example: |NLL(x) - Ĥ| in bits/dim, ``(N,)`` float64.

    ``reference``: Ĥ itself (a number, bits/dim) or held-out in-distribution data ``(M, *shape)``
    (the validation split, not the training data the model has fitted) to take it from
    (:func:`entropy_estimate`; unconditional: no context is passed for it)."""
    if isinstance(reference, (int, float)) or np.ndim(reference) == 0:  # Ĥ itself
        h = float(reference)
    else:
        h = entropy_estimate(model, reference, None, batch_size)
    return np.abs(nll_bits_per_dim(model, x, context, batch_size, progress) - h)


@dataclass(frozen=True)
class TypicalityTest:
    """Result of :func:`typicality_test`: one row per group of M inputs."""

    statistic: np.ndarray  # (G,) |mean NLL of the group - Ĥ|, bits/dim
    threshold: float  # ε: the (1 - alpha) bootstrap quantile of the statistic on in-distribution groups
    is_ood: np.ndarray  # (G,) bool: statistic > threshold
    entropy_bits: float  # Ĥ, bits/dim
    group_size: int
    alpha: float


def group_statistic(nll_bits: np.ndarray, entropy_bits: float, group_size: int) -> np.ndarray:
    """|mean of each consecutive group of ``group_size`` NLLs - Ĥ|, ``(N,)`` -> ``(N // M,)``
    (a last incomplete group is dropped)."""
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise InputError(f"group_size must be a positive integer, got {group_size!r}")
    nll_bits = np.asarray(nll_bits, dtype=np.float64)
    g = len(nll_bits) // group_size
    if g == 0:
        raise InputError(f"{len(nll_bits)} inputs make no group of {group_size}")
    return np.abs(nll_bits[: g * group_size].reshape(g, group_size).mean(1) - entropy_bits)


def typicality_test_from_nll(nll_bits: np.ndarray, reference_nll_bits: np.ndarray, group_size: int,
                             alpha: float = 0.01, num_bootstrap: int = 1000, seed: int = 0,
                             entropy_bits: float | None = None) -> TypicalityTest:
    """The batch test of Nalisnick et al. (2019b) on precomputed NLLs (bits/dim).

    Ĥ = the mean of ``reference_nll_bits`` (held-out in-distribution data) unless ``entropy_bits``
    is given (the paper takes it from the training data). The threshold ε is the (1 - alpha)
    quantile of |mean of M reference NLLs drawn with replacement - Ĥ| over ``num_bootstrap``
    draws; a group of M consecutive inputs of ``nll_bits`` is declared OOD when its statistic
    exceeds ε (a test of level about alpha for in-distribution groups)."""
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha!r}")
    ref = np.asarray(reference_nll_bits, dtype=np.float64)
    if len(ref) == 0:
        raise InputError("typicality_test needs held-out in-distribution data (got 0 examples)")
    h = float(ref.mean()) if entropy_bits is None else float(entropy_bits)
    stat = group_statistic(nll_bits, h, group_size)
    rng = np.random.default_rng(seed)
    boot = np.abs(ref[rng.integers(0, len(ref), (num_bootstrap, group_size))].mean(1) - h)
    eps = float(np.quantile(boot, 1 - alpha))
    return TypicalityTest(stat, eps, stat > eps, h, group_size, alpha)


def typicality_test(model: ARModel, x: Any, reference: Any, group_size: int, alpha: float = 0.01,
                    num_bootstrap: int = 1000, seed: int = 0, batch_size: int = EVAL_BATCH_SIZE) -> TypicalityTest:
    """Nalisnick et al. (2019b): are groups of ``group_size`` inputs typical of the model?

    ``x`` ``(N, *shape)`` is cut into N // M consecutive groups; ``reference`` ``(R, *shape)`` is
    held-out in-distribution data (the validation split) for Ĥ and the bootstrap threshold
    (:func:`typicality_test_from_nll`)."""
    return typicality_test_from_nll(nll_bits_per_dim(model, x, None, batch_size),
                                    nll_bits_per_dim(model, reference, None, batch_size),
                                    group_size, alpha, num_bootstrap, seed)


@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: its function, one line of description, and the option it needs."""

    name: str
    fn: Callable[..., np.ndarray]
    description: str
    needs: str | None = None  # a required keyword: background, reference


#: The scores by name (higher = more anomalous; bits/dim).
SCORES: dict[str, ScoreSpec] = {
    "nll": ScoreSpec("nll", nll_score, "negative log-likelihood, bits/dim"),
    "likelihood-ratio": ScoreSpec("likelihood-ratio", likelihood_ratio_score,
                                  "NLL minus the NLL of a background model trained on perturbed data (Ren et al. 2019)",
                                  "background"),
    "input-complexity": ScoreSpec("input-complexity", input_complexity_score,
                                  "NLL minus a lossless compressor's code length, bits/dim (Serrà et al. 2020)"),
    "typicality": ScoreSpec("typicality", typicality_score,
                            "|NLL - mean validation NLL|, bits/dim (Nalisnick et al. 2019b)", "reference"),
}


def compute_score(name: str, model: ARModel, x: Any, **options: Any) -> np.ndarray:
    """The score ``name`` (see :data:`SCORES`) of every example of ``x`` ``(N, *shape)`` -> ``(N,)``.

    ``options``: ``context``, ``batch_size``, ``progress`` for all; ``background`` (a model) for
    likelihood-ratio; ``compressor`` for input-complexity; ``reference`` (Ĥ or data) for typicality."""
    if name not in SCORES:
        raise InputError(f"unknown score {name!r}; choices: {', '.join(SCORES)}")
    spec = SCORES[name]
    if spec.needs and options.get(spec.needs) is None:
        raise InputError(f"score {name!r} needs {spec.needs}=...")
    accepted = {"context", "batch_size", "progress"} | ({spec.needs} if spec.needs else set()) | \
        ({"compressor"} if name == "input-complexity" else set())
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(f"score {name!r}: unknown option(s) {', '.join(unknown)}; it accepts {', '.join(sorted(accepted))}")
    return spec.fn(model, x, **options)


def check_compatible(model: ARModel, other: Any, what: str) -> None:
    """``other`` models the same event shape and values as ``model``, else an InputError."""
    if tuple(other.shape) != tuple(model.shape) or other.num_values != model.num_values:
        raise InputError(f"{what} models shape {tuple(other.shape)} with num_values={other.num_values}; "
                         f"the model {tuple(model.shape)} with num_values={model.num_values}")


# ---------------------------------------------------------------------- per-variable maps


def nll_map(model: ARModel, x: Any, context: Any = None, bits: bool = True, batch_size: int = EVAL_BATCH_SIZE,
            member: int | None = None) -> np.ndarray:
    """-log p(x_j | the variables before x_j) for every variable, ``(N, *shape)`` -> ``(N, *shape)``
    float64, in bits (``bits=False``: nats). Each example's map sums to its NLL.

    Ensembles: the map of one member (``member``, default 0); a mixture's likelihood does not
    split into per-variable terms."""
    xv, _ = model.validate(x)
    if getattr(model, "num_members", 1) > 1 and member is None:
        member = 0
    extra = {} if member is None else {"member": member}
    n = len(xv)
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                lp = model.log_prob_per_variable(xv[start:stop], context_rows(context, slice(start, stop), n), **extra)
                out.append(-lp.double().cpu())
    finally:
        model.train(was_training)
    m = torch.cat(out).reshape(n, *model.shape).numpy() if out else np.zeros((0, *model.shape))
    return m / LN2 if bits else m


# ---------------------------------------------------------------------- background models (Ren et al.)


def perturb(x: torch.Tensor, num_values: int | None, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ren et al. (2019)'s input perturbation: each variable of ``x`` ``(N, *shape)`` is, with
    probability ``rate`` (independently), replaced by one of the *other* K - 1 values, uniformly.

    So ``rate`` is the fraction of values that change (drawing among all K values, as some code
    does, would change only rate * (K - 1) / K of them: half the rate on binary data). Values stay
    in 0..K-1 and the dtype is kept. Discrete data only."""
    if num_values is None:
        raise InputError("perturb needs discrete data (num_values=K): real-valued inputs have no 'other values'")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise InputError(f"the perturbation rate must be a number in [0, 1], got {rate!r}")
    x = torch.as_tensor(x)
    if num_values < 2:
        return x.clone()
    hit = torch.rand(x.shape, generator=generator) < rate
    shift = torch.randint(1, num_values, x.shape, generator=generator)
    return torch.where(hit.to(x.device), (x.long() + shift.to(x.device)) % num_values, x.long()).to(x.dtype)


def train_background(model_config: dict[str, Any] | Any, train_data: Any, rate: float,
                     trainer_config: TrainConfig | None = None, *, val_data: Any = None,
                     train_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
                     train_context: Any = None, val_context: Any = None, out_dir: str | Path | None = None,
                     extra: dict[str, Any] | None = None, progress: bool = False,
                     device: str | torch.device | None = None) -> Any:
    """Train Ren et al.'s background model: the same architecture and hyperparameters as the
    model of ``model_config`` (a model's ``.config`` dict, or the model itself), fitted with
    :class:`~chainrule.training.Trainer` on ``train_data`` ``(N, *shape)`` perturbed at ``rate``
    (:func:`perturb`, drawn afresh every epoch so the model cannot memorize one perturbation).

    ``val_data`` (optional, perturbed once with the config's seed) drives early stopping;
    ``train_transform``: the dataset's own transform (e.g. dynamic binarization), applied before
    the perturbation; ``out_dir``: where the trainer writes ``best/``, ``last/``, ``log.csv``
    (``extra`` is stored in the checkpoint with the rate). Ren et al. also regularize it with an
    L2 penalty: pass ``TrainConfig(weight_decay=...)``. Returns the trained model.
    """
    cfg = model_config.config if hasattr(model_config, "config") and not isinstance(model_config, dict) else model_config
    try:
        name, shape, k = cfg["model"], tuple(cfg["shape"]), cfg.get("num_values")
        hparams = dict(cfg.get("hyperparameters", {}))
    except (KeyError, TypeError):
        raise InputError("model_config must be a model's .config (keys model, shape, num_values, hyperparameters)") from None
    if k is None:
        raise InputError("a background model needs discrete data (num_values=K): perturb has no real-valued version")
    trainer_config = trainer_config or TrainConfig(epochs=10)
    torch.manual_seed(trainer_config.seed)  # the initial weights
    background = create_model(name, shape, k, **hparams)

    def transform(batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if train_transform is not None:
            batch = train_transform(batch, generator)
        return perturb(batch, k, rate, generator)

    val = None
    if val_data is not None and len(val_data):
        val = perturb(torch.as_tensor(val_data), k, rate, torch.Generator().manual_seed(trainer_config.seed + 7))
    trainer = Trainer(background, trainer_config, out_dir=out_dir,
                      extra={**(extra or {}), "perturb_rate": rate, "background": True}, progress=progress,
                      device=device)
    trainer.fit(train_data, val, train_transform=transform, train_context=train_context,
                val_context=val_context if val is not None else None)
    background.eval()
    return background


# ---------------------------------------------------------------------- metrics


def _labels_scores(in_scores: Any, out_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores): in-distribution = 0 (negatives), OOD = 1 (positives)."""
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    if len(a) == 0 or len(b) == 0:
        raise InputError(f"detection metrics need both in-distribution and OOD scores (got {len(a)} and {len(b)})")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("scores contain NaN or infinite values")
    return np.concatenate([np.zeros(len(a)), np.ones(len(b))]), np.concatenate([a, b])


def auroc(in_scores: Any, out_scores: Any) -> float:
    """Area under the ROC curve: P(score of an OOD input > score of an in-distribution one), ties
    counted one half. 1 = perfect separation, 0.5 = chance."""
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores(in_scores, out_scores)
    return float(roc_auc_score(y, s))


def aupr(in_scores: Any, out_scores: Any) -> float:
    """Area under the precision-recall curve with the OOD inputs as positives (average precision,
    the step-wise sum; its chance level is the fraction of OOD inputs)."""
    from sklearn.metrics import average_precision_score

    y, s = _labels_scores(in_scores, out_scores)
    return float(average_precision_score(y, s))


def fpr_at_95_tpr(in_scores: Any, out_scores: Any, tpr: float = 0.95) -> float:
    """The fraction of in-distribution inputs flagged when the threshold flags at least ``tpr``
    of the OOD inputs (the smallest such false-positive rate). Lower is better."""
    from sklearn.metrics import roc_curve

    y, s = _labels_scores(in_scores, out_scores)
    fpr, tprs, _ = roc_curve(y, s, drop_intermediate=False)  # every threshold: none skipped
    return float(fpr[np.searchsorted(tprs, tpr - 1e-12, side="left")])


#: The metrics of :func:`detection_metrics`, by name.
METRICS: dict[str, Callable[[Any, Any], float]] = {"auroc": auroc, "aupr": aupr, "fpr_at_95_tpr": fpr_at_95_tpr}


def bootstrap_interval(metric: Callable[[Any, Any], float], in_scores: Any, out_scores: Any,
                       num_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``metric(in, out)``: both sets resampled with replacement,
    separately (so every resample has both classes), ``num_resamples`` times from ``seed``."""
    if not isinstance(num_resamples, int) or num_resamples < 1:
        raise InputError(f"num_resamples must be a positive integer, got {num_resamples!r}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    _labels_scores(a, b)  # the same checks as the metric's
    rng = np.random.default_rng(seed)
    values = np.array([metric(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
                       for _ in range(num_resamples)])
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


@dataclass(frozen=True)
class Metric:
    """A point estimate with its bootstrap interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class DetectionResult:
    """Result of :func:`detection_metrics`. ``metrics``: auroc, aupr, fpr_at_95_tpr."""

    metrics: dict[str, Metric]
    num_in: int
    num_out: int
    level: float = 0.95
    num_resamples: int = 1000
    score: str = ""
    in_scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    out_scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]

    def lines(self) -> list[str]:
        pct = f"{100 * self.level:g}%"
        return [f"AUROC          {self.metrics['auroc']}",
                f"AUPR (OOD = positive) {self.metrics['aupr']}",
                f"FPR at 95% TPR {self.metrics['fpr_at_95_tpr']}",
                f"({pct} bootstrap intervals, {self.num_resamples} resamples; {self.num_in} in-distribution, "
                f"{self.num_out} OOD inputs)"]

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "num_in": self.num_in, "num_out": self.num_out, "level": self.level,
                **{k: {"value": m.value, "low": m.low, "high": m.high} for k, m in self.metrics.items()}}


def detection_metrics(in_scores: Any, out_scores: Any, num_resamples: int = 1000, level: float = 0.95,
                      seed: int = 0, score: str = "") -> DetectionResult:
    """AUROC, AUPR and FPR at 95% TPR with bootstrap intervals (in-distribution = negatives)."""
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    metrics = {name: Metric(f(a, b), *bootstrap_interval(f, a, b, num_resamples, level, seed))
               for name, f in METRICS.items()}
    return DetectionResult(metrics, len(a), len(b), level, num_resamples, score, a, b)


def detect(model: ARModel, x_in: Any, x_out: Any, score: str = "nll", num_resamples: int = 1000, seed: int = 0,
           **options: Any) -> DetectionResult:
    """Score in-distribution inputs ``x_in`` and OOD inputs ``x_out`` (each ``(N, *shape)``) with
    ``score`` (options as :func:`compute_score`; ``context`` is not split between the two sets)
    and measure how well the score tells them apart."""
    s_in = compute_score(score, model, x_in, **options)
    s_out = compute_score(score, model, x_out, **options)
    return detection_metrics(s_in, s_out, num_resamples, seed=seed, score=score)


def summary_statistics(scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """count, mean, std, min, quartiles and max of a score vector."""
    s = np.asarray(scores, dtype=np.float64)
    q = np.quantile(s, [0, 0.25, 0.5, 0.75, 1]) if len(s) else [math.nan] * 5
    return {"count": float(len(s)), "mean": float(s.mean()) if len(s) else math.nan,
            "std": float(s.std()) if len(s) else math.nan, "min": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "max": float(q[4])}
