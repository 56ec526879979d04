"""Linear probes of the features an autoregressive model learns (iGPT: Chen et al. 2020,
"Generative Pretraining from Pixels", section 3.3 and figure 3).

A *linear probe* freezes the model, takes the hidden features of one layer for every example,
pools them over the groups into one vector per example and fits a multinomial logistic regression
from that vector to the class label. Its accuracy on held-out data measures how linearly the class
can be read off the layer. iGPT found the best probes not at the last layer but in the middle of
the network: the first layers are still close to the pixels, the last ones specialise in
predicting the next pixel. A probe on the raw pixels (the flattened input scaled to [0, 1]), fit
the same way in the same run, is the baseline every layer is compared with.

- :func:`layer_count` / :func:`feature_layers`: the layers a model's ``features`` accepts.
- :func:`extract`: ``(N, F)`` pooled features of one layer; :func:`extract_layers`: several from one
  pass; :func:`pixels`: the raw-pixel baseline.
- :func:`fit_probe`: standardized features + logistic regression, ``C`` chosen on the validation split.
- :func:`probe`: every layer and the pixels of a labelled :class:`~chainrule.data.Dataset`, a :class:`ProbeResult`.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from chainrule.contract import ARModel
from chainrule.data.dataset import Dataset
from chainrule.errors import InputError

#: The inverse regularization strengths the probe tries; the validation split picks one.
DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
#: How :func:`extract` pools per-group features ``(B, G, F)`` into one vector per example; besides
#: these, ``"grid:S"`` averages over an S x S grid of image regions (S segments of a sequence).
POOLS: tuple[str, ...] = ("mean", "max")


def _grid_size(pool: str) -> int | None:
    """S of a ``"grid:S"`` pool (None for the global pools), or an InputError."""
    if pool in POOLS:
        return None
    head, _, size = pool.partition(":")
    if head == "grid" and size.isdigit() and int(size) >= 1:
        return int(size)
    raise InputError(f"pool must be one of {', '.join(POOLS)} or grid:S (S a positive integer: average over an "
                     f"S x S grid of regions), got {pool!r}")


def region_matrix(model: ARModel, size: int) -> torch.Tensor:
    """``(G, R)`` averaging weights of the G groups over R regions: the spatial axes of the event
    (H and W of a ``(C, H, W)`` or ``(H, W)`` image, the positions of a sequence) are cut into
    ``size`` equal bands each; a group belongs to the region of its first variable. Column r holds
    ``1 / (groups in r)`` for its groups, so ``features @ matrix`` is the mean per region."""
    shape = tuple(model.shape)
    axes = {1: (0,), 2: (0, 1), 3: (1, 2)}.get(len(shape))
    if axes is None:
        raise InputError(f"grid pooling needs a sequence, (H, W) or (C, H, W) event; {model.name} has shape {shape}")
    if any(size > shape[a] for a in axes):
        raise InputError(f"grid:{size} cuts axes of length {[shape[a] for a in axes]} into {size} bands; "
                         f"use at most {min(shape[a] for a in axes)}")
    first = model.groups.index[:, 0]  # (G,) the flat index of each group's first variable
    coords = torch.unravel_index(first, shape)
    region = torch.zeros_like(first)
    for a in axes:  # row-major over the bands of every spatial axis
        region = region * size + coords[a] * size // shape[a]
    onehot = torch.nn.functional.one_hot(region, size ** len(axes)).float()  # (G, R)
    return onehot / onehot.sum(0, keepdim=True)


# ---------------------------------------------------------------------- which model, which layers
def feature_model(model: ARModel) -> Any:
    """The module whose ``features`` a probe reads: the model itself, or an ensemble's single
    underlying model (its features at the model's own default order; the members share its
    weights). Raises :class:`InputError` for models without hidden states (fvsbn, histogram)."""
    inner = model.base_model
    if not callable(getattr(inner, "features", None)):
        raise InputError(f"model {getattr(inner, 'name', type(inner).__name__)!r} has no features (no hidden states: "
                         "fvsbn is logistic regressions on the inputs, the histogram a table); nothing to probe")
    return inner


def takes_layer(model: ARModel) -> bool:
    """Whether the model's ``features`` has a ``layer`` argument (every model with features here
    has one: NADE's single hidden layer is ``layer=0``; a user's model may take none)."""
    return "layer" in inspect.signature(feature_model(model).features).parameters


def _example(model: ARModel) -> tuple[torch.Tensor, Any]:
    """One valid input ``(1, *shape)`` (all zeros) and a matching context (label 0 / zeros) or None."""
    dtype = torch.long if model.num_values is not None else torch.float32
    x = torch.zeros((1, *model.shape), dtype=dtype, device=model.device)
    if model.num_classes:
        return x, torch.zeros(1, dtype=torch.long, device=model.device)
    if model.conditional:
        return x, torch.zeros((1, *model.context_shape), device=model.device)
    return x, None


#: Above this many layers :func:`layer_count` gives up (no model here comes close).
_MAX_LAYERS = 10_000


def layer_count(model: ARModel) -> int:
    """The number L of layers ``model.features(x, layer=l)`` accepts: the valid layers are
    ``0..L-1`` (negative ones count from the end). 1 for models whose features take no layer.

    Found by calling ``features`` on one all-zero example with ``layer = 0, 1, 2, ...`` until it
    refuses: robust to every model's own layout (embeddings first for the transformer, the first
    convolution for PixelCNN, MADE's hidden layers, ...) because it asks the code that decides,
    rather than re-deriving each structure or parsing error messages. The cost is L + 1 forward
    passes of a single example. Every model raises :class:`InputError` past the end (a user's own
    model that indexes a list and raises IndexError is caught the same way).
    """
    inner = feature_model(model)
    if not takes_layer(inner):
        return 1
    x, ctx = _example(inner)
    was_training = inner.training
    inner.eval()
    try:
        with torch.inference_mode():
            for layer in range(_MAX_LAYERS):
                try:
                    inner.features(x, ctx, layer=layer)
                except (InputError, IndexError):
                    return layer
    finally:
        inner.train(was_training)
    raise InputError(f"{inner.name}: features accepts more than {_MAX_LAYERS} layers; cannot enumerate them")


def feature_layers(model: ARModel) -> list[int]:
    """The valid layers of ``model.features`` in order, ``[0, ..., L-1]`` (see :func:`layer_count`)."""
    return list(range(layer_count(model)))


def _check_layer(layer: int | None, count: int, name: str) -> int | None:
    """``layer`` (None: the model's default) as an index in ``0..count-1``, or an InputError."""
    if layer is None:
        return None
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not -count <= layer < count:
        raise InputError(f"layer must be an integer in {-count}..{count - 1} ({name} has {count} feature "
                         f"layer{'s' if count != 1 else ''}), got {layer!r}")
    return int(layer) % count


# ---------------------------------------------------------------------- features
def extract(model: ARModel, data: torch.Tensor | np.ndarray, layer: int | None = None, batch_size: int = 256,
            pool: str = "mean", context: Any = None, progress: bool = False) -> np.ndarray:
    """The features of layer ``layer`` of every example, pooled to one vector each: ``(N, F)`` float32.

    Args:
        model: a model with ``features`` (or an ensemble over one, see :func:`feature_model`).
        data: ``(N, *shape)`` examples the model accepts.
        layer: which layer (see :func:`feature_layers`); None: the default of the model's
            ``features`` (usually the last hidden layer). Models whose features take no layer
            accept None, 0 or -1.
        batch_size: examples per forward pass.
        pool: per-group features ``(B, G, F)`` are pooled over the G groups: "mean" (iGPT's
            average pooling: every group's features, so the vector reads the whole input, since the
            features of group g only see the groups before it), "max", or "grid:S": the mean over
            each of S x S image regions (S segments of a sequence), concatenated, ``(B, S*S*F)``
            (:func:`region_matrix`), which keeps where a feature fired. One-vector-per-example
            features ``(B, F)`` (MADE) are taken as they are.
        context: the model's context for every example (``(N,)`` labels or ``(N, *context_shape)``),
            for conditional models; None otherwise.
        progress: show a progress bar over the batches.

    Runs in inference mode with the model in eval mode (restored afterwards); returns a CPU array.
    Several layers at once: :func:`extract_layers` (one forward pass for all of them).
    """
    return extract_layers(model, data, [layer], batch_size, pool, context, progress)[0]


def extract_layers(model: ARModel, data: torch.Tensor | np.ndarray, layers: Sequence[int | None], batch_size: int = 256,
                   pool: str = "mean", context: Any = None, progress: bool = False) -> list[np.ndarray]:
    """:func:`extract` for several layers from one forward pass per batch: a list of ``(N, F_l)``
    float32 arrays, one per entry of ``layers`` (in that order). The arguments are those of
    :func:`extract`; a probe of every layer costs one pass over the data instead of one per layer.
    """
    inner = feature_model(model)
    grid = _grid_size(pool)
    regions = None if grid is None else region_matrix(inner, grid).to(inner.device)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = list(layers)
    if not layers:
        raise InputError("layers is empty: give at least one layer")
    kwargs: dict[str, Any] = {}
    if takes_layer(inner):
        if any(l is None for l in layers):  # None: the model's own default
            default = inspect.signature(inner.features).parameters["layer"].default
            layers = [default if l is None else l for l in layers]
        kwargs["layer"] = layers  # the model checks the range itself (its message names it)
        picked = list(range(len(layers)))
    else:
        bad = [l for l in layers if l not in (None, 0, -1)]
        if bad:
            raise InputError(f"{inner.name}: features has one layer (it takes no layer argument); use layer 0, got {bad[0]!r}")
        picked = [0] * len(layers)  # every entry is the one layer
    x = torch.as_tensor(data)
    n = len(x)
    ctx = None if context is None else torch.as_tensor(context)
    if ctx is not None and ctx.dim() > 0 and len(ctx) != n:
        raise InputError(f"context has {len(ctx)} rows for {n} examples")

    def pooled(f: torch.Tensor) -> np.ndarray:
        if f.dim() == 3 and regions is not None:
            f = torch.einsum("bgf,gr->brf", f.float(), regions).flatten(1)
        elif f.dim() == 3:
            f = f.mean(1) if pool == "mean" else f.amax(1)
        elif f.dim() != 2:
            raise InputError(f"{inner.name}: features returned shape {tuple(f.shape)}, expected (B, G, F) or (B, F)")
        return f.float().cpu().numpy()

    out: list[list[np.ndarray]] = [[] for _ in layers]
    was_training = inner.training
    inner.eval()  # dropout off: a probe reads the deterministic features
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc="features", disable=not progress, leave=False):
                xb = x[start:start + batch_size].to(inner.device)
                cb = ctx if ctx is None or ctx.dim() == 0 else ctx[start:start + batch_size].to(inner.device)
                try:
                    fs = inner.features(xb, cb, **kwargs)
                except IndexError:  # a user's model that indexes its layers without checking the range
                    raise InputError(f"{inner.name}: layers {layers!r} are not all inside its {layer_count(inner)} "
                                     "feature layers") from None
                if not isinstance(fs, (list, tuple)):  # no layer argument: the one layer
                    fs = [fs]
                if len(fs) < max(picked) + 1:
                    raise InputError(f"{inner.name}: features(layer={layers!r}) returned {len(fs)} tensors, expected "
                                     f"one per layer")
                done = {i: pooled(fs[i]) for i in set(picked)}  # each returned layer pooled once
                for slot, i in enumerate(picked):
                    out[slot].append(done[i])
    finally:
        inner.train(was_training)
    if n == 0:
        return [np.zeros((0, 0), dtype=np.float32) for _ in layers]
    return [np.concatenate(o).astype(np.float32, copy=False) for o in out]


