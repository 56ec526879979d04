"""Looking inside a model: the conditional of every variable for one input, as numbers and a figure.

For an input x this gives, per variable j (in the data's layout):

- ``prob_one``: p(x_j = 1 | x_<j) for binary data (the NADE paper's figure), else the conditional
  mean E[x_j | x_<j] (in value units);
- ``prob_observed``: the probability (density for real data) the model gave the observed x_j;
- ``nll``: -log p(x_j | x_<j), nats — where the model is surprised;
- ``step``: at which step of the ordering x_j is generated.

For a text model the same numbers are shown on the text itself (:func:`inspect_text`): every
character (token) coloured by its surprisal -log2 p(x_i | x_<i) in bits, as a PNG of monospace
lines with a colour bar (:func:`plot_text_surprisal`) or an HTML page whose spans carry the bits
(:func:`write_text_surprisal_html`).
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chainrule.apps.plotting import save_figure
from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.inference.likelihood import log_prob_per_variable, token_unit
from chainrule.orderings import inverse


@dataclass(frozen=True)
class Inspection:
    """Per-variable maps for one input, each of the event shape."""

    x: torch.Tensor
    prob_one: torch.Tensor  # binary: p(x_j = 1 | x_<j); otherwise E[x_j | x_<j]
    prob_observed: torch.Tensor
    nll: torch.Tensor
    step: torch.Tensor

    @property
    def total_nll_nats(self) -> float:
        return float(self.nll.sum())


@torch.no_grad()
def inspect_example(model: ARModel, x: torch.Tensor, context: Any = None,
                    member: int | None = None) -> Inspection:
    """Per-variable conditionals of ``model`` for one example ``x`` ``(*shape)`` (an ensemble:
    member ``member``, default 0)."""
    model.eval()
    xb, _ = model.validate(x.unsqueeze(0) if tuple(x.shape) == model.shape else x)
    if len(xb) != 1:
        raise InputError(f"inspect_example takes one example of shape {model.shape}, got {tuple(x.shape)}")
    call = {"member": member or 0} if model.num_members > 1 else {}
    dist = model.head(model(xb, context, **call))  # batch shape (1, G)
    xg = model.groups.gather(xb.reshape(1, -1))
    lp = model.groups.scatter(dist.log_prob_per_variable(xg))[0]  # (D,)
    first = model.groups.scatter(dist.mean())[0]  # for binary data E[x_j] = p(x_j = 1)
    shape = model.shape
    step = inverse(model.resolve_order(**call))[model.groups.group_of.to(xb.device)]  # each variable's group's step
    return Inspection(x=xb[0].cpu(), prob_one=first.reshape(shape).cpu(), prob_observed=lp.exp().reshape(shape).cpu(),
                      nll=(-lp).reshape(shape).cpu(), step=step.reshape(shape).cpu())


def plot_inspection(ins: Inspection, path: str | Path, num_values: int | None, title: str = "") -> Path:
    """Save a figure: the input, the conditional map, p(observed) and per-variable NLL, side by side.

    Images ``(C, H, W)`` are shown per channel 0 as pictures; vectors as bar-like strips.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def as_2d(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        if t.dim() == 3:
            return t[0]
        if t.dim() == 2:
            return t
        return t.reshape(1, -1)

    binary = num_values == 2
    panels = [("input x", ins.x, "gray"),
              ("p(x_j = 1 | x_<j)" if binary else "E[x_j | x_<j]", ins.prob_one, "viridis"),
              ("p(observed x_j | x_<j)", ins.prob_observed, "viridis"),
              (f"-log p(x_j | x_<j), nats (total {ins.total_nll_nats:.1f})", ins.nll, "magma"),
              ("generation step", ins.step, "cividis")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
    for ax, (name, t, cmap) in zip(axes, panels):
        kw = {"vmin": 0, "vmax": 1} if name.startswith("p(") and num_values is not None else {}
        im = ax.imshow(as_2d(t).numpy(), cmap=cmap, interpolation="nearest", aspect="auto" if t.dim() == 1 else "equal", **kw)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------- text: surprisal on the text itself
#: A character split over several tokens (bytes, BPE pieces) decodes to U+FFFD until all of its
#: bytes are in; a UTF-8 character has at most 4.
_MAX_TOKENS_PER_CHARACTER = 4
_CMAP = "YlOrRd"  # light (expected) to dark red (surprising); black text stays readable on most of it


@dataclass(frozen=True)
class TextInspection:
    """The surprisal of every token of one text under a text model.

    ``bits[i]`` is -log2 p(x_i | x_<i) (for a model read in another order: given the tokens before
    i in that order). ``spans`` cut the text into what is shown: each piece of text with the tokens
    it covers — one token each for characters, words and most BPE pieces, several when a character
    is split over bytes, none for the spaces a word tokenizer puts between words.
    """

    ids: list[int]
    tokens: list[str]  # each token's string (tokenizer.id_to_token)
    bits: torch.Tensor  # (n,) float64, bits
    spans: list[tuple[str, list[int]]]
    unit: str  # "char", "byte" or "token"

    @property
    def text(self) -> str:
        """The text as shown (the tokenizer's decoding of ``ids``)."""
        return "".join(piece for piece, _ in self.spans)

    @property
    def total_bits(self) -> float:
        return float(self.bits.sum())

    @property
    def bits_per_token(self) -> float:
        return self.total_bits / len(self.ids)

    def span_bits(self) -> list[float | None]:
        """The surprisal of each span (the sum over its tokens), None for a span of no token."""
        return [float(self.bits[pos].sum()) if pos else None for _, pos in self.spans]

    def most_surprising(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` tokens with the highest surprisal: ``(position, token string, bits)``, highest first."""
        top = self.bits.topk(min(k, len(self.ids)))
        return [(int(i), self.tokens[int(i)], float(b)) for b, i in zip(top.values, top.indices)]

    def summary(self, what: str = "text", k: int = 5) -> str:
        """One line: the total, the mean per token and the ``k`` most surprising tokens."""
        u = self.unit
        worst = ", ".join(f"{tok!r} at {pos} ({b:.2f} bits)" for pos, tok, b in self.most_surprising(k))
        return (f"{what}: {self.total_bits:.1f} bits over {len(self.ids)} {u}s = {self.bits_per_token:.4f} bits/{u}; "
                f"most surprising {u}s: {worst}")


def _text_spans(tokenizer: Any, ids: list[int]) -> list[tuple[str, list[int]]]:
    """Cut the decoded text into pieces, each with the token positions it comes from."""
    sep = " " if getattr(tokenizer, "kind", None) == "word" else ""  # words are decoded joined by spaces
    spans: list[tuple[str, list[int]]] = []
    pending: list[int] = []
    for i in range(len(ids)):
        pending.append(i)
        piece = tokenizer.decode([ids[j] for j in pending], skip_special=False)
        if "\ufffd" in piece and len(pending) < _MAX_TOKENS_PER_CHARACTER and i + 1 < len(ids):
            continue  # part of a character: wait for the rest of its bytes
        if sep and spans:
            spans.append((sep, []))
        spans.append((piece, pending))
        pending = []
    return spans


@torch.no_grad()
def inspect_text(model: ARModel, tokenizer: Any, text: str | Sequence[int] | torch.Tensor, context: Any = None,
                 member: int | None = None) -> TextInspection:
    """The surprisal -log2 p(x_i | x_<i) of every token of ``text`` under a text model.

    ``text``: a string (encoded with ``tokenizer``, the run's own) or token ids. A text of the
    model's window T is scored in one pass (in any order the model reads). The others need a
    left-to-right model: a shorter text is padded after its end, which such a model never reads for
    the tokens before it, so the values are exact; a longer one is scored window by window, each
    window starting T // 2 tokens after the previous one, every token once — after the first window
    each given at least T - T // 2 of the tokens before it (a window is all the model can see). ``member``: for an ensemble, whose conditionals (default 0).

    Raises:
        InputError: not a discrete model of shape ``(T,)``, an empty text, or a text of another
            length than T for a model that does not read left to right.
    """
    if len(model.shape) != 1 or not model.head.discrete or model.group_size != 1:
        raise InputError(f"inspect_text needs a text model (discrete tokens, shape (T,)), got shape {model.shape}")
    unit = token_unit(tokenizer) or "token"
    ids = tokenizer.encode(text) if isinstance(text, str) else torch.as_tensor(text).reshape(-1).tolist()
    n, window = len(ids), model.dim
    if n == 0:
        raise InputError("the text is empty: nothing to score")
    call = {"member": member or 0} if getattr(model, "num_members", 1) > 1 else {}
    if n != window and not torch.equal(model.resolve_order(**call).cpu(), torch.arange(window)):
        raise InputError(f"the text has {n} {unit}s and the model's window {window}: another length than the window "
                         "is scored by padding or sliding the window, which needs a left-to-right model")
    padded = torch.tensor(ids + [0] * max(0, window - n), dtype=torch.long)
    stride = max(1, window // 2)
    starts = list(range(0, len(padded) - window + 1, stride))
    if starts[-1] != len(padded) - window:
        starts.append(len(padded) - window)  # the last window ends with the text
    windows = padded[torch.tensor(starts).unsqueeze(1) + torch.arange(window)].to(model.device)
    was_training = model.training
    model.eval()
    # windows in chunks of about 5e7 logits (200 MB in float32): a GPT-2's window alone holds 1024 x 50257
    chunk = max(1, int(5e7 // (window * (model.num_values or 1))))
    try:
        lp = torch.cat([log_prob_per_variable(model, windows[b:b + chunk], context, **call).double().cpu()
                        for b in range(0, len(windows), chunk)])  # (windows, T)
    finally:
        model.train(was_training)
    per_token = torch.empty(len(padded), dtype=torch.float64)
    done = 0
    for w, start in enumerate(starts):  # each token from the first window that reaches it
        per_token[done:start + window] = lp[w, done - start:]
        done = start + window
    bits = -per_token[:n] / math.log(2)
    return TextInspection(ids=ids, tokens=[tokenizer.id_to_token(i) for i in ids], bits=bits,
                          spans=_text_spans(tokenizer, ids), unit=unit)


def _colour_scale(ins: TextInspection) -> tuple[Any, Any]:
    """The colour map and its normalization, 0 to the largest span surprisal (at least 1 bit)."""
    import matplotlib
    from matplotlib.colors import Normalize

    values = [b for b in ins.span_bits() if b is not None]
    return matplotlib.colormaps[_CMAP], Normalize(0.0, max(1.0, max(values)))


def _ink(rgba: Sequence[float]) -> str:
    """Black or white text, whichever reads better on the background ``rgba``."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _glyph(c: str) -> str:
    """What a character looks like in the figure: whitespace and control characters made visible."""
    return {"\n": "↵", "\t": "→"}.get(c, c if c.isprintable() else "·")


def plot_text_surprisal(ins: TextInspection, path: str | Path, width: int = 80, title: str = "") -> Path:
    """Save a PNG of the text in monospace lines (wrapped at ``width`` columns), each character on
    the colour of its token's surprisal, with a colour bar in bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cmap, norm = _colour_scale(ins)
    cells: list[tuple[int, int, str, float]] = []  # row, column, glyph, bits (NaN: no token)
    row = col = 0
    for (piece, _), bits in zip(ins.spans, ins.span_bits()):
        value = math.nan if bits is None else bits
        for c in piece:
            if col >= width:
                row, col = row + 1, 0
            cells.append((row, col, _glyph(c), value))
            col += 1
            if c == "\n":
                row, col = row + 1, 0
    rows, cols = max(r for r, *_ in cells) + 1, max(1, max(c for _, c, *_ in cells) + 1)
    grid = np.full((rows, cols), np.nan)
    for r, c, _, v in cells:
        grid[r, c] = v
    fig, ax = plt.subplots(figsize=(max(4.5, 0.105 * cols + 0.6), 0.22 * rows + 1.6), dpi=120)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest",
                   extent=(0, cols, rows, 0))
    for r, c, glyph, v in cells:
        if glyph != " ":
            ink = "black" if math.isnan(v) else _ink(cmap(norm(v)))
            ax.text(c + 0.5, r + 0.5, glyph, ha="center", va="center", family="monospace", fontsize=8.5,
                    color=ink, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    u = ins.unit
    bar = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.5 / (0.22 * rows + 1.6), pad=0.04, aspect=40)
    bar.set_label("surprisal -log2 p(x_i | x_<i), bits", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}{ins.total_bits:.1f} bits over {len(ins.ids)} {u}s = {ins.bits_per_token:.3f} bits/{u}",
                 fontsize=9)
    fig.tight_layout()
    with warnings.catch_warnings():  # a character the monospace font lacks is drawn as a box, not an error
        warnings.filterwarnings("ignore", message="Glyph .* missing")
        return save_figure(fig, path)


def write_text_surprisal_html(ins: TextInspection, path: str | Path, title: str = "") -> Path:
    """Write a self-contained HTML page of the text, each span on the colour of its surprisal.

    Every span of tokens has a ``title`` (the tooltip: the text, its bits, the positions) and the
    attributes ``data-pos`` (its token positions) and ``data-bits`` (their surprisals in bits, full
    precision), separated by spaces; the spans' text is exactly the text (newlines are marked by
    CSS, not by characters).
    """
    from matplotlib.colors import to_hex

    cmap, norm = _colour_scale(ins)
    u = ins.unit
    parts = []
    for (piece, pos), bits in zip(ins.spans, ins.span_bits()):
        body = html.escape(piece).replace("\n", '<span class="nl"></span>\n')
        if bits is None:
            parts.append(body)
            continue
        rgba = cmap(norm(bits))
        each = [float(ins.bits[p]) for p in pos]
        tip = f"{piece!r}: {bits:.3f} bits, {u} {pos[0]}" if len(pos) == 1 else \
            f"{piece!r}: {bits:.3f} bits, {u}s {pos[0]}-{pos[-1]} (" + " + ".join(f"{b:.3f}" for b in each) + ")"
        parts.append(f'<span style="background:{to_hex(rgba)};color:{_ink(rgba)}" title="{html.escape(tip)}" '
                     f'data-pos="{" ".join(map(str, pos))}" data-bits="{" ".join(repr(b) for b in each)}">{body}</span>')
    stops = ", ".join(to_hex(cmap(i / 10)) for i in range(11))
    worst = "".join(f"<tr><td>{p}</td><td><code>{html.escape(repr(t))}</code></td><td>{b:.3f}</td></tr>"
                    for p, t, b in ins.most_surprising(5))
    name = html.escape(title or "surprisal")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }}
.text {{ font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; line-height: 1.7;
         font-size: 15px; border: 1px solid #ddd; padding: 0.8em; }}
.text span[data-bits] {{ border-radius: 2px; }}
.nl::before {{ content: "\\21B5"; opacity: 0.6; }}
.bar {{ display: inline-block; width: 16em; height: 0.9em; vertical-align: middle;
        background: linear-gradient(to right, {stops}); border: 1px solid #999; }}
td, th {{ padding: 0.1em 0.8em; text-align: left; }}
</style></head><body>
<h1>{name}</h1>
<p>{ins.total_bits:.1f} bits over {len(ins.ids)} {u}s = {ins.bits_per_token:.4f} bits/{u}.
Each {u} is coloured by its surprisal &minus;log<sub>2</sub> p(x<sub>i</sub> | x<sub>&lt;i</sub>); hover for the bits.</p>
<p>0 bits <span class="bar"></span> {norm.vmax:.1f} bits</p>
<div class="text">{"".join(parts)}</div>
<h2>Most surprising {u}s</h2>
<table><tr><th>position</th><th>{u}</th><th>bits</th></tr>{worst}</table>
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
