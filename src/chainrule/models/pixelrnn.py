"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks",
sec. 3.1-3.2 and fig. 5): two-dimensional LSTMs over the image in raster order.

Both models share the plumbing of :class:`_PixelRNN` (the paper's table 1)::

    x (B, E*C, H, W) -> first: k0 x k0 type-A masked conv -> s_0 (B, 2h, H, W)
    s_l = s_{l-1} + out_l(LSTM_l(s_{l-1}))     LSTM_l: (B, 2h, H, W) -> (B, h, H, W); out_l: 1x1 type B h -> 2h
    ReLU -> 1x1 type B (2h -> head_channels) -> ReLU -> 1x1 type B (-> P * Gc) -> params (B, G, P)

An LSTM layer computes the four gates i, f, o, g (4h maps) as input-to-state + state-to-state
(+ a learned context bias: ``Linear(context_dim, 4h)`` per direction), then
``c = sigma(f) * c_prev + sigma(i) * tanh(g)``, ``h = sigma(o) * tanh(c)``; the input-to-state is
the masked convolution that carries the R -> G -> B channel groups (type B: channel group g of a
pixel reads groups <= g of the same pixel), and the state-to-state reads only *other*, earlier
pixels, so it needs no mask (the paper's "s-s: no mask"). The cell update is elementwise, so the
groups survive it. Channel groups are interleaved (map o is in group o % Gc, see
:mod:`chainrule.nn.pixel`) and every block of h maps starts at a multiple of Gc, hence h must be a
multiple of C on colour images with sub-pixel conditionals.

- ``row_lstm`` (sec. 3.1): the image is processed row by row. Row i's gates at column j are the
  (1 x k) type-B input-to-state convolution of row i (columns j - k//2 .. j, computed for the whole
  image at once) plus a 1-D convolution of kernel k over the hidden states of row i - 1 (columns
  j - k//2 .. j + k//2). Its receptive field is a triangle: pixel (r, c) reads pixel (r', c') of a
  row above only if ``c' <= c + (r - r' - 1) * (k // 2) + k0 // 2``, however deep the network.
- ``diagonal_bilstm`` (sec. 3.2): the input-to-state (1x1 type B, both directions at once) is
  skewed (row i shifted right by i, ``(B, 8h, H, W) -> (B, 8h, H, W + H - 1)``) so that each
  diagonal of the image becomes a column; a column-wise (2 x 1) convolution over the previous
  column's hidden state gives the state-to-state, i.e. the state at (i, j) reads the states at
  (i - 1, j) and (i, j - 1). The second direction runs on the horizontally flipped image (it reads
  (i - 1, j) and (i, j + 1)); its output is shifted down one row before it is added to the first,
  so the layer stays causal.

  One addition to the paper: the first layer's right-to-left direction also reads the pixel values
  themselves (an unmasked 1x1 map of the image, E*C -> 4h). Built literally, nothing at pixel
  (i, j) depends on its own value (type A, then type B), so the right-to-left state of row i - 1,
  whose chain starts at (i - 1, W - 1), never carries the value of (i - 1, W - 1), and pixels
  (i, j < W - 1 - k0//2) could not see the last pixel of the row above, at any depth (measured
  with :func:`chainrule.checks.dependencies`). Shifted down, that direction only reaches rows
  >= i, so reading whole pixels of row i - 1 is causal. With it, one layer already sees every
  earlier pixel (no blind spot; tested), as the paper intends.

Sampling is cached (exact, not a recompute of the image): see :meth:`RowLSTM.step` and
:meth:`DiagonalBiLSTM.step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chainrule.errors import InputError
from chainrule.inference.state import Static
from chainrule.models.config import ModelConfig, centred_kernel, input_encoding, positive
from chainrule.models.image import ImageModel
from chainrule.models.registry import register
from chainrule.nn.pixel import MaskedConv2d, Pointwise, down_shift


def lstm_cell(gates: torch.Tensor, c_prev: torch.Tensor, directions: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM update on gates ``(B, D * 4h, *rest)`` laid out per direction as [i | f | o | g]
    (h maps each) and the previous cells ``(B, D * h, *rest)``: returns ``(h, c)``, ``(B, D * h, *rest)``."""
    b, rest = gates.shape[0], gates.shape[2:]
    i, f, o, g = gates.reshape(b, directions, 4, -1, *rest).unbind(2)  # (B, D, h, *rest) each
    c = torch.sigmoid(f) * c_prev.reshape(i.shape) + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.reshape(b, -1, *rest), c.reshape(b, -1, *rest)


def skew(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H, W + H - 1)`` with row i shifted right by i (zeros elsewhere),
    so that the diagonal i + j = const becomes column i + j. (Padding each row by H and re-reading the
    flat buffer with rows of W + H - 1 shifts row i by exactly i.)"""
    b, c, hh, w = x.shape
    width = w + hh - 1
    return F.pad(x, (0, hh)).flatten(2)[:, :, :hh * width].reshape(b, c, hh, width)


def unskew(y: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`skew`: ``(B, C, H, W + H - 1)`` -> ``(B, C, H, W)``."""
    b, c, hh, w = y.shape
    return F.pad(y.flatten(2), (0, hh)).reshape(b, c, hh, w + 1)[:, :, :, :width]


class RowLSTMLayer(nn.Module):
    """One Row LSTM layer with its residual connection (the paper's fig. 5)::

        gates[:, :, i] = K_is (*) s[:, :, i]  +  K_ss (*) h[i - 1]  (+ context bias)
        h[i], c[i] = LSTM(gates[:, :, i], c[i - 1])                 (rows i = 0..H-1; h[-1] = c[-1] = 0)
        s_out = s + out(h)

    ``K_is``: (1 x k) type-B masked convolution 2h -> 4h over the current row (columns <= j, channel
    groups at the centre), computed for all rows at once; ``K_ss``: 1-D convolution h -> 4h of kernel
    k over the previous row (unmasked: row i - 1 lies wholly before row i).

    Shapes: ``s`` ``(B, 2h, H, W)`` -> ``(B, 2h, H, W)``.
    """

    def __init__(self, hidden: int, kernel_size: int, groups: int, context_dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(2 * hidden, 4 * hidden, (1, kernel_size), "B", groups)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=False)
        self.out = Pointwise(hidden, 2 * hidden, groups)
        self.context = nn.Linear(context_dim, 4 * hidden, bias=False) if context_dim else None
        with torch.no_grad():  # forget gates start open, so cells carry the rows above at init
            self.input_to_state.bias[hidden:2 * hidden] += 1.0

    def forward(self, s: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        pre = self.input_to_state(s)  # (B, 4h, H, W): the whole image at once
        if self.context is not None:
            pre = pre + self.context(context)[:, :, None, None]
        b, _, height, width = s.shape
        h = c = s.new_zeros(b, self.hidden, width)
        hs = []
        for row in pre.unbind(2):  # unbind, not pre[:, :, i]: one backward for all rows, not a full-size one per row
            h, c = lstm_cell(row + self.state_to_state(h), c)
            hs.append(h)
        return s + self.out(torch.stack(hs, 2))


class DiagonalBiLSTMLayer(nn.Module):
    """One Diagonal BiLSTM layer with its residual connection (sec. 3.2, fig. 5)::

        pre = K_is (*) s  (+ context bias)                     1x1 type B, 2h -> 8h (both directions)
        pre[:, 4h:] += K_px (*) x                              first layer only: the pixel values, unmasked
        l2r = unskew(DiagonalLSTM(skew(pre[:, :4h])))           state (i, j) reads (i - 1, j), (i, j - 1)
        r2l = flip(unskew(DiagonalLSTM(skew(flip(pre[:, 4h:])))))   reads (i - 1, j), (i, j + 1)
        s_out = s + out(l2r + down_shift(r2l))

    DiagonalLSTM runs over the W + H - 1 columns of the skewed map; column t's gates add a (2 x 1)
    convolution (h -> 4h, unmasked: the states it reads belong to other, earlier pixels) of column
    t - 1's hidden states; states outside the image (left of column 0) stay zero. Both
    directions run in the same loop (a grouped convolution over the stacked states).

    Shapes: ``s`` ``(B, 2h, H, W)`` (and ``x`` ``(B, pixel_channels, H, W)``, the image's input
    maps, in the first layer) -> ``(B, 2h, H, W)``.
    """

    def __init__(self, hidden: int, groups: int, context_dim: int, pixel_channels: int = 0) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = Pointwise(2 * hidden, 8 * hidden, groups)
        # the first layer's right-to-left direction also reads the pixel values themselves (1x1, no
        # mask): it only reaches the rows below, and without it nothing ever sees the last pixel of
        # the row above (see the module docstring)
        self.pixels = nn.Linear(pixel_channels, 4 * hidden, bias=False) if pixel_channels else None
        # weight (8h, h, 2): [:4h] left-to-right, [4h:] right-to-left; [..., 0] reads the state above,
        # [..., 1] the previous one in the direction of travel
        self.state_to_state = nn.Conv1d(2 * hidden, 8 * hidden, 2, groups=2, bias=False)
        self.out = Pointwise(hidden, 2 * hidden, groups)
        self.context = nn.Linear(context_dim, 8 * hidden, bias=False) if context_dim else None
        with torch.no_grad():  # forget gates start open
            self.input_to_state.linear.bias[hidden:2 * hidden] += 1.0
            self.input_to_state.linear.bias[5 * hidden:6 * hidden] += 1.0

    def forward(self, s: torch.Tensor, context: torch.Tensor | None, x: torch.Tensor | None = None) -> torch.Tensor:
        hd = self.hidden
        pre = self.input_to_state(s)  # (B, 8h, H, W)
        if self.context is not None:
            pre = pre + self.context(context)[:, :, None, None]
        r2l = pre[:, 4 * hd:]
        if self.pixels is not None:
            r2l = r2l + F.conv2d(x, self.pixels.weight[:, :, None, None])
        pre = torch.cat([pre[:, :4 * hd], r2l.flip(-1)], 1)  # right-to-left on the flipped image
        b, _, height, width = s.shape
        # Column t of the skewed map holds image rows t - W < i <= t. The states left of the image
        # (rows i > t) stay exactly zero, the zero padding of the recurrence, with no mask: their
        # gates are 0 (skewed zeros, no state-to-state bias, zero states to read), so c = 0.5 * 0 +
        # 0.5 * tanh(0) = 0 and h = 0. The states right of the image are never read by one inside it.
        sk = skew(pre)  # (B, 8h, H, W + H - 1)
        h = c = s.new_zeros(b, 2 * hd, height)
        hs = []
        for column in sk.unbind(-1):  # unbind: one backward for all columns (see RowLSTMLayer)
            # pad one row on top: output row i reads rows i - 1 (weight [..., 0]) and i (weight [..., 1])
            h, c = lstm_cell(column + self.state_to_state(F.pad(h, (1, 0))), c, directions=2)
            hs.append(h)
        both = unskew(torch.stack(hs, -1), width)  # (B, 2h, H, W)
        return s + self.out(both[:, :hd] + down_shift(both[:, hd:].flip(-1)))


@dataclass(frozen=True)
class DiagonalBiLSTMConfig(ModelConfig):
    hidden_channels: int = positive()
    num_layers: int = positive()
    first_kernel_size: int = centred_kernel()
    head_channels: int = positive()
    input_encoding: str = input_encoding()


@dataclass(frozen=True)
class RowLSTMConfig(DiagonalBiLSTMConfig):
    kernel_size: int = centred_kernel()


class _PixelRNN(ImageModel):
    """What Row LSTM and Diagonal BiLSTM share (not registered): the first type-A convolution, the
    residual stream of 2h maps, the 1x1 output layers and ``features``. Subclasses build
    ``self.layers`` (each ``(B, 2h, H, W), context -> (B, 2h, H, W)``)."""

    tiny_hyperparameters = {"hidden_channels": 6, "num_layers": 2, "head_channels": 6, "first_kernel_size": 3}

    def __init__(self, shape: tuple[int, ...], num_values: int | None, hidden_channels: int, num_layers: int,
                 first_kernel_size: int, head_channels: int, input_encoding: str, **common: Any) -> None:
        super().__init__(shape, num_values, input_encoding=input_encoding, **common)  # validates the config too
        g = self.channel_groups
        if hidden_channels % g or head_channels % g:
            raise InputError(f"hidden_channels and head_channels must be multiples of the {g} channel groups "
                             f"(R -> G -> B), got {hidden_channels} and {head_channels}")
        self.hidden = hidden_channels
        self.first = MaskedConv2d(self.in_maps, 2 * hidden_channels, first_kernel_size, "A", g)
        self.head_hidden = Pointwise(2 * hidden_channels, head_channels, g)
        self.head_out = Pointwise(head_channels, self.out_maps, g)
        self.layers: nn.ModuleList
        self.first_layer_reads_pixels = False

    def trunk(self, e: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """The residual stream after the first convolution and after every layer, ``(B, 2h, H, W)`` each."""
        x = self.image_features(e)
        hs = [self.first(x)]
        for k, layer in enumerate(self.layers):
            hs.append(layer(hs[-1], context, x) if k == 0 and self.first_layer_reads_pixels else layer(hs[-1], context))
        return hs

    def _write_input(self, state: Any, i: int, x_prev: torch.Tensor | None) -> None:
        """Store the values of the group just drawn in the first convolution's padded input buffer."""
        if x_prev is not None:
            group = state["order"].value[i - 1]
            r, c, _ = self.locate(group)
            maps, values = self.input_at(x_prev, group)
            state["x"][:, maps, r + self.first.pad_top, c + self.first.pad_side] = values.to(state["x"].dtype)


@register
class RowLSTM(_PixelRNN):
    """Row LSTM (sec. 3.1): a (1 x k) masked input-to-state and a k-wide state-to-state over the
    row above; a triangular receptive field.

    Args:
        kernel_size: k, the width of the input-to-state and state-to-state kernels (odd; the paper: 3).
        hidden_channels: h, the LSTM's hidden maps (the residual stream has 2h; a multiple of C on
            colour images with sub-pixel conditionals).
        num_layers: LSTM layers (the paper: 7 on MNIST, 12 on CIFAR-10).
        first_kernel_size: kernel of the first, type-A convolution (odd; the paper: 7).
        head_channels: feature maps of the hidden 1x1 output layer.
        input_encoding: "value" (the pixel value scaled to [0, 1]), "onehot" or "auto".
        common options (group_shape, head, num_classes, context_shape, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`; the order is always raster.
    """

    name = "row_lstm"
    config_class = RowLSTMConfig

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, hidden_channels: int = 32,
                 num_layers: int = 4, kernel_size: int = 3, first_kernel_size: int = 7, head_channels: int = 64,
                 input_encoding: str = "value", **common: Any) -> None:
        super().__init__(shape, num_values, hidden_channels, num_layers, first_kernel_size, head_channels,
                         input_encoding, **common)
        self.layers = nn.ModuleList(RowLSTMLayer(hidden_channels, kernel_size, self.channel_groups, self.context_dim)
                                    for _ in range(num_layers))

    # ------------------------------------------------------------------ cached sampling
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        """Per layer: the padded input buffer of its (1 x k) input-to-state convolution, the hidden
        and cell states of the previous row and of the current row, and the state-to-state term of
        the current row (computed once per row)."""
        like, hd, hh, ww = self.head_out.linear.weight, self.hidden, self.height, self.width
        zeros = [like.new_zeros(n, hd, ww) for _ in range(4 * len(self.layers))]
        k = len(self.layers)
        return {
            "x": self.first.new_cache(n, hh, ww, like),
            "inputs": [layer.input_to_state.new_cache(n, hh, ww, like) for layer in self.layers],
            "h_above": zeros[:k], "c_above": zeros[k:2 * k], "h_row": zeros[2 * k:3 * k], "c_row": zeros[3 * k:],
            "above": [like.new_zeros(n, 4 * hd, ww) for _ in self.layers],  # K_ss (*) h[r - 1]; zero for row 0
            "context": None if context is None else [layer.context(context) for layer in self.layers],
            "weights": Static([self.first.masked_weight()]
                              + [layer.input_to_state.masked_weight() for layer in self.layers]),
            "order": Static(order.tolist()),
        }

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Exact incremental pass. When row r starts, row r - 1's states are complete: they become
        "above" and their state-to-state convolution is computed for the whole row. A step at
        pixel (r, c) then computes, layer by layer, the state at (r, c) only: the input-to-state
        from the window of the layer's buffer (columns <= c of row r), plus the row's
        state-to-state term at c. A pixel is recomputed at each of its sub-pixel steps; channel
        group g only reads the sub-pixels before it (the features of a pixel never depend on its
        last sub-pixel, so the last recomputation stores exact states)."""
        self._write_input(state, i, x_prev)
        order, weights, ctx = state["order"].value, state["weights"].value, state["context"]
        r, c, g = self.locate(order[i])
        if c == 0 and g == 0 and r > 0:  # row r - 1 is complete
            for k, layer in enumerate(self.layers):
                state["h_above"][k], state["h_row"][k] = state["h_row"][k], state["h_above"][k]
                state["c_above"][k], state["c_row"][k] = state["c_row"][k], state["c_above"][k]
                state["above"][k] = layer.state_to_state(state["h_above"][k])  # (n, 4h, W)
        s = self.first.at(state["x"], r, c, weights[0])  # (n, 2h)
        for k, layer in enumerate(self.layers):
            layer.input_to_state.write(state["inputs"][k], r, c, s)
            gates = layer.input_to_state.at(state["inputs"][k], r, c, weights[k + 1]) + state["above"][k][:, :, c]
            if ctx is not None:
                gates = gates + ctx[k]
            h, cell = lstm_cell(gates, state["c_above"][k][:, :, c])
            state["h_row"][k][:, :, c], state["c_row"][k][:, :, c] = h, cell
            s = s + layer.out(h)
        return self.group_params(self.output(s), g), state


@register
class DiagonalBiLSTM(_PixelRNN):
    """Diagonal BiLSTM (sec. 3.2): skewed maps, a (2 x 1) column-wise state-to-state, two directions
    with the right-to-left one shifted down a row; every earlier pixel is in the receptive field.

    Args:
        hidden_channels: h, the LSTM's hidden maps (the residual stream has 2h; a multiple of C on
            colour images with sub-pixel conditionals).
        num_layers: LSTM layers (the paper: 7 on MNIST, 12 on CIFAR-10).
        first_kernel_size: kernel of the first, type-A convolution (odd; the paper: 7).
        head_channels: feature maps of the hidden 1x1 output layer.
        input_encoding: "value" (the pixel value scaled to [0, 1]), "onehot" or "auto".
        common options (group_shape, head, num_classes, context_shape, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`; the order is always raster.
    """

    name = "diagonal_bilstm"
    config_class = DiagonalBiLSTMConfig

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, hidden_channels: int = 32,
                 num_layers: int = 4, first_kernel_size: int = 7, head_channels: int = 64,
                 input_encoding: str = "value", **common: Any) -> None:
        super().__init__(shape, num_values, hidden_channels, num_layers, first_kernel_size, head_channels,
                         input_encoding, **common)
        self.layers = nn.ModuleList(DiagonalBiLSTMLayer(hidden_channels, self.channel_groups, self.context_dim,
                                                        self.in_maps if k == 0 else 0) for k in range(num_layers))
        self.first_layer_reads_pixels = True

    # ------------------------------------------------------------------ cached sampling
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        """Per layer: its inputs (the residual stream) of the current row, the left-to-right hidden
        states of the row above and the current row (and cells of the current row), the
        left-to-right state-to-state term from the row above, and the right-to-left hidden states
        of the last complete row (what the current row reads, shifted down)."""
        like, hd, ww = self.head_out.linear.weight, self.hidden, self.width
        rows = [[like.new_zeros(n, hd, ww) for _ in self.layers] for _ in range(4)]
        weights = []
        for layer in self.layers:
            w_is = layer.input_to_state.linear.weight * layer.input_to_state.mask  # (8h, 2h)
            w_ss = layer.state_to_state.weight  # (8h, h, 2)
            weights.append({"is": w_is, "is_bias": layer.input_to_state.linear.bias, "ss_above": w_ss[:, :, 0],
                            "ss_prev": w_ss[:, :, 1]})
        return {
            "x": self.first.new_cache(n, self.height, ww, like),
            "inputs": [like.new_zeros(n, 2 * hd, ww) for _ in self.layers],
            "h_above": rows[0], "h_row": rows[1], "c_row": rows[2], "r2l": rows[3],
            "above": [like.new_zeros(n, 4 * hd, ww) for _ in self.layers],
            "context": None if context is None else [layer.context(context) for layer in self.layers],
            "weights": Static((self.first.masked_weight(), weights)),
            "order": Static(order.tolist()),
        }

    def _row_complete(self, state: Any, r: int) -> None:
        """The row just finished (r - 1) is complete at every layer: run the right-to-left LSTM
        over it (from the right edge, W cell steps) and make the left-to-right states "above"."""
        hd = self.hidden
        ctx = state["context"]
        for k, w in enumerate(state["weights"].value[1]):
            # right-to-left: gates(r-1, j) = K_is s(r-1, j) + K_above h_r2l(r-2, j) + K_prev h_r2l(r-1, j+1)
            pre = F.linear(state["inputs"][k].transpose(1, 2), w["is"][4 * hd:], w["is_bias"][4 * hd:])  # (n, W, 4h)
            pre = pre + state["r2l"][k].transpose(1, 2) @ w["ss_above"][4 * hd:].T
            if k == 0:  # the pixel values of row r - 1, from the first convolution's buffer
                pt, ps = self.first.pad_top, self.first.pad_side
                pixels = state["x"][:, :, r - 1 + pt, ps:ps + self.width]  # (n, E * C, W)
                pre = pre + pixels.transpose(1, 2) @ self.layers[0].pixels.weight.T
            if ctx is not None:
                pre = pre + ctx[k][:, None, 4 * hd:]
            h = cell = pre.new_zeros(len(pre), hd)
            row = pre.new_zeros(len(pre), hd, self.width)
            for j in reversed(range(self.width)):
                h, cell = lstm_cell(pre[:, j] + F.linear(h, w["ss_prev"][4 * hd:]), cell)
                row[:, :, j] = h
            state["r2l"][k] = row
            # left-to-right: row r - 1 becomes the row above
            state["h_above"][k], state["h_row"][k] = state["h_row"][k], state["h_above"][k]
            state["above"][k] = (state["h_above"][k].transpose(1, 2) @ w["ss_above"][:4 * hd].T).transpose(1, 2)

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Exact incremental pass. The left-to-right state at (r, c) needs the states at (r - 1, c)
        and (r, c - 1) and the input at (r, c): a step computes it, layer by layer, at the new pixel
        only. The right-to-left direction at row r reads the whole row r - 1 (shifted down), so it
        is computed once per row, when row r starts (:meth:`_row_complete`), from the layer inputs
        of row r - 1 kept during that row. A pixel is recomputed at each of its sub-pixel steps
        (exact, as in :meth:`RowLSTM.step`)."""
        self._write_input(state, i, x_prev)
        order, ctx = state["order"].value, state["context"]
        w_first, weights = state["weights"].value
        hd = self.hidden
        r, c, g = self.locate(order[i])
        if c == 0 and g == 0 and r > 0:
            self._row_complete(state, r)
        s = self.first.at(state["x"], r, c, w_first)  # (n, 2h)
        for k, layer in enumerate(self.layers):
            w = weights[k]
            state["inputs"][k][:, :, c] = s
            gates = F.linear(s, w["is"][:4 * hd], w["is_bias"][:4 * hd]) + state["above"][k][:, :, c]
            if c > 0:
                gates = gates + F.linear(state["h_row"][k][:, :, c - 1], w["ss_prev"][:4 * hd])
                cell_prev = state["c_row"][k][:, :, c - 1]
            else:
                cell_prev = torch.zeros_like(s[:, :hd])
            if ctx is not None:
                gates = gates + ctx[k][:, :4 * hd]
            h, cell = lstm_cell(gates, cell_prev)
            state["h_row"][k][:, :, c], state["c_row"][k][:, :, c] = h, cell
            s = s + layer.out(h + state["r2l"][k][:, :, c])
        return self.group_params(self.output(s), g), state