def pixels(data: torch.Tensor | np.ndarray, num_values: int | None) -> np.ndarray:
    """The raw-pixel baseline: ``(N, *shape)`` -> ``(N, D)`` float32, discrete values ``0..K-1``
    scaled to [0, 1] by ``1 / (K - 1)``; real-valued data as they are."""
    x = torch.as_tensor(data).reshape(len(data), -1).double()
    if num_values is not None and num_values > 1:
        x = x / (num_values - 1)
    return x.float().numpy()


# ---------------------------------------------------------------------- the probe
@dataclass(frozen=True)
class ProbeRow:
    """One linear probe: which features, how many, and its accuracies (fractions in [0, 1]).

    ``layer`` is None for the raw pixels. ``C`` is the inverse L2 strength the validation split chose;
    ``converged`` is False when L-BFGS stopped at ``max_iter`` for that C."""

    layer: int | None
    num_features: int
    C: float
    train_accuracy: float
    val_accuracy: float
    test_accuracy: float
    converged: bool

    @property
    def name(self) -> str:
        return "pixels" if self.layer is None else f"layer {self.layer}"


@dataclass(frozen=True)
class ProbeResult:
    """Probes of every layer asked for, plus the raw-pixel baseline, on one dataset.

    ``rows`` are in layer order; :attr:`best` is the layer with the highest validation accuracy
    (the choice a person could make without looking at the test split)."""

    model: str
    dataset: str
    rows: list[ProbeRow]
    baseline: ProbeRow
    num_classes: int
    num_train: int
    num_val: int
    num_test: int
    pool: str
    Cs: tuple[float, ...] = field(default=DEFAULT_CS)

    @property
    def best(self) -> ProbeRow:
        """The layer with the highest validation accuracy (ties: the earlier layer)."""
        return max(self.rows, key=lambda r: (r.val_accuracy, -(r.layer or 0)))

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "num_classes": self.num_classes,
                "num_train": self.num_train, "num_val": self.num_val, "num_test": self.num_test,
                "pool": self.pool, "Cs": list(self.Cs), "chance": self.chance,
                "best_layer": self.best.layer, "baseline": asdict(self.baseline),
                "layers": [asdict(r) for r in self.rows]}

    def lines(self) -> list[str]:
        """The table a person reads: one line per layer, the baseline, the best layer marked."""
        best = self.best.layer
        out = [f"linear probes of {self.model} on {self.dataset}: {self.num_classes} classes (chance "
               f"{100 * self.chance:.1f}%), trained on {self.num_train} examples, C chosen on {self.num_val} "
               f"validation examples, tested on {self.num_test}; features {self.pool}-pooled over the groups",
               f"{'layer':>8s} {'features':>9s} {'C':>6s} {'val acc':>8s} {'test acc':>9s}"]
        for r in [*self.rows, self.baseline]:
            mark = "  <- best (val)" if r.layer is not None and r.layer == best else ""
            note = "  (not converged)" if not r.converged else ""
            out.append(f"{r.layer if r.layer is not None else 'pixels':>8} {r.num_features:>9d} {r.C:>6g} "
                       f"{100 * r.val_accuracy:>7.2f}% {100 * r.test_accuracy:>8.2f}%{mark}{note}")
        return out


