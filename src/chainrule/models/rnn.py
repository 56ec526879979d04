"""Recurrent autoregressive models: RNN, LSTM, GRU (char-RNN, Karpathy 2015; Graves 2013).

    h_t = cell(h_{t-1}, embed(x_{t-1}))        (x_{-1} = a learned start vector)
    p(x_t | x_<t) = head(W h_t)

The whole sequence is read in one teacher-forced call of ``torch.nn.RNN/LSTM/GRU`` over the
inputs shifted right by one (optionally in chunks, with truncated backpropagation through time for
long sequences); the sampling cache is the hidden state, so each new token costs one cell step
instead of re-reading the prefix. Sequences are taken in the raster order of ``shape``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.models.registry import register


class _Recurrent(AutoregressiveModel):
    """Embedding -> recurrent stack -> linear head. Subclasses set ``cell``.

    ``tbptt=k`` trains with truncated backpropagation through time: gradients flow back at most
    k steps (the likelihood itself is unchanged).
    """

    cell: ClassVar[type[nn.RNNBase]]
    supports_real = True

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 256, hidden_size: int = 256,
                 num_layers: int = 2, embedding_size: int = 64, dropout: float = 0.0, tbptt: int | None = None,
                 num_mixture_components: int = 1) -> None:
        super().__init__(shape, num_values, num_mixture_components)
        if hidden_size < 1 or num_layers < 1 or embedding_size < 1:
            raise InputError("hidden_size, num_layers and embedding_size must be >= 1")
        if tbptt is not None and tbptt < 1:
            raise InputError(f"tbptt must be a positive number of steps (or None), got {tbptt}")
        self.tbptt = tbptt
        if not 0 <= dropout < 1:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding = (nn.Embedding(num_values, embedding_size) if num_values is not None
                          else nn.Linear(1, embedding_size))
        self.start = nn.Parameter(torch.zeros(embedding_size))  # stands in for x_{-1}
        self.rnn = self.cell(embedding_size, hidden_size, num_layers, batch_first=True,
                             dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, self.head.num_params)

    def encode_values(self, v: torch.Tensor) -> torch.Tensor:
        if self.num_values is None:
            return self.embedding(v.float().unsqueeze(-1))
        return self.embedding(v.long())

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        inp = self.drop(torch.cat([self.start.expand(e.shape[0], 1, -1), e[:, :-1]], 1))  # (B, T, E), shifted right
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
        return self.proj(self.drop(out))  # (B, T, P)

    # The cache is the hidden state, kept batch-first, (n, layers, H) (a pair for the LSTM), so
    # that beam search can reorder it along dim 0 like every other model's cache. A step runs the
    # layers' cells directly (torch.lstm_cell & co., the same arithmetic as the full pass): calling
    # the fused multi-layer module for a single time step costs ~50x more on the CPU.
    def init_state(self, n: int) -> Any:
        h = torch.zeros(n, self.rnn.num_layers, self.rnn.hidden_size, device=self.device)
        return (h, h.clone()) if isinstance(self.rnn, nn.LSTM) else h

    def _cell(self, inp: torch.Tensor, hidden: Any, layer: int) -> Any:
        w = [getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if isinstance(self.rnn, nn.LSTM):
            return torch.lstm_cell(inp, hidden, *w)
        if isinstance(self.rnn, nn.GRU):
            return torch.gru_cell(inp, hidden, *w)
        cell = torch.rnn_tanh_cell if self.rnn.nonlinearity == "tanh" else torch.rnn_relu_cell
        return cell(inp, hidden, *w)

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        lstm = isinstance(state, tuple)
        n = (state[0] if lstm else state).shape[0]
        inp = self.start.expand(n, -1) if x_prev is None else self.encode_values(x_prev)
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
        return self.proj(inp), state


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
