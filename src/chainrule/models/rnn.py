"""Recurrent autoregressive models: RNN, LSTM, GRU (char-RNN, Karpathy 2015; Graves 2013).

    h_t = cell(h_{t-1}, embed(x_{t-1}))        (x_{-1} = a learned start vector)
    p(x_t | x_<t) = head(W h_t)

The whole sequence is read in one teacher-forced call of ``torch.nn.RNN/LSTM/GRU`` over the
inputs shifted right by one (optionally in chunks, with truncated backpropagation through time for
long sequences); the sampling cache is the hidden state, so each new token costs one cell step
instead of re-reading the prefix. Sequences are taken in the model's order (default ``"raster"``:
pixel-major on images), fixed when the model is built; a context (class label) is added to every
input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, positive, probability
from chainrule.models.registry import register


@dataclass(frozen=True)
class RecurrentConfig(ModelConfig):
    """The hyperparameters of the RNN, LSTM and GRU stacks."""

    hidden_size: int = positive()
    num_layers: int = positive()
    embedding_size: int = positive()
    dropout: float = probability()
    tbptt: int | None = positive(optional=True)


class _Recurrent(AutoregressiveModel):
    """Embedding -> recurrent stack -> linear head. Subclasses set ``cell``.

    Args:
        hidden_size: units of each recurrent layer.
        num_layers: recurrent layers in the stack.
        embedding_size: size of the learned embedding of each input token (discrete data).
        dropout: dropout between recurrent layers while training, in [0, 1).
        tbptt: k, train with truncated backpropagation through time: gradients flow back at most
            k steps (the likelihood itself is unchanged); None: through the whole sequence.
        common options (order, group_shape, head, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    cell: ClassVar[type[nn.RNNBase]]
    supports_real = True
    supports_context = True
    supports_tensor_context = True
    config_class = RecurrentConfig
    tiny_hyperparameters = {"hidden_size": 8, "num_layers": 2, "embedding_size": 4}

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, hidden_size: int = 256,
                 num_layers: int = 2, embedding_size: int = 64, dropout: float = 0.0, tbptt: int | None = None,
                 **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates RecurrentConfig too
        self.tbptt = tbptt
        self.embedding = (nn.Embedding(num_values, embedding_size) if num_values is not None
                          else nn.Linear(1, embedding_size))
        f = embedding_size * self.group_size  # a group's inputs: its variables' embeddings side by side
        self.start = nn.Parameter(torch.zeros(f))  # stands in for x_{-1}
        self.context = nn.Linear(self.context_dim, f, bias=False) if self.conditional else None
        self.rnn = self.cell(f, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, self.head.num_params)

    def encode_values(self, v: torch.Tensor) -> torch.Tensor:
        if self.num_values is None:
            return self.embedding(v.to(self.float_dtype).unsqueeze(-1))
        return self.embedding(v.long())

    def features(self, x: torch.Tensor, context: Any = None,
                 layer: int | Sequence[int] = -1) -> torch.Tensor | list[torch.Tensor]:
        """The hidden state of recurrent layer ``layer`` (default the top one) that predicts each
        group, ``(B, G, H)`` (group index order); a sequence of layers gives a list of them from
        one pass (:func:`~chainrule.models.base.select_layers`)."""
        what = f"the {self.rnn.num_layers} recurrent layers"
        select_layers(range(self.rnn.num_layers), layer, what)  # a bad layer fails before the pass
        x, _ = self.validate(x)
        e = self.to_generation_order(self.group_features(self.embed(x)), self.order)
        inp = torch.cat([self.start.expand(e.shape[0], 1, -1), e[:, :-1]], 1)
        if self.context is not None:
            inp = inp + self.context(self.context_features(context, x.shape[0])).unsqueeze(1)
        if layer == -1 or layer == self.rnn.num_layers - 1:  # the top layer: the stacked module's own output
            out, _ = self.rnn(inp)
            return self.from_generation_order(out, self.order)
        hs = []
        for k in range(self.rnn.num_layers):  # layer by layer with the stack's weights (nn.RNNBase keeps only the top)
            single = self.cell(inp.shape[-1], self.rnn.hidden_size, 1, batch_first=True).to(inp.device, inp.dtype)
            weights = {f"{name}_l0": getattr(self.rnn, f"{name}_l{k}")
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if hasattr(self.rnn, f"{name}_l{k}")}
            inp, _ = torch.func.functional_call(single, weights, (inp,))
            hs.append(inp)
        return select_layers(hs, layer, what, lambda h: self.from_generation_order(h, self.order))

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        e = self.to_generation_order(e, order)
        inp = torch.cat([self.start.expand(e.shape[0], 1, -1), e[:, :-1]], 1)  # (B, T, F), shifted right
        if self.context is not None:
            inp = inp + self.context(context).unsqueeze(1)
        inp = self.drop(inp)
        if self.tbptt is None or not (self.training and torch.is_grad_enabled()) or self.tbptt >= inp.shape[1]:
            out, _ = self.rnn(inp)
        else:
            # Truncated backpropagation through time: the same forward values, but gradients stop
            # at chunk boundaries (the hidden state is carried over, detached), so memory and
            # backward cost grow with the chunk, not the whole sequence.
            outs, hidden = [], None
            for s in range(0, inp.shape[1], self.tbptt):
                o, hidden = self.rnn(inp[:, s:s + self.tbptt], hidden)
                outs.append(o)
                hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
            out = torch.cat(outs, 1)
        return self.from_generation_order(self.proj(self.drop(out)), order)  # (B, T, P)

    # The cache is the hidden state, kept batch-first, (n, layers, H) (a pair for the LSTM), so
    # that beam search can reorder it along dim 0 like every other model's cache. A step runs the
    # layers' cells directly (torch.lstm_cell & co., the same arithmetic as the full pass): calling
    # the fused multi-layer module for a single time step costs ~50x more on the CPU.
    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        h = torch.zeros(n, self.rnn.num_layers, self.rnn.hidden_size, device=self.device, dtype=self.float_dtype)
        extra = None if self.context is None else self.context(context)  # (n, F), added to every input
        return ((h, h.clone()) if isinstance(self.rnn, nn.LSTM) else h), extra

    def _cell(self, inp: torch.Tensor, hidden: Any, layer: int) -> Any:
        w = [getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if isinstance(self.rnn, nn.LSTM):
            return torch.lstm_cell(inp, hidden, *w)
        if isinstance(self.rnn, nn.GRU):
            return torch.gru_cell(inp, hidden, *w)
        cell = torch.rnn_tanh_cell if self.rnn.nonlinearity == "tanh" else torch.rnn_relu_cell
        return cell(inp, hidden, *w)

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        state, extra = state
        lstm = isinstance(state, tuple)
        n = (state[0] if lstm else state).shape[0]
        inp = self.start.expand(n, -1) if x_prev is None else self.encode_values(x_prev).reshape(n, -1)
        if extra is not None:
            inp = inp + extra
        new_h, new_c = [], []
        for layer in range(self.rnn.num_layers):
            if lstm:
                h, c = self._cell(inp, (state[0][:, layer], state[1][:, layer]), layer)
                new_c.append(c)
            else:
                h = self._cell(inp, state[:, layer], layer)
            new_h.append(h)
            inp = h  # inter-layer dropout is off outside training
        state = (torch.stack(new_h, 1), torch.stack(new_c, 1)) if lstm else torch.stack(new_h, 1)
        return self.proj(inp), (state, extra)


@register
class RNN(_Recurrent):
    """Elman RNN (tanh) stack. Args: hidden_size, num_layers, embedding_size, dropout, tbptt."""

    name = "rnn"
    cell = nn.RNN


@register
class LSTM(_Recurrent):
    """LSTM stack (Hochreiter & Schmidhuber 1997). Args: hidden_size, num_layers, embedding_size, dropout, tbptt."""

    name = "lstm"
    cell = nn.LSTM


@register
class GRU(_Recurrent):
    """GRU stack (Cho et al. 2014). Args: hidden_size, num_layers, embedding_size, dropout, tbptt."""

    name = "gru"
    cell = nn.GRU