def fit_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], Cs: Sequence[float] = DEFAULT_CS, max_iter: int = 2000,
              layer: int | None = None, seed: int = 0) -> ProbeRow:
    """Fit a multinomial logistic regression on standardized ``(features (N, F), labels (N,))``.

    The features are standardized (:class:`~sklearn.preprocessing.StandardScaler`, fit on
    ``train``), which puts every layer on one scale, so one grid of C fits all. For every ``C`` in
    ``Cs``, smallest first, a :class:`~sklearn.linear_model.LogisticRegression` (L-BFGS,
    multinomial loss) is fit on ``train``, starting from the previous C's solution (a warm start:
    the regularization path costs little more than its last fit); the C with the best ``val``
    accuracy (ties: the smaller C, the simpler model) is kept and measured on ``test``.
    """
    from sklearn.exceptions import ConvergenceWarning  # lazy: scikit-learn is slow to import
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not Cs or any(not isinstance(c, (int, float)) or not c > 0 or not math.isfinite(c) for c in Cs):
        raise InputError(f"Cs must be positive finite numbers, got {list(Cs)!r}")
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    if len(np.unique(ytr)) < 2:
        raise InputError(f"the probe's training labels hold {len(np.unique(ytr))} class; it needs at least 2 "
                         "(raise max_train)")
    scaler = StandardScaler().fit(xtr)
    xtr, xva, xte = (scaler.transform(v) for v in (xtr, xva, xte))
    clf = LogisticRegression(max_iter=max_iter, random_state=seed, warm_start=True)
    best: tuple[float, float, Any, bool] | None = None
    for c in sorted(Cs):
        clf.set_params(C=c)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.fit(xtr, ytr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        acc = float((clf.predict(xva) == yva).mean())
        if best is None or acc > best[0]:  # strict: ties keep the smaller C
            best = (acc, c, copy.deepcopy(clf), converged)  # a copy: the next C's fit moves clf on
    acc, c, kept, converged = best  # type: ignore[misc]
    return ProbeRow(layer=layer, num_features=int(xtr.shape[1]), C=float(c),
                    train_accuracy=float((kept.predict(xtr) == ytr).mean()), val_accuracy=acc,
                    test_accuracy=float((kept.predict(xte) == yte).mean()), converged=converged)


def probe(model: ARModel, ds: Dataset, layers: Sequence[int] | None = None, max_train: int | None = None,
          batch_size: int = 256, pool: str = "mean", Cs: Sequence[float] = DEFAULT_CS, max_iter: int = 2000,
          seed: int = 0, progress: bool = False, report: Callable[[str], None] | None = None) -> ProbeResult:
    """Linear probes of ``model``'s features on the labelled dataset ``ds`` (iGPT, Chen et al. 2020).

    For every layer in ``layers`` (default: all, see :func:`feature_layers`; negative ones count from
    the end) the pooled features of the train / val / test splits (:func:`extract`) go through
    :func:`fit_probe`; the raw pixels (:func:`pixels`) are probed the same way as the baseline.

    Args:
        max_train: probe on a random subset of this many training examples (seeded by ``seed``;
            features of 50k images are big); validation and test splits are used whole. The
            features of every chosen layer come from one pass and are held together: about
            ``4 * N * F * len(layers)`` bytes (50k + 20k MNIST images, 4 layers of 3,136: 3.5 GB);
            ``layers`` and ``max_train`` bound it.
        report: called with a line after each probe (e.g. ``print``), for long runs.

    The training split is taken as the model saw it: a dataset's ``train_transform`` (dynamic
    binarization) is drawn once with seed 0, as the evaluation commands do. Class-conditional
    models are refused: their features read the label, so a probe would measure the label itself.
    Raises :class:`InputError` for unlabelled data, models without features, a dataset of another
    shape than the model's, or layers out of range.
    """
    inner = feature_model(model)
    if ds.num_classes is None or ds.train_labels is None:
        raise InputError(f"probing needs labels: dataset {ds.name!r} has none (use a labelled dataset, e.g. "
                         "digits, mnist, fashion-mnist, cifar10)")
    if inner.conditional:
        raise InputError(f"{inner.name} is conditional: its features read the context (the label, for a "
                         "class-conditional model), so a probe would measure the context; probe an unconditional run")
    if tuple(ds.shape) != tuple(inner.shape):
        raise InputError(f"dataset {ds.name!r} has examples of shape {tuple(ds.shape)}; the model takes {tuple(inner.shape)}")
    _grid_size(pool)  # a bad pool is an error before any feature is computed
    if max_train is not None and (not isinstance(max_train, int) or isinstance(max_train, bool) or max_train < 1):
        raise InputError(f"max_train must be a positive integer (or None: the whole training split), got {max_train!r}")
    count = layer_count(inner)
    chosen = list(range(count)) if layers is None else [_check_layer(l, count, inner.name) for l in layers]
    chosen = list(dict.fromkeys(chosen))  # each layer once, in the order asked
    if not chosen:
        raise InputError("layers is empty: give at least one layer (or None: all of them)")

    xtr, ytr = ds.split("train")
    if max_train is not None and max_train < len(xtr):
        keep = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:max_train].sort().values
        xtr, ytr = xtr[keep], ytr[keep]
    if ds.train_transform is not None:  # e.g. dynamic binarization: one draw, as the model would see it
        xtr = ds.train_transform(xtr, torch.Generator().manual_seed(0))
    splits = {"train": (xtr, ytr), "val": ds.split("val"), "test": ds.split("test")}
    labels = {s: torch.as_tensor(y).long().numpy() for s, (_, y) in splits.items()}

    def run(layer: int | None, feats: dict[str, np.ndarray]) -> ProbeRow:
        row = fit_probe(*[(feats[s], labels[s]) for s in ("train", "val", "test")], Cs=Cs, max_iter=max_iter,
                        layer=layer, seed=seed)
        if report is not None:
            report(f"{row.name}: {row.num_features} features, val {100 * row.val_accuracy:.2f}%, "
                   f"test {100 * row.test_accuracy:.2f}% (C={row.C:g})")
        return row

    baseline = run(None, {s: pixels(x, ds.num_values) for s, (x, _) in splits.items()})
    # one forward pass per split gives every layer's features (the big arrays: 50k x S*S*F per layer)
    args = chosen if takes_layer(inner) else [None]
    feats = {s: extract_layers(inner, x, args, batch_size, pool, progress=progress) for s, (x, _) in splits.items()}
    rows = []
    for i, layer in enumerate(chosen):
        rows.append(run(layer, {s: f[i] for s, f in feats.items()}))
        for f in feats.values():
            f[i] = None  # type: ignore[call-overload]  # free a layer once probed
    return ProbeResult(model=inner.name, dataset=ds.name, rows=rows, baseline=baseline, num_classes=int(ds.num_classes),
                       num_train=len(xtr), num_val=len(splits["val"][0]), num_test=len(splits["test"][0]), pool=pool,
                       Cs=tuple(float(c) for c in Cs))
