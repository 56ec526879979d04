"""What the convolutional image architectures share: images in, feature maps, and back to the
contract's ``(B, G, P)`` parameters; the bookkeeping of the incremental step over pixels.

An image model reads a ``(C, H, W)`` event in the one image order, raster and pixel-major (pixels
row by row, R -> G -> B inside each pixel), with either

- one conditional per sub-pixel (``group_shape=None``): the network keeps C channel groups
  (:mod:`chainrule.nn.pixel`) so that G sees R of its own pixel and B sees R and G, or
- one conditional per pixel (``group_shape="pixel"``): a joint head over the C channels (PixelCNN++'s
  discretized logistic mixture couples them itself), and the network hides the whole pixel.

Feature-map layout: input features are ``(B, E * C, H, W)`` with channel ``e * C + c`` the e-th
feature of channel c (interleaved, so channel c is in group c); outputs are ``(B, P * Gc, H, W)``
with channel ``p * Gc + g`` parameter p of channel group g (Gc = C or 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, centred_kernel, input_encoding, positive
from chainrule.nn.pixel import Pointwise


@dataclass(frozen=True)
class MaskedConvConfig(ModelConfig):
    """The hyperparameters of a stack of masked convolutions (PixelCNN, Gated PixelCNN)."""

    channels: int = positive()
    num_layers: int = positive()
    kernel_size: int = centred_kernel()
    first_kernel_size: int = centred_kernel()
    head_channels: int = positive()
    input_encoding: str = input_encoding()


class ImageModel(AutoregressiveModel):
    """Base of the convolutional image models (not registered itself); see the module docstring."""

    image_only: ClassVar[bool] = True
    fixed_order: ClassVar[str | None] = "raster"
    supports_context: ClassVar[bool] = True  # each architecture conditions its layers on it
    supports_tensor_context: ClassVar[bool] = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None, input_encoding: str = "value",
                 **common: Any) -> None:
        super().__init__(shape, num_values, **common)
        if not self.groups.trivial and self.groups.group_shape != (self.shape[0], 1, 1):
            raise InputError(f"{self.name} predicts one sub-pixel or one whole pixel per conditional: group_shape "
                             f"must be None or 'pixel', got {self.groups.group_shape}")
        self.channels, self.height, self.width = self.shape
        self.channel_groups = self.channels if self.groups.trivial else 1
        self.embed_size = self.set_input_encoding(input_encoding)
        self.in_maps = self.embed_size * self.channels
        # for the step: the flat variables of every group as (channel, row, col), and their input maps
        var = self.groups.index  # (G, S)
        self._var_channel = var // (self.height * self.width)
        pixel = var % (self.height * self.width)
        self._group_pixel = pixel[:, 0]  # every variable of a group lies in one pixel

    # ------------------------------------------------------------------ the network's shared ends
    def trunk(self, e: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The architecture's hidden maps after each of its layers, ``(B, F, H, W)`` each; the last
        feeds the output head (subclasses implement it)."""
        raise NotImplementedError

    def build_output(self, channels: int, head_channels: int) -> None:
        """The output layers of the PixelCNN family: ReLU, 1x1 type B (F -> head_channels), ReLU,
        1x1 type B (-> P * Gc), channel groups kept."""
        self.head_hidden = Pointwise(channels, head_channels, self.channel_groups)
        self.head_out = Pointwise(head_channels, self.out_maps, self.channel_groups)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden maps ``(B, F, H, W)`` (or one pixel's ``(n, F)``) -> output maps ``(B, P * Gc, H, W)`` (``(n, P * Gc)``)."""
        return self.head_out(F.relu(self.head_hidden(F.relu(h))))

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self.params_from_maps(self.output(self.trunk(e, context)[-1]))

    def features(self, x: torch.Tensor, context: Any = None,
                 layer: int | Sequence[int] = -1) -> torch.Tensor | list[torch.Tensor]:
        """The hidden maps after layer ``layer`` of :meth:`trunk` (default the last) as the
        features that predict each group, ``(B, G, F)`` (see :meth:`features_per_group`); a
        sequence of layers gives a list of them from one pass (:func:`select_layers`)."""
        x, _ = self.validate(x)
        hs = self.trunk(self.group_features(self.embed(x)), self.context_features(context, x.shape[0]))
        return select_layers(hs, layer, "0 = the first layer", self.features_per_group)

    # ------------------------------------------------------------------ layout
    def image_features(self, e: torch.Tensor) -> torch.Tensor:
        """``(B, G, S * E)`` group features -> input feature maps ``(B, E * C, H, W)`` (interleaved)."""
        b = e.shape[0]
        flat = self.groups.scatter(e.reshape(b, self.num_groups, self.group_size, self.embed_size))  # (B, D, E)
        maps = flat.reshape(b, self.channels, self.height, self.width, self.embed_size)
        return maps.permute(0, 4, 1, 2, 3).reshape(b, self.in_maps, self.height, self.width)

    def params_from_maps(self, out: torch.Tensor) -> torch.Tensor:
        """Output maps ``(B, P * Gc, H, W)`` -> the contract's parameters ``(B, G, P)`` (group index order)."""
        b, p = out.shape[0], self.head.num_params
        out = out.reshape(b, p, self.channel_groups, self.height, self.width).permute(0, 2, 3, 4, 1)
        return out.reshape(b, self.num_groups, p)

    def features_per_group(self, maps: torch.Tensor) -> torch.Tensor:
        """Hidden maps ``(B, F, H, W)`` -> the features that predict each group, ``(B, G, F)``: the
        maps at the group's pixel; for a sub-pixel conditional of channel c only the maps of
        channel groups <= c (the others read the pixel's later sub-pixels; they are zeroed)."""
        f = maps.flatten(2).transpose(1, 2)[:, self._group_pixel.to(maps.device)]  # (B, G, F)
        if self.channel_groups == 1:
            return f
        keep = (torch.arange(f.shape[-1], device=f.device) % self.channel_groups)[None, :] <= \
            self._var_channel[:, :1].to(f.device)  # (G, F)
        return f * keep

    @property
    def out_maps(self) -> int:
        return self.head.num_params * self.channel_groups

    # ------------------------------------------------------------------ the step's bookkeeping
    def locate(self, group: int) -> tuple[int, int, int]:
        """Group index -> (row, column, channel group) of the pixel it lies in."""
        pixel = int(self._group_pixel[group])
        c = int(self._var_channel[group, 0]) if self.groups.trivial else 0
        return pixel // self.width, pixel % self.width, c

    def input_at(self, x_prev: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The input maps a group's values ``(n, S)`` set: channel indices ``(E * S,)`` and values ``(n, E * S)``."""
        enc = self.encode_values(x_prev)  # (n, S, E)
        cs = self._var_channel[group].to(enc.device)  # (S,)
        maps = torch.arange(self.embed_size, device=enc.device)[:, None] * self.channels + cs[None, :]  # (E, S)
        return maps.reshape(-1), enc.permute(0, 2, 1).reshape(len(x_prev), -1)

    def group_params(self, out: torch.Tensor, c: int) -> torch.Tensor:
        """One pixel's output ``(n, P * Gc)`` -> the parameters ``(n, P)`` of channel group c."""
        return out.reshape(len(out), self.head.num_params, self.channel_groups)[:, :, c]
