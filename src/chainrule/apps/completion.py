"""Completion of a partially observed input: draw the hidden variables given the observed ones.

For an example x and a boolean mask (True = observed) this draws completions

    x_h ~ p(x_h | x_o, c)        (h: the hidden variables, o: the observed ones, c: an optional label)

through the one sampling loop (:func:`chainrule.inference.sampling.sample` with ``observed=``), so
the observed values are kept exactly and the rest is drawn from the model's own conditional:

- models that take any order (``any_order``: nade, made, fvsbn, mlp, ...) accept **any** observed
  subset: the loop puts the observed groups first in the order and samples the others after them.
  The conditional is exact for the order it uses; it is a *good* one when the model was trained
  over many orders (an order-agnostic ensemble, e.g. ``nade -p num_orders=8``) — a single model
  trained in one order was never trained to predict from other subsets.
- models with a fixed order (transformer, rnn, pixelcnn, ...) can only condition on a **prefix**
  of their order; on images in raster order that is a raster prefix: the first rows, and the start
  of the next row (``top-half``). Other masks raise :class:`~chainrule.errors.InputError`.
- ensembles (members = orders or MADE masks) complete from the exact conditional of the mixture of
  their members as the sampling loop runs them (any-order members in their observed-first order):
  each completion first picks a member m with probability p(m | x_o) ∝ p_m(x_o), then draws from
  member m (``member=k`` draws from one member only).

Edge cases (documented choices): an all-observed example returns copies of itself (nothing to
draw); an empty mask gives plain samples of the model. Values at hidden positions are ignored (they
may be placeholders such as -1 or NaN).

Masks for the command line (:func:`load_mask`): a ``.npy`` or PNG file, or a name
(:func:`named_mask`): ``top-half``, ``bottom-half``, ``left-half``, ``right-half`` (that half
*observed*), ``center`` (a centred square *hidden*, the rest observed), ``random:P`` (each pixel
observed with probability P). On images ``(C, H, W)`` the named masks mark whole pixels (all
channels), so they also fit models that predict the channels of a pixel jointly
(``group_shape="pixel"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.inference.likelihood import group_log_probs
from chainrule.inference.sampling import sample
from chainrule.models.registry import get_model_class, list_models
from chainrule.orderings import make_ordering, observed_first

#: The mask names :func:`named_mask` knows (``random:P`` with a probability P in [0, 1]).
MASK_NAMES: tuple[str, ...] = ("top-half", "bottom-half", "left-half", "right-half", "center", "random:P")

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------- masks
def named_mask(name: str, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A named observation mask of the event ``shape``, bool, True = observed.

    Names (:data:`MASK_NAMES`): ``top-half`` / ``bottom-half`` (the first / last ``H // 2`` rows
    observed), ``left-half`` / ``right-half`` (the first / last ``W // 2`` columns observed),
    ``center`` (a centred ``H // 2`` x ``W // 2`` square hidden, the rest observed), ``random:P``
    (each pixel observed with probability P, drawn with ``seed``).

    Shapes: images ``(C, H, W)`` (whole pixels: every channel of a pixel shares its entry, so the
    mask also fits pixel-grouped models), 2-D ``(H, W)``, and 1-D ``(T,)`` for ``left-half`` /
    ``right-half`` (the first / last ``T // 2`` positions) and ``random:P``.
    """
    shape = tuple(int(s) for s in shape)
    if not isinstance(name, str):
        raise InputError(f"a mask name must be a string, got {type(name).__name__}")
    if len(shape) not in (1, 2, 3):
        raise InputError(f"named masks need events of shape (T,), (H, W) or (C, H, W); got {shape}")
    if len(shape) == 1:
        plane = (1, shape[0])  # a sequence is one row: left/right = first/last positions
    else:
        plane = shape[-2:]
    h, w = plane
    m = torch.zeros(h, w, dtype=torch.bool)
    kind, _, arg = name.partition(":")
    if kind == "random":
        try:
            p = float(arg)
        except ValueError:
            raise InputError(f"mask {name!r}: expected random:P with a probability P in [0, 1], e.g. random:0.3") from None
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise InputError(f"mask {name!r}: P must lie in [0, 1], got {p}")
        m = torch.rand(h, w, generator=torch.Generator().manual_seed(int(seed))) < p
    elif arg:
        raise InputError(f"unknown mask {name!r}; expected one of {', '.join(MASK_NAMES)}, a .npy file or a PNG")
    elif len(shape) == 1 and kind in ("top-half", "bottom-half", "center"):
        raise InputError(f"mask {name!r} needs 2-D or image events (C, H, W); for a sequence of shape {shape} use "
                         "left-half (the first half observed), right-half or random:P")
    elif kind == "top-half":
        m[: h // 2] = True
    elif kind == "bottom-half":
        m[h - h // 2:] = True
    elif kind == "left-half":
        m[:, : w // 2] = True
    elif kind == "right-half":
        m[:, w - w // 2:] = True
    elif kind == "center":
        ch, cw = max(1, h // 2), max(1, w // 2)
        top, left = (h - ch) // 2, (w - cw) // 2
        m[:] = True
        m[top:top + ch, left:left + cw] = False
    else:
        raise InputError(f"unknown mask {name!r}; expected one of {', '.join(MASK_NAMES)}, a .npy file or a PNG")
    if len(shape) == 1:
        return m[0]
    return m.expand(*shape).clone() if len(shape) == 3 else m


def load_mask(spec: str | Path, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A mask from the command line: a name (:func:`named_mask`), a ``.npy`` file (bool or 0/1, of
    the event ``shape``, ``(N, *shape)``, or ``(H, W)`` for images), or a PNG (non-zero =
    observed; ``(H, W)`` pixels, applied to every channel). Returns bool ``shape`` or ``(N, *shape)``."""
    shape = tuple(int(s) for s in shape)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix == ".npy" or suffix in _IMAGE_SUFFIXES:
        if not path.is_file():
            raise InputError(f"mask file {path} does not exist")
        if suffix == ".npy":
            from chainrule.data import read_npy  # never unpickles; one-line errors

            try:
                a = read_npy(path, InputError)
            except InputError as exc:
                raise InputError(f"mask {exc}") from None
        else:
            a = (_read_image(path, None) != 0).any(0)  # (H, W): a pixel with any non-zero channel
        m = _as_bool_mask(torch.from_numpy(np.ascontiguousarray(a)), f"mask {path}")
        if len(shape) == 3 and tuple(m.shape) == shape[1:]:
            m = m.expand(*shape).clone()  # pixels: every channel
        return m
    return named_mask(str(spec), shape, seed)


def _as_bool_mask(mask: Any, what: str = "mask") -> torch.Tensor:
    """A boolean tensor from a bool or 0/1 array; anything else is an error."""
    try:
        m = torch.as_tensor(mask)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{what} must be a boolean (or 0/1) array, True = observed; got {type(mask).__name__}") from None
    if m.dtype == torch.bool:
        return m
    if m.is_complex() or not (m.numel() == 0 or bool(((m == 0) | (m == 1)).all())):
        raise InputError(f"{what} must be boolean or hold only 0 and 1 (1 = observed); got dtype {m.dtype}"
                         + ("" if m.is_complex() or m.numel() == 0 else f" with values from {float(m.min()):g} to {float(m.max()):g}"))
    return m != 0


def _order_is_raster(model: ARModel, order: torch.Tensor) -> bool:
    return bool(torch.equal(order.cpu(), make_ordering("raster", model.groups.grid)))


def _any_order_models() -> str:
    names = [n for n in list_models() if get_model_class(n).any_order]
    return ", ".join(names)


def check_mask(model: ARModel, mask: Any, n: int, member: int | None = None) -> torch.Tensor:
    """Check a mask for ``n`` examples and return it as bool ``(n, *shape)`` on the model's device.

    ``mask``: bool or 0/1, the event shape (the same for every example) or ``(n, *shape)``. It must
    cover whole groups (pixel-grouped models) and, for models with a fixed order, be a prefix of
    that order (of every member, for an ensemble, unless ``member`` picks one).
    """
    shape = tuple(model.shape)
    m = _as_bool_mask(mask)
    if tuple(m.shape) == shape:
        m = m.expand(n, *shape)
    elif m.dim() == len(shape) + 1 and m.shape[0] == 1 and tuple(m.shape[1:]) == shape:
        m = m.expand(n, *shape)
    if tuple(m.shape) != (n, *shape):
        raise InputError(f"mask: expected shape {shape} (the same for every example) or ({n}, "
                         f"{', '.join(map(str, shape))}) (one per example), got {tuple(m.shape)}")
    m = m.to(model.device)
    try:
        gmask = model.groups.group_mask(m.reshape(n, -1))  # (n, G)
    except InputError as exc:
        raise InputError(f"mask: {exc}; {model.name!r} predicts the {model.group_size} variables of a group "
                         f"(group_shape={model.groups.group_shape}) jointly, so mark whole pixels (the named masks do)") from None
    if not model.any_order:
        members = range(getattr(model, "num_members", 1)) if member is None else [member]
        patterns, first = _unique_rows(gmask)
        for pattern, i in zip(patterns, first):
            k = int(pattern.sum())
            for mem in members:
                base = model.resolve_order(member=mem) if getattr(model, "num_members", 1) > 1 else model.resolve_order()
                if bool(pattern[base[:k]].all()) and not bool(pattern[base[k:]].any()):
                    continue
                which = "the mask" if n == 1 or bool((gmask == pattern).all()) else f"the mask of example {i}"
                if len(shape) == 3 and _order_is_raster(model, base):
                    supported = ("a raster prefix: the first rows, and the start of the next row, in the model's "
                                 "order (e.g. top-half)")
                else:
                    supported = "a prefix of its order (the first variables it generates)"
                raise InputError(f"{model.name!r} reads its variables in a fixed order, so it can only condition on "
                                 f"{supported}; {which} observes {k} groups that are not the first {k} in its order. "
                                 f"Models that take any order ({_any_order_models()}), best trained "
                                 "order-agnostic (e.g. -p num_orders=8), accept any observed subset")
    return m


def _unique_rows(gmask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The distinct rows of ``(n, G)`` and the index of the first example with each."""
    patterns, which = torch.unique(gmask, dim=0, return_inverse=True)
    first = [int((which == p).nonzero()[0]) for p in range(len(patterns))]
    return patterns, first


def is_prefix_of_order(model: ARModel, mask: torch.Tensor, member: int | None = None) -> bool:
    """True when every example's observed groups in ``mask`` ``(n, *shape)`` are the first groups
    of the model's own order (member ``member``'s, or member 0's): the conditioning it was trained for."""
    n = mask.shape[0]
    gmask = model.groups.group_mask(mask.reshape(n, -1).to(model.device))
    base = model.resolve_order(member=member or 0) if getattr(model, "num_members", 1) > 1 else model.resolve_order()
    for pattern in torch.unique(gmask, dim=0):
        k = int(pattern.sum())
        if not (bool(pattern[base[:k]].all()) and not bool(pattern[base[k:]].any())):
            return False
    return True


# ---------------------------------------------------------------------- completion
def complete(model: ARModel, x: Any, mask: Any, num_completions: int = 4, context: Any = None,
             generator: torch.Generator | None = None, temperature: float = 1.0,
             member: int | None = None) -> torch.Tensor:
    """Draw ``num_completions`` completions of each partially observed example.

    Args:
        model: a chainrule model (or ensemble).
        x: ``(N, *shape)`` examples, or one example ``(*shape)``; values at hidden positions are
            ignored (placeholders such as -1 or NaN are fine).
        mask: bool (or 0/1), True = observed: the event ``shape`` (the same for every example) or
            ``(N, *shape)`` (one per example). See the module docstring for which masks a model takes.
        num_completions: M, completions per example.
        context: a conditional model's class label (one for all, or ``(N,)``) or context tensor.
        generator: a ``torch.Generator`` on the model's device, for reproducible draws.
        temperature: decoding temperature for discrete data (1 = the model's own conditional).
        member: for an ensemble, draw from this member only (default: the mixture's conditional).

    Returns:
        ``(N, M, *shape)`` on the model's device (N = 1 for a single example): observed values
        equal ``x`` exactly; an all-observed example gives M copies, an empty mask plain samples.

    Raises:
        InputError: a mask of the wrong shape or not 0/1, one that splits a pixel of a pixel-grouped
            model, or one that is not a prefix of the order of a fixed-order model.
    """
    if not isinstance(num_completions, int) or isinstance(num_completions, bool) or num_completions < 1:
        raise InputError(f"num_completions must be a positive integer, got {num_completions!r}")
    shape = tuple(model.shape)
    try:
        xs = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"x must be an array of shape {shape} or (N, {', '.join(map(str, shape))}), "
                         f"got {type(x).__name__}") from None
    if tuple(xs.shape) == shape:
        xs = xs.unsqueeze(0)
    if xs.dim() != len(shape) + 1 or tuple(xs.shape[1:]) != shape or xs.shape[0] == 0:
        raise InputError(f"x: expected one example of shape {shape} or a batch (N, {', '.join(map(str, shape))}) "
                         f"with N >= 1, got {tuple(xs.shape)}")
    n, k = xs.shape[0], num_completions
    m = check_mask(model, mask, n, member)
    # Hidden values are never read: zero them so placeholders pass the model's value checks.
    xs = xs.to(model.device)
    values, _ = model.validate(torch.where(m, xs, torch.zeros((), dtype=xs.dtype, device=xs.device)))
    ctx = model.normalize_context(context, n)
    out = values.unsqueeze(1).repeat(1, k, *([1] * len(shape)))  # all-observed examples stay copies
    full = m.reshape(n, -1).all(1)
    todo = (~full).nonzero().squeeze(-1)
    if todo.numel() == 0:
        return out
    # One batched call: rows of the same pattern are drawn together by the sampling loop.
    rows = todo.repeat_interleave(k)
    vals, msk = values[rows], m[rows]
    rctx = None if ctx is None else ctx[rows]
    if getattr(model, "num_members", 1) > 1 and member is None:
        drawn = _complete_mixture(model, vals, msk, rctx, generator, temperature)
    else:
        extra = {} if member is None else {"member": member}
        drawn = sample(model, len(rows), rctx, generator, observed=(vals, msk), temperature=temperature, **extra)
    out[todo] = drawn.reshape(len(todo), k, *shape).to(out.dtype)
    return out


def _complete_mixture(model: ARModel, vals: torch.Tensor, msk: torch.Tensor, ctx: torch.Tensor | None,
                      generator: torch.Generator | None, temperature: float) -> torch.Tensor:
    """Completions ``(R, *shape)`` from an ensemble's mixture: member m with probability
    p(m | x_o) ∝ p_m(x_o), then from member m's conditional. For any-order members p_m is the
    member under the observed-first order the sampling loop uses, whose first steps are exactly
    the observed groups, so log p_m(x_o) is the sum of their conditionals."""
    r, k = vals.shape[0], model.num_members
    gmask = model.groups.group_mask(msk.reshape(r, -1))  # (R, G)
    logw = torch.zeros(r, k, device=vals.device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            patterns, which = torch.unique(gmask, dim=0, return_inverse=True)
            for p, pattern in enumerate(patterns):
                idx = (which == p).nonzero().squeeze(-1)
                for mem in range(k):
                    call: dict[str, Any] = {"member": mem}
                    if model.any_order:
                        call["order"] = observed_first(pattern, model.resolve_order(member=mem))
                    glp = group_log_probs(model, vals[idx], None if ctx is None else ctx[idx], **call)  # (r_p, G)
                    logw[idx, mem] = torch.where(pattern, glp, torch.zeros_like(glp)).sum(-1)
    finally:
        model.train(was_training)
    # observed values impossible under every member (-inf everywhere): fall back to uniform weights
    logw = torch.nan_to_num(logw, nan=-1e30, neginf=-1e30)
    chosen = torch.multinomial(torch.softmax(logw, -1), 1, generator=generator).squeeze(-1)
    out = torch.zeros_like(vals)
    for mem in range(k):
        idx = (chosen == mem).nonzero().squeeze(-1)
        if idx.numel():
            out[idx] = sample(model, idx.numel(), None if ctx is None else ctx[idx], generator,
                              observed=(vals[idx], msk[idx]), temperature=temperature, member=mem).to(out.dtype)
    return out


# ---------------------------------------------------------------------- inputs
def _read_image(path: Path, channels: int | None) -> np.ndarray:
    """An image file as uint8 ``(C, H, W)``: grey (C=1) or RGB (C=3) when ``channels`` says so,
    else as stored (grey stays grey, anything else RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if img.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
            a = np.asarray(img.convert(mode))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: cannot read as an image ({exc})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_images(paths: Sequence[str | Path], shape: Sequence[int], num_values: int | None) -> torch.Tensor:
    """Image files as a batch ``(N, C, H, W)`` of a discrete image model's values: 8-bit
    intensities mapped to 0..K-1 (K = 2: threshold at 128)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise InputError(f"image inputs need an image model (shape (1 or 3, H, W)); this model's shape is {shape}")
    if num_values is None:
        raise InputError("image inputs need a discrete model; for a real-valued model give the values as a .npy array")
    out = []
    for p in paths:
        a = _read_image(Path(p), shape[0])
        if a.shape != shape:
            raise InputError(f"{p}: image is {a.shape[2]}x{a.shape[1]} pixels (width x height), the model's images "
                             f"{shape[2]}x{shape[1]}")
        v = a.astype(np.int64)
        if num_values == 2:
            v = (v >= 128).astype(np.int64)
        elif num_values != 256:
            v = np.rint(v * (num_values - 1) / 255.0).astype(np.int64)
        out.append(v)
    return torch.from_numpy(np.stack(out))


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in _IMAGE_SUFFIXES
