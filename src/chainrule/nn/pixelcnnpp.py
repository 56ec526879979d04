"""The layers of PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017, "PixelCNN++: Improving the
PixelCNN with discretized logistic mixture likelihood and other modifications", ICLR 2017): shifted
convolutions instead of masks, their strided and transposed forms, and the gated ResNet block.

A *down-shifted* convolution (kernel ``(kh, kw)``, kw odd) is padded with ``kh - 1`` zero rows on
top and ``(kw - 1) / 2`` zero columns on each side, so its output at row i reads input rows
``i - kh + 1 .. i`` only (never a row below). A *down-right-shifted* convolution is padded with
``kh - 1`` rows on top and ``kw - 1`` columns on the left, so its output at (i, j) reads rows <= i
and columns <= j only. Followed by :func:`~chainrule.nn.pixel.down_shift` /
:func:`right_shift` they become strictly causal; inside the network they keep the two streams'
receptive fields (the rows above; the rows above and the pixels to the left) without masks::

    down-shifted (2, 3)     down-right-shifted (2, 2)
    x x x                   x x
    x o x                   x o          (o: the output position, x: read)

With stride 2 (between resolutions) the output row k reads input rows 2k - 1 and 2k, and the
output size is ceil(H / 2) x ceil(W / 2) for any H, W >= 1 (a 1-pixel side stays 1). The
transposed forms (stride 2, back up) give row i from the coarse row floor(i / 2) only and are
cropped to the finer level's size, so odd sizes go back exactly.

Every convolution is weight-normalized, w = g v / ||v|| per output channel (Salimans & Kingma
2016; PixelCNN++ trains with it): the scale of a layer's output is set by g, not by the size of v,
so a stack of dozens of blocks neither explodes nor vanishes whatever the scale of v. (The paper
also initializes g and the bias from a batch of data; here g starts at ||v|| of PyTorch's default
initialization, so w starts as PyTorch's default.)

Every layer also has the cached forms used by the sampling of
:class:`~chainrule.models.pixelcnnpp.PixelCNNPlusPlus`: ``row`` (output row i, ``(B, C, 1, W)``)
and ``at`` (the output at one position, ``(B, C)``), computed from a buffer that holds the whole
input map, of which only the window the output reads has to be up to date. Both take an optional
``weights`` cache (:func:`sampling_weights`) so that a sampling run normalizes each weight once,
not at every step; ``at`` is fastest on buffers in ``torch.channels_last`` memory (a window is then
a few contiguous runs of channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.nn.pixel import cpu_layout

#: module -> the forms of its weight the cached passes use (see :func:`sampling_weights`)
WeightCache = dict[nn.Module, dict[str, torch.Tensor]]


def concat_elu(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """elu([x, -x]) along the channels ``dim``: ``(B, C, ...)`` -> ``(B, 2C, ...)``. It keeps the
    information of both signs (PixelCNN++ sec. 2; concat_elu(0) = 0, so zero padding commutes)."""
    return F.elu(torch.cat([x, -x], dim))


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)``: column j receives column j-1 (column 0 zeros): a column only sees the ones to its left."""
    return F.pad(x, (1, 0))[..., :-1]


