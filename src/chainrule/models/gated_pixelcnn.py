"""Gated PixelCNN (van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016,
"Conditional Image Generation with PixelCNN Decoders").

Two stacks per layer (:class:`~chainrule.nn.pixel.GatedStackLayer`): a vertical stack that reads
every row above and a horizontal stack that reads the pixels to the left in the current row,
linked by a one-row down-shift, with gated tanh * sigmoid units and residual connections in the
horizontal stack. Together they see every earlier pixel (no blind spot), once the stacks reach
far enough: the vertical stack climbs k//2 rows per layer and the horizontal one k//2 columns.
A class label or a context tensor enters every gate as a learned bias (conditional PixelCNN).

Sampling is cached: when a row is complete, the vertical stack is computed for that row at every
layer (it only feeds the rows below); each pixel then runs the horizontal stack at that pixel
only, from the windows its layers keep.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.inference.state import Static
from chainrule.models.image import ImageModel, MaskedConvConfig
from chainrule.models.registry import register
from chainrule.nn.pixel import GatedStackLayer, gate


@register
class GatedPixelCNN(ImageModel):
    """Gated PixelCNN: vertical and horizontal stacks, gated units, optional class conditioning.

    Args:
        channels: p, feature maps of each stack (a multiple of C on colour images).
        num_layers: gated layers (the first one with ``first_kernel_size`` and a type-A horizontal mask).
        kernel_size: kernel of the layers after the first (odd).
        first_kernel_size: kernel of the first layer (odd; 7 as in PixelCNN).
        head_channels: feature maps of the hidden 1x1 output layer.
        input_encoding: "value" (the pixel value scaled to [0, 1]), "onehot" or "auto".
        common options (group_shape, head, num_classes, context_shape, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`; the order is always raster.
    """

    name = "gated_pixelcnn"
    mixed_precision = True
    config_class = MaskedConvConfig
    tiny_hyperparameters = {"channels": 6, "num_layers": 3, "head_channels": 6, "first_kernel_size": 3}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, channels: int = 64, num_layers: int = 12,
                 kernel_size: int = 3, first_kernel_size: int = 7, head_channels: int = 64,
                 input_encoding: str = "value", **common: Any) -> None:
        super().__init__(shape, num_values, input_encoding=input_encoding, **common)  # validates its config too
        g = self.channel_groups
        if channels % g or head_channels % g:
            raise InputError(f"channels and head_channels must be multiples of the {g} channel groups "
                             f"(R -> G -> B), got {channels} and {head_channels}")
        self.layers = nn.ModuleList(
            GatedStackLayer(self.in_maps if k == 0 else channels, channels,
                            first_kernel_size if k == 0 else kernel_size, g, first=(k == 0), context_dim=self.context_dim)
            for k in range(num_layers))
        self.build_output(channels, head_channels)

    def trunk(self, e: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The horizontal stack's feature maps after every layer, ``(B, p, H, W)`` each."""
        v = h = self.image_features(e)
        hs = []
        for layer in self.layers:
            v, h = layer(v, h, context)
            hs.append(h)
        return hs

    # ------------------------------------------------------------------ cached sampling
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        like = self.head_out.linear.weight
        hh, ww = self.height, self.width
        return {
            "v": [layer.vertical.new_cache(n, hh, ww, like) for layer in self.layers],  # inputs of the vertical convs
            "h": [layer.horizontal.new_cache(n, hh, ww, like) for layer in self.layers],  # inputs of the horizontal convs
            "link": [like.new_zeros(n, 2 * layer.out.linear.in_features, ww) for layer in self.layers],  # this row's
            "context": None if context is None else [layer.context(context) for layer in self.layers],
            "weights": Static([(layer.vertical.masked_weight(), layer.horizontal.masked_weight()) for layer in self.layers]),
            "order": Static(order.tolist()),
        }

    def _vertical_row(self, state: Any, r: int) -> None:
        """Row r of the image is complete: run the vertical stack on it, and set the links that row
        r + 1 reads (row 0 reads the links of a zero row: their bias)."""
        weights, ctx = state["weights"].value, state["context"]
        for k, layer in enumerate(self.layers):
            if r < 0:
                pre = state["link"][k].new_zeros(state["link"][k].shape)
            else:
                pre = layer.vertical.row(state["v"][k], r, weights[k][0])  # (n, 2p, W)
            state["link"][k] = layer.link(pre.transpose(1, 2)).transpose(1, 2)
            if r >= 0 and k + 1 < len(self.layers):
                if ctx is not None:
                    pre = pre + ctx[k][:, :, None]
                self.layers[k + 1].vertical.write_row(state["v"][k + 1], r, gate(pre))

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        order, weights, ctx = state["order"].value, state["weights"].value, state["context"]
        first = self.layers[0]
        if x_prev is not None:
            r, c, _ = self.locate(order[i - 1])
            maps, values = self.input_at(x_prev, order[i - 1])
            values = values.to(state["v"][0].dtype)
            state["v"][0][:, maps, r + first.vertical.pad_top, c + first.vertical.pad_side] = values
            state["h"][0][:, maps, r, c + first.horizontal.pad_side] = values
        r, c, g = self.locate(order[i])
        if c == 0 and g == 0:  # the first sub-pixel of row r: row r - 1 is complete
            self._vertical_row(state, r - 1)
        h = None
        for k, layer in enumerate(self.layers):
            pre = layer.horizontal.at(state["h"][k], r, c, weights[k][1]) + state["link"][k][:, :, c]
            if ctx is not None:
                pre = pre + ctx[k]
            out = layer.out(gate(pre))
            h = out if layer.first else h + out
            if k + 1 < len(self.layers):
                self.layers[k + 1].horizontal.write(state["h"][k + 1], r, c, h)
        return self.group_params(self.output(h), g), state
