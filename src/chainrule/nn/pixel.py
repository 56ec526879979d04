"""Masked 2-D convolutions for images, each written once: the PixelCNN masks (type A / B with
channel groups for colour) and the vertical / horizontal stacks of the Gated PixelCNN.

Channel groups. On a colour image whose sub-pixels are separate conditionals (R -> G -> B inside a
pixel), every feature map of the network belongs to one of ``groups`` channel groups, interleaved:
channel ``o`` belongs to group ``o % groups`` (so splitting a tensor of 2p channels into halves of
p keeps the groups aligned when p is a multiple of ``groups``). At the centre pixel a connection
from input group gi to output group go is allowed when go > gi (type A, the first layer: R sees
nothing of its own pixel, G sees R, B sees R and G) or go >= gi (type B, every layer after it).
With ``groups=1`` (grey images, or a joint head over the whole pixel) type A hides the centre
pixel and type B shows it (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", fig. 4).

Every layer also has a cached form for sampling: its input is kept in a zero-padded buffer
(exactly the zeros the full pass pads with) and the output at one position (``at``) or one row
(``row``) is computed from the window it reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


_channels_last = True  # the CPU layout of cpu_layout; switched by feature_layout (the trainer's measured choice)


@contextlib.contextmanager
def feature_layout(channels_last: bool | None) -> Iterator[None]:
    """Inside the block, :func:`cpu_layout` writes CPU feature maps channels-last (True) or leaves
    them as the convolution returns them (False: NCHW); None changes nothing. Training with
    ``precision="auto"`` measures both and trains in the faster (:mod:`chainrule.training.precision`)."""
    global _channels_last
    if channels_last is None:
        yield
        return
    previous, _channels_last = _channels_last, bool(channels_last)
    try:
        yield
    finally:
        _channels_last = previous


def cpu_layout(maps: torch.Tensor) -> torch.Tensor:
    """Feature maps ``(B, C, H, W)`` in the memory layout convolutions run fastest on: on a CPU,
    channels-last by default (float32 training steps of oneDNN's convolutions and the elementwise
    work between them ran 1.31x faster on a PixelCNN, 1.09-1.17x on Gated PixelCNNs, 1.08x on
    PixelCNN++ and within the noise on the PixelRNNs: ``benchmarks/image_layout.py``, BENCHMARKS.md
    section 5; :func:`feature_layout` turns it off); elsewhere unchanged (on a GPU the layout is
    left to the user). The values are the same, only the strides differ; convolutions,
    activations, padding and sums of channels-last maps stay channels-last, so converting each
    layer's output costs one copy in the first layer and nothing after it."""
    if _channels_last and maps.device.type == "cpu" and maps.dim() == 4:
        return maps.contiguous(memory_format=torch.channels_last)
    return maps


def channel_group_mask(out_channels: int, in_channels: int, groups: int, mask_type: str) -> torch.Tensor:
    """``(out, in)`` 0/1 connectivity at the centre pixel: group(o) > group(i) for type "A",
    group(o) >= group(i) for type "B" (groups interleaved: channel c is in group c % groups)."""
    go = torch.arange(out_channels) % groups
    gi = torch.arange(in_channels) % groups
    allowed = go[:, None] > gi[None, :] if mask_type == "A" else go[:, None] >= gi[None, :]
    return allowed.float()