def _window(buf: torch.Tensor, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """Rows ``r0 .. r1-1`` and columns ``c0 .. c1-1`` of a map ``(B, C, H, W)``, zeros outside it."""
    h, w = buf.shape[-2:]
    win = buf[:, :, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
    pads = (max(-c0, 0), max(c1 - w, 0), max(-r0, 0), max(r1 - h, 0))
    return F.pad(win, pads) if any(pads) else win


def _rows(buf: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo .. hi-1`` of a map ``(B, C, H, W)``, with zero rows for ``lo < 0`` (the top padding)."""
    rows = buf[:, :, max(lo, 0):hi]
    return F.pad(rows, (0, 0, -lo, 0)) if lo < 0 else rows


class _WeightNormed(nn.Module):
    """Holds ``v`` (any shape), ``g`` (one per output channel) and ``bias``; ``weight()`` is g v / ||v||
    with the norm over every axis but ``out_axis`` (the output channels)."""

    out_axis = 0

    def _init_weight_norm(self, v: torch.Tensor, fan_in: int) -> None:
        nn.init.kaiming_uniform_(v, a=5 ** 0.5)  # nn.Conv2d's default, so w starts as PyTorch's default
        self.v = nn.Parameter(v)
        self.g = nn.Parameter(self._norm(v.detach()).clone())
        bound = 1 / fan_in ** 0.5
        self.bias = nn.Parameter(torch.empty(v.shape[self.out_axis]).uniform_(-bound, bound))

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(v, dim=[d for d in range(v.dim()) if d != self.out_axis])

    def weight(self) -> torch.Tensor:
        shape = [1] * self.v.dim()
        shape[self.out_axis] = -1
        return self.v * (self.g / self._norm(self.v).clamp_min(1e-12)).reshape(shape)

    def cached_forms(self) -> dict[str, torch.Tensor]:
        """The forms of the weight the cached passes read (computed once per sampling run)."""
        return {"weight": self.weight()}

    def _form(self, weights: WeightCache | None, key: str = "weight") -> torch.Tensor:
        return self.cached_forms()[key] if weights is None else weights[self][key]


def sampling_weights(module: nn.Module) -> WeightCache:
    """Every weight-normalized layer inside ``module`` -> its normalized weight forms, for the cached
    passes of one sampling run (the weights must not change during the run)."""
    return {m: m.cached_forms() for m in module.modules() if isinstance(m, _WeightNormed)}


class WNPointwise(_WeightNormed):
    """A weight-normalized 1x1 convolution ("nin"): ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``, or
    features on the last axis ``(..., C_in)`` -> ``(..., C_out)`` (one pixel of the cached form)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self._init_weight_norm(torch.empty(out_channels, in_channels), in_channels)

    def forward(self, x: torch.Tensor, weights: WeightCache | None = None) -> torch.Tensor:
        w = self._form(weights)
        if x.dim() == 4:
            return F.conv2d(x, w[:, :, None, None], self.bias)
        return F.linear(x, w, self.bias)


class ShiftedConv2d(_WeightNormed):
    """A down-shifted (``right=False``) or down-right-shifted (``right=True``) convolution, see the
    module docstring.

    Args:
        in_channels, out_channels: feature maps.
        kernel_size: ``(kh, kw)``; kw odd for a down-shifted convolution.
        right: down-right-shifted (pad on the left only) instead of down-shifted (pad both sides).
        stride: 1, or 2 between resolutions (``(B, C, H, W)`` -> ``(B, C', ceil(H/2), ceil(W/2))``).

    Shapes: ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)`` (stride 1).
    """

    uses_cpu_layout = True  # its maps follow cpu_layout (the trainer measures the layouts)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], right: bool = False,
                 stride: int = 1) -> None:
        super().__init__()
        kh, kw = kernel_size
        if not right and kw % 2 == 0:
            raise ValueError(f"a down-shifted convolution needs an odd kernel width, got {kw}")
        self.kh, self.kw, self.stride = kh, kw, stride
        self.sides = (kw - 1, 0) if right else ((kw - 1) // 2, (kw - 1) // 2)  # (left, right) padding
        self._init_weight_norm(torch.empty(out_channels, in_channels, kh, kw), in_channels * kh * kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_layout(F.conv2d(F.pad(x, (*self.sides, self.kh - 1, 0)), self.weight(), self.bias, self.stride))

    def cached_forms(self) -> dict[str, torch.Tensor]:
        w = self.weight()
        # "flat": (out, kh * kw * in), matching a window read pixel-major (channels last)
        return {"weight": w, "flat": w.permute(0, 2, 3, 1).reshape(len(w), -1)}

    def row(self, buf: torch.Tensor, i: int, elu: bool = False,
            weights: WeightCache | None = None) -> torch.Tensor:
        """Output row ``i`` of ``forward(buf)`` (``elu``: of ``forward(concat_elu(buf))``),
        ``(B, C_out, 1, W_out)``: reads only the input rows ``stride * i - kh + 1 .. stride * i``."""
        hi = self.stride * i + 1
        rows = _rows(buf, hi - self.kh, hi)
        if elu:  # applied before the padding: concat_elu(0) = 0, as the full pass pads after it
            rows = concat_elu(rows)
        return F.conv2d(F.pad(rows, self.sides), self._form(weights), self.bias, self.stride)

    def at(self, buf: torch.Tensor, i: int, j: int, elu: bool = False,
           weights: WeightCache | None = None) -> torch.Tensor:
        """Output ``(B, C_out)`` at position (i, j) of ``forward(buf)`` (``elu``: of
        ``forward(concat_elu(buf))``), from the input window it reads."""
        r1, c0 = self.stride * i + 1, self.stride * j - self.sides[0]
        window = _window(buf, r1 - self.kh, r1, c0, c0 + self.kw).permute(0, 2, 3, 1)  # (B, kh, kw, C_in)
        if elu:
            window = concat_elu(window, -1)
        return F.linear(window.reshape(len(window), -1), self._form(weights, "flat"), self.bias)


class ShiftedConvTranspose2d(_WeightNormed):
    """The transposed (stride-2, upsampling) form of :class:`ShiftedConv2d`: fine row i reads the
    coarse row floor(i / 2) only (and, ``right=True``, fine column j the coarse columns <= j / 2);
    the output is cropped at the bottom and right to the finer level's size.

    Shapes: ``(B, C_in, h, w)`` -> ``(B, C_out, H, W)`` for any H <= 2h, W <= 2w.
    """

    out_axis = 1  # a transposed convolution's weight is (in, out, kh, kw)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], right: bool = False) -> None:
        super().__init__()
        kh, kw = kernel_size
        if kh != 2:
            raise ValueError("a transposed shifted convolution needs a kernel height of 2 (a coarse row per fine row)")
        if not right and kw % 2 == 0:
            raise ValueError(f"a down-shifted convolution needs an odd kernel width, got {kw}")
        self.kw = kw
        self.left = 0 if right else (kw - 1) // 2  # crop the columns the padding of the down pass added
        self._init_weight_norm(torch.empty(in_channels, out_channels, kh, kw), out_channels * kh * kw)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        return F.conv_transpose2d(x, self.weight(), self.bias, stride=2)[:, :, :h, self.left:self.left + w]

    def cached_forms(self) -> dict[str, torch.Tensor]:
        w = self.weight()
        return {"weight": w, "taps": w.permute(2, 3, 0, 1).contiguous()}  # taps[a, t]: (in, out)

    def row(self, buf: torch.Tensor, i: int, width: int, weights: WeightCache | None = None) -> torch.Tensor:
        """Fine row ``i`` of ``forward(buf, (H, width))``, ``(B, C_out, 1, width)``, from coarse row i // 2."""
        out = F.conv_transpose2d(buf[:, :, i // 2:i // 2 + 1], self._form(weights), self.bias, stride=2)
        return out[:, :, i % 2:i % 2 + 1, self.left:self.left + width]  # of the fine rows 2k and 2k + 1

    def at(self, buf: torch.Tensor, i: int, j: int, weights: WeightCache | None = None) -> torch.Tensor:
        """Fine position (i, j) ``(B, C_out)``: the sum over the kernel columns t that put a coarse
        column c = (j + left - t) / 2 of row i // 2 there, of that column times the tap (i % 2, t)."""
        taps = self._form(weights, "taps")
        out = self.bias.expand(len(buf), -1)
        for t in range(self.kw):
            c, odd = divmod(j + self.left - t, 2)
            if not odd and 0 <= c < buf.shape[-1]:
                out = out + buf[:, :, i // 2, c] @ taps[i % 2, t]
        return out


class GatedResnet(nn.Module):
    """PixelCNN++'s gated ResNet block (sec. 2.5 and the reference code's ``gated_resnet``)::

        c1 = conv(concat_elu(x)) + nin(concat_elu(a))       (a: the skip input, if any)
        c2 = conv(dropout(concat_elu(c1))) + W c             (c: the context, e.g. a one-hot label)
        out = x + c2_a * sigmoid(c2_b)                       (c2 split in halves along the channels)

    Args:
        channels: feature maps F of x and of the output.
        kernel_size: of both convolutions, (2, 3) in the down stream, (2, 2) in the down-right one.
        right: down-right-shifted convolutions (the ``ul`` stream).
        skip_channels: channels of the skip input ``a`` (0: none).
        context_dim: features of the context (0: unconditional).
        dropout: dropout probability after the first convolution.

    Shapes: ``x`` ``(B, F, H, W)``, ``a`` ``(B, A, H, W)``, the context bias ``(B, 2F)`` -> ``(B, F, H, W)``.
    """

    def __init__(self, channels: int, kernel_size: tuple[int, int], right: bool, skip_channels: int = 0,
                 context_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = ShiftedConv2d(2 * channels, channels, kernel_size, right)
        self.skip = WNPointwise(2 * skip_channels, channels) if skip_channels else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = ShiftedConv2d(2 * channels, 2 * channels, kernel_size, right)
        self.context = nn.Linear(context_dim, 2 * channels, bias=False) if context_dim else None
        with torch.no_grad():  # the residual branch starts small (the reference code's init_scale=0.1)
            self.conv2.g.mul_(0.1)
            self.conv2.bias.mul_(0.1)

    def context_bias(self, context: torch.Tensor | None) -> torch.Tensor | None:
        """The block's learned bias for the context features ``(B, C)`` -> ``(B, 2F)`` (None without one)."""
        return None if self.context is None or context is None else self.context(context)

    def _hidden(self, c1: torch.Tensor, a: torch.Tensor | None, weights: WeightCache | None = None) -> torch.Tensor:
        if a is not None:
            c1 = c1 + self.skip(concat_elu(a), weights)
        return self.dropout(concat_elu(c1))

    @staticmethod
    def _out(x: torch.Tensor, c2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None:
            c2 = c2 + (bias if c2.dim() == 2 else bias[:, :, None, None])
        a, b = c2.chunk(2, dim=1)
        return x + a * torch.sigmoid(b)

    def forward(self, x: torch.Tensor, a: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        return self._out(x, self.conv2(self._hidden(self.conv1(concat_elu(x)), a)), bias)

    def row(self, x: torch.Tensor, a: torch.Tensor | None, hidden: torch.Tensor, i: int, bias: torch.Tensor | None,
            weights: WeightCache | None = None) -> torch.Tensor:
        """Output row ``i`` ``(B, F, 1, W)``: ``x`` is the input map's buffer (rows i - 1 and i read),
        ``a`` the skip input's row i ``(B, A, 1, W)``, ``hidden`` the buffer of the second
        convolution's input (row i is written here, row i - 1 read)."""
        hidden[:, :, i:i + 1] = self._hidden(self.conv1.row(x, i, True, weights), a, weights)
        return self._out(x[:, :, i:i + 1], self.conv2.row(hidden, i, weights=weights), bias)

    def at(self, x: torch.Tensor, a: torch.Tensor | None, hidden: torch.Tensor, i: int, j: int,
           bias: torch.Tensor | None, weights: WeightCache | None = None) -> torch.Tensor:
        """Output ``(B, F)`` at position (i, j): like :meth:`row`, with the skip input ``a`` ``(B, A)``
        at (i, j) and the window of each convolution read from ``x`` and ``hidden``."""
        hidden[:, :, i, j] = self._hidden(self.conv1.at(x, i, j, True, weights), a, weights)
        return self._out(x[:, :, i, j], self.conv2.at(hidden, i, j, weights=weights), bias)
