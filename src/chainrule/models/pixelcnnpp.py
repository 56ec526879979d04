"""PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017, "PixelCNN++: Improving the PixelCNN with
discretized logistic mixture likelihood and other modifications", ICLR 2017).

Two streams of shifted convolutions (:mod:`chainrule.nn.pixelcnnpp`), no masks:

- ``u`` (down): reads the rows strictly above, started by a down-shifted (2, 3) convolution of the
  input shifted one row down; its blocks use down-shifted (2, 3) convolutions;
- ``ul`` (down-right): reads the rows above and the pixels to the left, started by a down-shifted
  (1, 3) convolution shifted one row down plus a down-right-shifted (2, 1) convolution shifted one
  column right; its blocks use down-right-shifted (2, 2) convolutions and read ``u`` through a 1x1
  "nin" (so the rows above are seen whole: no blind spot).

The reach is still finite on wide images, as in the paper's network: the coarser resolutions carry
the rows above an even row and the pixels to its left, but not the row just above an odd row nor
the odd row itself (a coarse row k only depends on the image rows <= 2k), so for those the
full-resolution convolutions alone reach 4 x ``num_resnets`` + 2 columns (22 for the paper's 5;
one column less with a single resolution). On images wider than that, an odd row's first pixels
do not see the far right of the row above, nor its last pixels the start of their own row (tested).

Both go through gated ResNet blocks (concat_elu, conv, dropout, conv to 2F, a * sigmoid(b),
residual; a class label or context tensor adds a learned bias in every block) at
``num_resolutions`` resolutions: ``num_resnets`` blocks per resolution on the down pass with
stride-2 shifted convolutions between resolutions, then the up pass with stride-2 transposed
convolutions and short-cut connections from every down-pass map (popped in reverse: the paper's
figure 2; ``num_resnets + 1`` blocks per resolution, ``num_resnets`` at the coarsest). The output
is a 1x1 convolution ("nin") of elu(ul) to the head's parameters. The input carries an extra channel of
ones, as in the reference code, so the network can tell the zero padding from zero pixels.

Design choices of this implementation:

- **Any image size.** Each resolution is ceil(H/2) x ceil(W/2) of the one above (a side of 1 stays
  1) and transposed outputs are cropped to the finer size, so (1, 1, 3), (3, 1, 2) or (1, 5, 5) work
  with any ``num_resolutions``; resolutions that reach 1 x 1 only waste a little work.
- **Whole pixels or sub-pixels.** The paper's model predicts a whole pixel per conditional
  (``group_shape="pixel"``, with ``head="logistic_mixture"`` coupling R -> G -> B inside the head):
  the streams hide the whole current pixel. With ``group_shape=None`` on a colour image (one
  conditional per sub-pixel, R -> G -> B) the streams still hide the whole pixel; the output layer
  of sub-pixel c reads the last ``ul`` map plus a 1x1 type-A channel-masked projection of its
  pixel's input, so G reads R and B reads R and G, then elu and a 1x1 nin of its own per channel.
  Grey images have one channel: the two are the same (and the output is the paper's
  nin(elu(ul)) exactly).
- **Default head.** ``head=None`` gives the discretized logistic mixture (the paper's likelihood,
  ``num_mixture_components`` logistics, default 10) when K >= 16 and each conditional is a whole
  pixel (grey images, or ``group_shape="pixel"``); otherwise the base default (Bernoulli for K = 2,
  categorical). Any head can be named explicitly.
- **Weight normalization** of every convolution (as in the paper), so the scale of the signal
  through dozens of blocks is set by the learned gains; without the paper's data-dependent
  initialization: the weights start as PyTorch's defaults, with the second convolution of every
  block scaled by 0.1 as the reference code's ``init_scale=0.1`` does (residual branches start small).
- **Dropout** defaults to 0 (the paper: 0.5 on CIFAR-10, a large model on a large data set).

Sampling is cached (in the spirit of Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models"), exact to float rounding. Every map of the network keeps a buffer. At
resolution l (2^l times coarser) a ``u`` value in row k depends only on the image rows < 2^l k, and
a ``ul`` value at (k, j) only on the pixels before (2^l k, 2^l j) in raster order. So

- at the first pixel of image row r, the ``u`` stream is computed for its rows r / 2^l at the
  resolutions l with 2^l dividing r (whole rows, from complete rows above);
- at every pixel (r, c), the ``ul`` stream is computed at the single position (r / 2^l, c / 2^l) of
  the resolutions l with 2^l dividing both r and c: the only ``ul`` values that the pixel just
  sampled completes (each earlier position was final when computed).

A step therefore costs one position of the ``ul`` stream (plus, once per row, one row of ``u``)
instead of a full pass: sampling a whole image costs a few full passes' worth of arithmetic rather
than H x W of them (measured on 28 x 28, batch 16, channels 64: ~250x faster than the default step).
The weights are normalized once per sampling run (the state holds them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.distributions import output_head
from chainrule.inference.state import Static
from chainrule.models.base import select_layers
from chainrule.models.config import ModelConfig, input_encoding, positive, probability
from chainrule.models.image import ImageModel
from chainrule.models.registry import register
from chainrule.nn.pixel import Pointwise, down_shift
from chainrule.nn.pixelcnnpp import (
    GatedResnet,
    ShiftedConv2d,
    ShiftedConvTranspose2d,
    WNPointwise,
    right_shift,
    sampling_weights,
)

U_KERNEL = (2, 3)  # the down stream's blocks
UL_KERNEL = (2, 2)  # the down-right stream's blocks
#: From this many values on, the default head of whole-pixel conditionals is the logistic mixture.
LOGISTIC_DEFAULT_MIN_VALUES = 16


@dataclass(frozen=True)
class PixelCNNPlusPlusConfig(ModelConfig):
    channels: int = positive()
    num_resnets: int = positive()
    num_resolutions: int = positive()
    dropout: float = probability()
    input_encoding: str = input_encoding()


@register
class PixelCNNPlusPlus(ImageModel):
    """PixelCNN++: down and down-right streams of gated ResNet blocks over several resolutions.

    Args:
        channels: feature maps F of both streams (the paper's ``nr_filters``: 160; formerly
            ``filters``, deprecated).
        num_resnets: gated ResNet blocks per resolution and stream on the down pass (the paper: 5;
            the up pass has one more per resolution except the coarsest).
        num_resolutions: resolutions, each half the size of the one above, rounded up (the paper: 3).
        dropout: dropout probability inside every block (the paper: 0.5; default 0, for small data).
        input_encoding: "value" (the pixel value scaled to [0, 1]), "onehot" or "auto".
        common options (group_shape, head, num_mixture_components, num_classes, context_shape, ...):
            see :class:`~chainrule.models.base.AutoregressiveModel`; the order is always raster.
            ``group_shape="pixel"`` with ``head="logistic_mixture"`` is the paper's model (the
            default head for K >= 16 on whole pixels; see the module docstring).

    ``forward_embedded``: ``(B, G, S * E)`` -> ``(B, G, P)``, one pass over the image.
    """

    name = "pixelcnnpp"
    mixed_precision = True
    config_class = PixelCNNPlusPlusConfig
    tiny_hyperparameters = {"channels": 8, "num_resnets": 1, "num_resolutions": 2}
    renamed_hyperparameters = {"filters": "channels"}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, channels: int = 160, num_resnets: int = 5,
                 num_resolutions: int = 3, dropout: float = 0.0, input_encoding: str = "value",
                 **common: Any) -> None:
        super().__init__(shape, num_values, input_encoding=input_encoding, **common)  # validates its config too
        if common.get("head") is None and num_values is not None and num_values >= LOGISTIC_DEFAULT_MIN_VALUES \
                and self.channel_groups == 1:
            # the paper's likelihood for whole pixels with many values (256 logits per channel otherwise)
            self.head = output_head(num_values, common.get("num_mixture_components"), self.group_size,
                                    "logistic_mixture")
        # (self.channels is the image's C)
        self.stream_channels, self.num_resnets, self.num_resolutions = channels, num_resnets, num_resolutions
        sizes = [(self.height, self.width)]
        for _ in range(num_resolutions - 1):
            h, w = sizes[-1]
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        self.sizes: list[tuple[int, int]] = sizes
        f, c, r = channels, self.context_dim, num_resolutions

        def blocks(count: int, right: bool, skip: int) -> nn.ModuleList:
            return nn.ModuleList(GatedResnet(f, UL_KERNEL if right else U_KERNEL, right, skip, c, dropout)
                                 for _ in range(count))

        x_maps = self.in_maps + 1  # the input features and a channel of ones
        self.first_u = ShiftedConv2d(x_maps, f, (2, 3))  # then shifted down: rows above
        self.first_ul_above = ShiftedConv2d(x_maps, f, (1, 3))  # then shifted down: the row above
        self.first_ul_left = ShiftedConv2d(x_maps, f, (2, 1), right=True)  # then shifted right: pixels to the left
        self.down_u = nn.ModuleList(blocks(num_resnets, False, 0) for _ in range(r))
        self.down_ul = nn.ModuleList(blocks(num_resnets, True, f) for _ in range(r))
        self.shrink_u = nn.ModuleList(ShiftedConv2d(f, f, U_KERNEL, stride=2) for _ in range(r - 1))
        self.shrink_ul = nn.ModuleList(ShiftedConv2d(f, f, UL_KERNEL, right=True, stride=2) for _ in range(r - 1))
        # up[l]: the blocks at resolution l (num_resnets + 1 except at the coarsest, as in the paper)
        self.up_u = nn.ModuleList(blocks(num_resnets + (l < r - 1), False, f) for l in range(r))
        self.up_ul = nn.ModuleList(blocks(num_resnets + (l < r - 1), True, 2 * f) for l in range(r))
        self.grow_u = nn.ModuleList(ShiftedConvTranspose2d(f, f, U_KERNEL) for _ in range(r - 1))  # grow[l]: l+1 -> l
        self.grow_ul = nn.ModuleList(ShiftedConvTranspose2d(f, f, UL_KERNEL, right=True) for _ in range(r - 1))
        # Sub-pixel conditionals on colour: the streams hide the whole pixel, so the output layer of
        # sub-pixel c also reads a type-A masked 1x1 projection of its pixel's input (G: R; B: R, G).
        g = self.channel_groups
        self.subpixel = Pointwise(self.in_maps, f * g, g, "A") if g > 1 else None
        self.out = nn.ModuleList(WNPointwise(f, self.head.num_params) for _ in range(g))  # one nin per channel group

    # ------------------------------------------------------------------ the full pass
    def _input(self, e: torch.Tensor) -> torch.Tensor:
        """``(B, G, S * E)`` -> the input maps with the ones channel ``(B, E * C + 1, H, W)``."""
        x = self.image_features(e)
        return torch.cat([x, torch.ones_like(x[:, :1])], 1)

    def _skips(self, l: int) -> list[int]:
        """Index into the down-pass maps of resolution l (0: its entry, b + 1: after block b) that each
        up-pass block at l reads, in order: the down pass popped in reverse."""
        n = self.num_resnets
        return list(range(n - 1, -1, -1)) if l == self.num_resolutions - 1 else list(range(n, -1, -1))

    def _streams(self, x: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The ``ul`` maps at full resolution ``(B, F, H, W)``: the first map, after every down-pass
        block, after every up-pass block (the last one feeds the output)."""
        bias = GatedResnet.context_bias
        u = down_shift(self.first_u(x))
        ul = down_shift(self.first_ul_above(x)) + right_shift(self.first_ul_left(x))
        us: list[list[torch.Tensor]] = []  # us[l][b]: down-pass maps of resolution l
        uls: list[list[torch.Tensor]] = []
        features = [ul]
        for l in range(self.num_resolutions):
            if l:
                u, ul = self.shrink_u[l - 1](u), self.shrink_ul[l - 1](ul)
            us.append([u])
            uls.append([ul])
            for bu, bul in zip(self.down_u[l], self.down_ul[l]):
                u = bu(u, None, bias(bu, context))
                ul = bul(ul, u, bias(bul, context))
                us[l].append(u)
                uls[l].append(ul)
                if l == 0:
                    features.append(ul)
        for l in reversed(range(self.num_resolutions)):
            if l < self.num_resolutions - 1:
                u, ul = self.grow_u[l](u, self.sizes[l]), self.grow_ul[l](ul, self.sizes[l])
            for bu, bul, s in zip(self.up_u[l], self.up_ul[l], self._skips(l)):
                u = bu(u, us[l][s], bias(bu, context))
                ul = bul(ul, torch.cat([u, uls[l][s]], 1), bias(bul, context))
                if l == 0:
                    features.append(ul)
        return features

    def _hidden(self, ul: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output layer's input per channel group, ``(B, F, Gc, ...)``, from the last ``ul`` map
        ``(B, F, ...)`` and the input ``x`` ``(B, E * C [+ 1], ...)`` (maps, or one pixel): ``ul``
        itself, plus on sub-pixel models the masked projection of the pixel's earlier channels."""
        h = ul.unsqueeze(2)
        if self.subpixel is not None:
            p = self.subpixel(x[:, :self.in_maps])  # (B, F * Gc, ...): channel q * Gc + g is in group g
            h = h + p.reshape(ul.shape[0], self.stream_channels, self.channel_groups, *ul.shape[2:])
        return h

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self._input(e)
        h = self._hidden(self._streams(x, context)[-1], x)  # (B, F, Gc, H, W)
        out = torch.stack([nin(F.elu(h[:, :, g])) for g, nin in enumerate(self.out)], 2)  # (B, P, Gc, H, W)
        return self.params_from_maps(out.flatten(1, 2))  # channel p * Gc + g

    def features(self, x: torch.Tensor, context: Any = None,
                 layer: int | Sequence[int] = -1) -> torch.Tensor | list[torch.Tensor]:
        """Hidden features of every group's conditional, ``(B, G, F)`` (F: the ``channels`` hyperparameter); a sequence of layers
        gives a list of them from one pass (:func:`select_layers`).

        ``layer`` indexes the full-resolution ``ul`` maps (shared by the sub-pixels of a pixel):
        0 the first convolutions, 1..num_resnets the down-pass blocks, then the up-pass blocks at
        full resolution; the last of them is what the output layer reads. On colour images with
        sub-pixel conditionals (``group_shape=None``) there is one more, the default (-1): the output
        layer's input per sub-pixel, that ``ul`` map plus the masked projection of its pixel's
        earlier channels."""
        x, _ = self.validate(x)
        xin = self._input(self.group_features(self.embed(x)))
        maps = self._streams(xin, self.context_features(context, x.shape[0]))
        if self.subpixel is not None:
            maps.append(self._hidden(maps[-1], xin))
        hw = self.height * self.width
        col = self._group_pixel + (self._var_channel[:, 0] * hw if self.subpixel is not None else 0)

        def per_group(h: torch.Tensor) -> torch.Tensor:
            if h.dim() == 4:  # (B, F, H, W): one vector per pixel
                h = h.unsqueeze(2).expand(-1, -1, self.channel_groups, -1, -1)
            h = h.flatten(2)  # (B, F, Gc * H * W): channel group c, pixel p at c * H * W + p
            return h[:, :, col.to(h.device)].transpose(1, 2)

        return select_layers(maps, layer, "0 = the first convolutions", per_group)

    # ------------------------------------------------------------------ cached sampling
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        like = self.out[0].v
        f, r = self.stream_channels, self.num_resolutions

        def maps(l: int, count: int, channels: int = f) -> list[torch.Tensor]:
            h, w = self.sizes[l]  # channels last: a position's features, and a window's rows, are contiguous
            return [like.new_zeros(n, channels, h, w).to(memory_format=torch.channels_last) for _ in range(count)]

        def biases(stage: nn.ModuleList) -> list[list[torch.Tensor]] | None:
            return None if context is None else [[b.context(context) for b in level] for level in stage]

        x = like.new_zeros(n, self.in_maps + 1, self.height, self.width).to(memory_format=torch.channels_last)
        x[:, -1] = 1.0  # the ones channel
        # the weights normalized once for the run (a Static entry: not per example)
        state: dict[str, Any] = {"x": x, "order": Static(order.tolist()), "weights": Static(sampling_weights(self))}
        for s in ("u", "ul"):
            down, up = getattr(self, f"down_{s}"), getattr(self, f"up_{s}")
            state[s] = {
                "down": [maps(l, len(down[l]) + 1) for l in range(r)],  # entry, then after every block
                # [the entry (not at the coarsest: it starts from down[-1])], then after every block
                "up": [maps(l, len(up[l]) + (l < r - 1)) for l in range(r)],
                "down_hidden": [maps(l, len(down[l]), 2 * f) for l in range(r)],  # the blocks' second-conv inputs
                "up_hidden": [maps(l, len(up[l]), 2 * f) for l in range(r)],
                "down_bias": biases(down),
                "up_bias": biases(up),
            }
        return state

    def _levels(self, r: int, c: int | None = None) -> int:
        """How many resolutions a pixel of row r (at column c) changes: the l with 2^l dividing r (and c)."""
        levels = 1
        while levels < self.num_resolutions and r % (1 << levels) == 0 and (c is None or c % (1 << levels) == 0):
            levels += 1
        return levels

    def _cached_pass(self, state: Any, s: str, r: int, c: int) -> None:
        """Stream ``s`` into its buffers where pixel (r, c) is the next to be predicted.

        ``s = "u"`` (at the first pixel of row r): whole rows, row r >> l at every resolution l with
        2^l dividing r (the rows those are computed from are complete). ``s = "ul"`` (every pixel):
        the one position (r >> l, c >> l) at every resolution l with 2^l dividing r and c, the only
        ``ul`` values that the pixels sampled so far complete; every earlier position is final.
        """
        row = s == "u"
        st, x, u, wc = state[s], state["x"], state["u"], state["weights"].value
        down, up = getattr(self, f"down_{s}"), getattr(self, f"up_{s}")
        shrink, grow = getattr(self, f"shrink_{s}"), getattr(self, f"grow_{s}")
        last, levels = self.num_resolutions - 1, self._levels(r, None if row else c)

        def block_at(block: GatedResnet, inp: torch.Tensor, a: torch.Tensor | None, hidden: torch.Tensor,
                     k: int, j: int, bias: torch.Tensor | None) -> torch.Tensor:
            return block.row(inp, a, hidden, k, bias, wc) if row else block.at(inp, a, hidden, k, j, bias, wc)

        for l in range(levels):
            k, j, maps = r >> l, c >> l, st["down"][l]
            at = (slice(None), slice(None), slice(k, k + 1)) if row else (slice(None), slice(None), k, j)
            if l == 0:
                maps[0][at] = self._first_cached(x, row, r, c, wc)
            elif row:
                maps[0][at] = shrink[l - 1].row(st["down"][l - 1][-1], k, weights=wc)
            else:
                maps[0][at] = shrink[l - 1].at(st["down"][l - 1][-1], k, j, weights=wc)
            for b, block in enumerate(down[l]):
                a = None if row else u["down"][l][b + 1][at]
                bias = None if st["down_bias"] is None else st["down_bias"][l][b]
                maps[b + 1][at] = block_at(block, maps[b], a, st["down_hidden"][l][b], k, j, bias)
        for l in reversed(range(levels)):
            k, j, maps = r >> l, c >> l, st["up"][l]
            at = (slice(None), slice(None), slice(k, k + 1)) if row else (slice(None), slice(None), k, j)
            if l < last:  # the entry: the coarser resolution's last map, upsampled
                coarse = st["up"][l + 1][-1]
                maps[0][at] = grow[l].row(coarse, k, self.sizes[l][1], wc) if row else grow[l].at(coarse, k, j, wc)
                inputs = maps
            else:  # the coarsest resolution starts from the end of the down pass
                inputs = [st["down"][l][-1]] + maps
            for b, (block, sk) in enumerate(zip(up[l], self._skips(l))):
                skip = st["down"][l][sk][at]
                # ul also reads the u map after the same block (u's up buffers are laid out like these)
                a = skip if row else torch.cat([u["up"][l][b + 1 if l < last else b][at], skip], 1)
                bias = None if st["up_bias"] is None else st["up_bias"][l][b]
                inputs[b + 1][at] = block_at(block, inputs[b], a, st["up_hidden"][l][b], k, j, bias)

    def _first_cached(self, x: torch.Tensor, row: bool, r: int, c: int, wc: Any) -> torch.Tensor:
        """The first ``u`` map's row r ``(n, F, 1, W)`` (``row``), or the first ``ul`` map at (r, c), ``(n, F)``."""
        n, f = x.shape[0], self.stream_channels
        if row:  # shifted down: row 0 is zeros
            return self.first_u.row(x, r - 1, weights=wc) if r else x.new_zeros(n, f, 1, self.width)
        out = x.new_zeros(n, f)
        if r:  # the row above, shifted down
            out = out + self.first_ul_above.at(x, r - 1, c, weights=wc)
        if c:  # the pixels to the left, shifted right
            out = out + self.first_ul_left.at(x, r, c - 1, weights=wc)
        return out

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        order, x = state["order"].value, state["x"]
        if x_prev is not None:
            r, c, _ = self.locate(order[i - 1])
            maps, values = self.input_at(x_prev, order[i - 1])
            x[:, maps, r, c] = values.to(x.dtype)
        r, c, g = self.locate(order[i])
        if g == 0:  # the streams hide the whole pixel: its later sub-pixels reuse them
            if c == 0:  # a new row: the rows above are complete, and the u stream reads nothing else
                self._cached_pass(state, "u", r, c)
            self._cached_pass(state, "ul", r, c)
        h = self._hidden(state["ul"]["up"][0][-1][:, :, r, c], x[:, :, r, c])  # (n, F, Gc)
        return self.out[g](F.elu(h[:, :, g]), state["weights"].value), state