class MaskedConv2d(nn.Module):
    """A 2-D convolution whose kernel only reads pixels before the centre in raster order.

    Masks for a 5x5 kernel (x: read, c: the centre pixel, read through the channel-group mask;
    rows below the centre are never read, so the weight only stores the top ``kh//2 + 1`` rows)::

        type A / B ("causal")        type V (vertical stack)      (1 x 5) A / B (horizontal stack)
        x x x x x                    x x x x x
        x x x x x                    x x x x x                    x x c . .
        x x c . .                    x x x x x

    Type "V" reads whole rows up to and including the centre row (no channel masks): the Gated
    PixelCNN's vertical stack, whose output is shifted down one row before anything reads it.

    Args:
        in_channels, out_channels: feature maps (multiples of ``groups`` when ``groups > 1``).
        kernel_size: odd height and width (an int for a square kernel).
        mask_type: "A", "B" or "V".
        groups: channel groups (3 for RGB sub-pixel conditionals, 1 otherwise).

    Shapes: ``x`` ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``.
    """

    uses_cpu_layout = True  # its maps follow cpu_layout (the trainer measures the layouts)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], mask_type: str,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0 or kh < 1 or kw < 1:
            raise ValueError(f"kernel sizes must be odd and positive, got {(kh, kw)}")
        if mask_type not in ("A", "B", "V"):
            raise ValueError(f"mask_type must be 'A', 'B' or 'V', got {mask_type!r}")
        if groups > 1 and mask_type != "V" and (in_channels % groups or out_channels % groups):
            raise ValueError(f"channels ({in_channels} -> {out_channels}) must be multiples of the {groups} channel groups")
        self.in_channels, self.out_channels, self.mask_type = in_channels, out_channels, mask_type
        self.pad_top, self.pad_side = kh // 2, kw // 2
        self.kernel = (kh // 2 + 1, kw)  # only the rows up to the centre are ever read
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default
        if self.bias is not None:
            bound = 1 / (in_channels * kh * kw) ** 0.5
            nn.init.uniform_(self.bias, -bound, bound)
        mask = torch.ones(out_channels, in_channels, *self.kernel)
        if mask_type != "V":
            ch, cw = self.pad_top, self.pad_side
            mask[:, :, ch, cw + 1:] = 0  # right of the centre, on the centre row
            mask[:, :, ch, cw] = channel_group_mask(out_channels, in_channels, groups, mask_type)
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> torch.Tensor:
        # applied inside autograd on every call, so masked weights get exactly zero gradient
        return self.weight * self.mask

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> the zero-padded input the kernel slides over ``(B, C, H + ph, W + 2 pw)``."""
        return F.pad(x, (self.pad_side, self.pad_side, self.pad_top, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_layout(F.conv2d(self.pad(x), self.masked_weight(), self.bias))

    # ------------------------------------------------------------------ cached form
    def new_cache(self, n: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The zero-padded input buffer ``(n, C_in, H + ph, W + 2 pw)`` of the cached form."""
        return like.new_zeros(n, self.in_channels, height + self.pad_top, width + 2 * self.pad_side)

    def write(self, cache: torch.Tensor, i: int, j: int, value: torch.Tensor) -> None:
        """Store the input ``(n, C_in)`` at pixel (i, j) of the unpadded image."""
        cache[:, :, i + self.pad_top, j + self.pad_side] = value

    def write_row(self, cache: torch.Tensor, i: int, value: torch.Tensor) -> None:
        """Store the input row ``(n, C_in, W)`` at row i."""
        cache[:, :, i + self.pad_top, self.pad_side:cache.shape[-1] - self.pad_side] = value

    def at(self, cache: torch.Tensor, i: int, j: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The output ``(n, C_out)`` at pixel (i, j), from the inputs stored in ``cache``."""
        kh, kw = self.kernel
        window = cache[:, :, i:i + kh, j:j + kw]  # padded coordinates: rows i-ph..i, cols j-pw..j+pw
        w = self.masked_weight() if weight is None else weight
        return F.linear(window.reshape(len(cache), -1), w.reshape(self.out_channels, -1), self.bias)

    def row(self, cache: torch.Tensor, i: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The output row ``(n, C_out, W)`` at row i, from the inputs stored in ``cache``."""
        w = self.masked_weight() if weight is None else weight
        return F.conv2d(cache[:, :, i:i + self.kernel[0]], w, self.bias)[:, :, 0]


class Pointwise(nn.Module):
    """A 1x1 convolution with the type-B channel-group mask (a pixel's group g reads groups <= g of
    the same pixel), applied to feature maps ``(B, C_in, H, W)`` or to features on the last axis
    ``(..., C_in)`` (the cached form: one pixel, or a row transposed)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, mask_type: str = "B",
                 bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=bias)
        self.register_buffer("mask", channel_group_mask(out_channels, in_channels, groups, mask_type), persistent=False)
        self.masked = groups > 1 or mask_type == "A"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight * self.mask if self.masked else self.linear.weight
        if x.dim() == 4:
            return F.conv2d(x, w[:, :, None, None], self.linear.bias)
        return F.linear(x, w, self.linear.bias)  # features on the last axis


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)``: row i receives row i-1 (row 0 zeros), so a row only sees the rows above."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """The gated activation tanh(a) * sigmoid(b) over the two halves of the channel axis (axis 1)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedStackLayer(nn.Module):
    """One layer of the Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with
    PixelCNN Decoders", fig. 2): a vertical stack that reads the rows above and a horizontal stack
    that reads the pixels to the left in the current row, which together have no blind spot::

        v' = conv_V(v)                                    (k x k, rows <= i; 2p channels)
        h' = conv_H(h) + link(down_shift(v'))             (1 x k, columns <= j; A in the first layer)
        v_out = tanh(v'_a + c_a) * sigmoid(v'_b + c_b)
        h_out = h + out(tanh(h'_a + c_a) * sigmoid(h'_b + c_b))     (no residual in the first layer)

    ``c`` is the optional context (class label) projection. The horizontal stack keeps the channel
    groups (``groups``); the vertical stack only ever reaches the horizontal stack shifted one row
    down, so it needs no channel masks.

    Shapes: ``v``, ``h`` ``(B, C_in, H, W)`` -> ``(B, p, H, W)`` each.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, groups: int, first: bool,
                 context_dim: int = 0) -> None:
        super().__init__()
        self.first = first
        self.vertical = MaskedConv2d(in_channels, 2 * channels, kernel_size, "V")
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, kernel_size), "A" if first else "B", groups)
        self.link = Pointwise(2 * channels, 2 * channels, groups=1)
        self.out = Pointwise(channels, channels, groups)
        self.context = nn.Linear(context_dim, 2 * channels, bias=False) if context_dim else None

    def forward(self, v: torch.Tensor, h: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.vertical(v)
        h_pre = self.horizontal(h) + self.link(down_shift(v_pre))
        if self.context is not None:
            c = self.context(context)[:, :, None, None]
            v_pre, h_pre = v_pre + c, h_pre + c
        h_out = self.out(gate(h_pre))
        return gate(v_pre), h_out if self.first else h + h_out
