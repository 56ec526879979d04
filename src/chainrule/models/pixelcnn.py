"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", sec. 3.5).

Masked convolutions over the image in raster order: a k x k type-A convolution (the pixel itself
hidden; on colour images R -> G -> B channel masks), residual blocks of type-B convolutions
(ReLU, 1x1 2h -> h, ReLU, k x k h -> h, ReLU, 1x1 h -> 2h, added to the input; the paper's fig. 5)
and two 1x1 type-B layers to the output head. It has the PixelCNN's blind spot (pixels up and to
the right beyond the kernel's reach are never seen); ``gated_pixelcnn`` removes it.

Sampling is cached: every convolution keeps its input in a padded buffer, and a step computes each
layer at the new pixel only, from the window it reads (all earlier pixels, already computed), so
drawing an image costs one pass of the network over it rather than one pass per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.inference.state import Static
from chainrule.models.config import non_negative
from chainrule.models.image import ImageModel, MaskedConvConfig
from chainrule.models.registry import register
from chainrule.nn.pixel import MaskedConv2d, Pointwise


class ResidualBlock(nn.Module):
    """ReLU -> 1x1 (2h -> h) -> ReLU -> k x k type B (h -> h) [+ context] -> ReLU -> 1x1 (h -> 2h), plus the input.

    Shapes: ``(B, 2h, H, W)`` -> ``(B, 2h, H, W)``; the cached form works on one pixel ``(n, 2h)``.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, context_dim: int) -> None:
        super().__init__()
        half = channels // 2
        self.reduce = Pointwise(channels, half, groups)
        self.conv = MaskedConv2d(half, half, kernel_size, "B", groups)
        self.expand = Pointwise(half, channels, groups)
        self.context = nn.Linear(context_dim, half, bias=False) if context_dim else None

    def forward(self, h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        t = self.conv(F.relu(self.reduce(F.relu(h))))
        if self.context is not None:
            t = t + self.context(context)[:, :, None, None]
        return h + self.expand(F.relu(t))

    def at(self, h: torch.Tensor, cache: torch.Tensor, i: int, j: int, context_bias: torch.Tensor | None,
           weight: torch.Tensor) -> torch.Tensor:
        """The block at pixel (i, j): ``h`` ``(n, 2h)``; ``cache`` holds the masked convolution's input."""
        self.conv.write(cache, i, j, F.relu(self.reduce(F.relu(h))))
        t = self.conv.at(cache, i, j, weight)
        if context_bias is not None:
            t = t + context_bias
        return h + self.expand(F.relu(t))


@dataclass(frozen=True)
class PixelCNNConfig(MaskedConvConfig):
    num_layers: int = non_negative()  # no residual block at all is a PixelCNN too


@register
class PixelCNN(ImageModel):
    """PixelCNN: masked convolutions with residual blocks.

    Args:
        channels: 2h, the feature maps between blocks (a multiple of 2 * C on colour images).
        num_layers: residual blocks (formerly ``num_blocks``, deprecated).
        kernel_size: kernel of the blocks' masked convolutions (odd).
        first_kernel_size: kernel of the first, type-A convolution (odd; the paper: 7).
        head_channels: feature maps of the hidden 1x1 output layer.
        input_encoding: "value" (the pixel value scaled to [0, 1]), "onehot" or "auto".
        common options (group_shape, head, num_classes, context_shape, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`; the order is always raster.
    """

    name = "pixelcnn"
    mixed_precision = True
    config_class = PixelCNNConfig
    tiny_hyperparameters = {"channels": 12, "num_layers": 2, "head_channels": 6, "first_kernel_size": 3}
    renamed_hyperparameters = {"num_blocks": "num_layers"}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, channels: int = 64, num_layers: int = 8,
                 kernel_size: int = 3, first_kernel_size: int = 7, head_channels: int = 64,
                 input_encoding: str = "value", **common: Any) -> None:
        super().__init__(shape, num_values, input_encoding=input_encoding, **common)  # validates its config too
        g = self.channel_groups
        if channels % (2 * g) or head_channels % g:
            raise InputError(f"channels must be a multiple of {2 * g} and head_channels of {g} "
                             f"(2 x the {g} channel groups of R -> G -> B), got {channels} and {head_channels}")
        self.first = MaskedConv2d(self.in_maps, channels, first_kernel_size, "A", g)
        self.blocks = nn.ModuleList(ResidualBlock(channels, kernel_size, g, self.context_dim) for _ in range(num_layers))
        self.build_output(channels, head_channels)
        self.context = nn.Linear(self.context_dim, channels, bias=False) if self.conditional else None

    def trunk(self, e: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The feature maps after the first layer and after every block, ``(B, 2h, H, W)`` each."""
        h = self.first(self.image_features(e))
        if self.context is not None:
            h = h + self.context(context)[:, :, None, None]
        hs = [h]
        for block in self.blocks:
            hs.append(block(hs[-1], context))
        return hs

    # ------------------------------------------------------------------ cached sampling
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        like = self.first.weight
        h, w = self.height, self.width
        return {
            "x": self.first.new_cache(n, h, w, like),
            "blocks": [b.conv.new_cache(n, h, w, like) for b in self.blocks],
            "context": None if context is None else [self.context(context)] + [b.context(context) for b in self.blocks],
            "weights": Static([self.first.masked_weight()] + [b.conv.masked_weight() for b in self.blocks]),
            "order": Static(order.tolist()),
        }

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        order, weights, ctx = state["order"].value, state["weights"].value, state["context"]
        if x_prev is not None:
            r, c, _ = self.locate(order[i - 1])
            maps, values = self.input_at(x_prev, order[i - 1])
            state["x"][:, maps, r + self.first.pad_top, c + self.first.pad_side] = values.to(state["x"].dtype)
        r, c, g = self.locate(order[i])
        # the whole pixel is recomputed at each of its sub-pixel steps; channel group g only reads
        # the sub-pixels before it, already written
        h = self.first.at(state["x"], r, c, weights[0])
        if ctx is not None:
            h = h + ctx[0]
        for k, block in enumerate(self.blocks):
            h = block.at(h, state["blocks"][k], r, c, None if ctx is None else ctx[k + 1], weights[k + 1])
        return self.group_params(self.output(h), g), state
