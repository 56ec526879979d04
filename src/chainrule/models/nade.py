"""NADE: the Neural Autoregressive Distribution Estimator (Larochelle & Murray 2011), and RNADE,
its real-valued version with a mixture of Gaussians per conditional (Uria, Murray & Larochelle 2013).

One hidden layer whose weights are shared across the conditionals:

    a_i = c + sum_{j<i} W_{:, o(j)} x_o(j)        (running pre-activation, H units)
    h_i = sigmoid(a_i)
    p(x_o(i) | x_o(<i)) = head(b_o(i) + V_o(i) h_i)

Because a_{i+1} = a_i + W_{:, o(i)} x_o(i), all D hidden states cost O(D H) together (a cumulative
sum), not O(D^2 H); the sampling step keeps a_i as its cache (O(H) per variable). With K > 2
values the inputs are one-hot and each head a softmax over K (categorical NADE); with real values
(RNADE) the head is a mixture of Gaussians. With groups, "variable" above reads "group" (its
features concatenated); with a context (a class label), the hidden bias becomes c + U context.
The weights belong to variables, so any order can be given at call time (EoNADE's
order-agnostic training, Uria et al. 2014).

The teacher-forced pass is a hand-written autograd function (:class:`_NADEPass`) that walks the
positions in blocks: the (batch x D x H) hidden tensor never exists whole, the backward pass
recomputes each block's activations from the running pre-activation saved at the block's start
and carries sum_{i>j} dL/da_i backwards (the gradient of NADE given by Larochelle & Murray 2011,
Algorithm 1). Same arithmetic, far less memory traffic: 4-6x faster than autograd through one
big cumulative sum on a CPU. :func:`nade_pass_reference` is the plain-autograd specification it
is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from chainrule.inference.state import Static
from chainrule.models.base import AutoregressiveModel, select_layers
from chainrule.models.config import ModelConfig, input_encoding, one_of, positive, seed
from chainrule.models.registry import register

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


def nade_pass_reference(e: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, b: torch.Tensor,
                        activation: str = "sigmoid") -> torch.Tensor:
    """NADE's conditionals in plain autograd (keeps the whole (B, D, H) activation tensor).

    Everything is in generation order: ``e`` (B, D, E) input features, ``W`` (D, H, E) input
    weights, ``c`` (H,) or (B, H) the hidden bias, ``V`` (D, P, H) output weights, ``b`` (D, P).
    Returns (B, D, P).
    """
    contrib = torch.einsum("bie,ihe->bih", e, W)  # (B, D, H)
    # exclusive cumulative sum: step i sees the contributions of steps 0..i-1 only (shifted,
    # not cumsum - contrib, which cancels catastrophically when one contribution is huge)
    c = c.unsqueeze(-2) if c.dim() == 2 else c
    a = c + torch.nn.functional.pad(torch.cumsum(contrib, 1)[:, :-1], (0, 0, 1, 0))
    return torch.einsum("bih,iph->bip", _ACTIVATIONS[activation](a), V) + b


class _NADEPass(torch.autograd.Function):
    """:func:`nade_pass_reference` computed block by block with a hand-written backward.

    Works position-major, (D, B, .), so that every product is a batched matrix multiply over the
    positions of a block. Only the running pre-activation at each block start, (num_blocks, B, H),
    is kept for the backward pass, which recomputes a block's (k, B, H) activations. The hidden
    bias ``c`` is (H,) or per example (B, H) (a class-conditional NADE).
    """

    @staticmethod
    def _hidden(e: torch.Tensor, Wt: torch.Tensor, a_run: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Activations (k, B, H) of a block from its inputs e (k, B, E), Wt (k, E, H) and the
        pre-activation a_run (B, H) of its first position, and the pre-activation (B, H) of the
        position after the block. The sum is exclusive: position i sees inputs before i only.

        The running sums inside the block are one matrix product: row (i, b) of the left factor
        holds e[j, b] for j < i and zeros elsewhere (row k: every j, the next block's start)."""
        k, B, E = e.shape
        below = torch.ones(k + 1, k, dtype=e.dtype, device=e.device).tril_(-1)  # [j < i]
        left = (below[:, None, :, None] * e.transpose(0, 1)[None]).reshape((k + 1) * B, k * E)
        a = torch.mm(left, Wt.reshape(k * E, -1)).view(k + 1, B, -1).add_(a_run)
        h = a[:k]
        return (h.sigmoid_() if act == "sigmoid" else h.relu_()), a[k]

    @staticmethod
    def forward(ctx: Any, e: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor, b: torch.Tensor,
                activation: str, block: int) -> torch.Tensor:
        B, D = e.shape[:2]
        e_pm, Wt, Vt = e.transpose(0, 1).contiguous(), W.transpose(1, 2), V.transpose(1, 2)
        out = torch.empty(D, B, V.shape[1], dtype=e.dtype, device=e.device)
        a_run = c.expand(B, -1)
        ctx.c_shape = c.shape
        starts = []
        for s in range(0, D, block):
            t = min(s + block, D)
            starts.append(a_run)
            h, a_run = _NADEPass._hidden(e_pm[s:t], Wt[s:t], a_run, activation)
            torch.baddbmm(b[s:t].unsqueeze(1), h, Vt[s:t], out=out[s:t])
        ctx.save_for_backward(e_pm, W, V, torch.stack(starts))
        ctx.activation, ctx.block = activation, block
        return out.transpose(0, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        e_pm, W, V, starts = ctx.saved_tensors
        block, D, B = ctx.block, e_pm.shape[0], e_pm.shape[1]
        Wt, g_pm = W.transpose(1, 2), g.transpose(0, 1).contiguous()  # g_pm (D, B, P)
        need_e = ctx.needs_input_grad[0]
        dW, dV = torch.empty_like(W), torch.empty_like(V)
        de = torch.empty_like(e_pm) if need_e else None
        dc = W.new_zeros(B, W.shape[1])
        later = W.new_zeros(B, W.shape[1])  # sum of dL/da over the positions after the current one
        for n, s in reversed(list(enumerate(range(0, D, block)))):
            t = min(s + block, D)
            h, _ = _NADEPass._hidden(e_pm[s:t], Wt[s:t], starts[n], ctx.activation)
            torch.bmm(g_pm[s:t].transpose(1, 2), h, out=dV[s:t])  # (k, P, B) @ (k, B, H)
            dh = torch.bmm(g_pm[s:t], V[s:t])  # (k, B, H)
            if ctx.activation == "sigmoid":
                da = torch.ops.aten.sigmoid_backward(dh, h)
            else:
                da = torch.ops.aten.threshold_backward(dh, h, 0)
            # the input at position j enters a_i for every i > j: its gradient is sum_{i>j} da_i,
            # one product with [i > j] (row k: every i, to carry on to the earlier blocks)
            k = t - s
            above = torch.ones(k + 1, k, dtype=da.dtype, device=da.device).triu_(1)
            above[k] = 1
            sums = torch.mm(above, da.view(k, -1)).view(k + 1, B, -1)
            dc += sums[k]
            dcontrib = sums[:k].add_(later)
            later = later + sums[k]
            dW[s:t] = torch.bmm(dcontrib.transpose(1, 2), e_pm[s:t])  # (k, H, B) @ (k, B, E)
            if need_e:
                torch.bmm(dcontrib, W[s:t], out=de[s:t])  # (k, B, H) @ (k, H, E)
        dc = dc.sum(0) if len(ctx.c_shape) == 1 else dc
        return (de.transpose(0, 1) if need_e else None), dW, dc, dV, g.sum(0), None, None


@dataclass(frozen=True)
class RNADEConfig(ModelConfig):
    """RNADE's hyperparameters: NADE's but the input encoding (RNADE reads real values)."""

    hidden_size: int = positive()
    num_orders: int = positive()
    seed: int = seed()
    activation: str = one_of(*_ACTIVATIONS)


@dataclass(frozen=True)
class NADEConfig(RNADEConfig):
    input_encoding: str = input_encoding()


@register
class NADE(AutoregressiveModel):
    """Weight-tied one-hidden-layer autoregressive network (binary, categorical or real-valued).

    Args:
        hidden_size: H, hidden units.
        num_orders: EoNADE (Uria et al. 2014): an ensemble over this many orderings (member 0:
            ``order``, the others seeded random ones), trained order-agnostically one ordering per
            step, evaluated by averaging the orderings' probabilities.
        seed: seed of the ensemble's random orderings.
        activation: "sigmoid" (the paper's) or "relu".
        input_encoding: "auto", "value" or "onehot".
        common options (order, group_shape, head, num_mixture_components, num_classes, ...): see
            :class:`~chainrule.models.base.AutoregressiveModel`.
    """

    name = "nade"
    supports_context = True
    supports_tensor_context = True
    supports_real = True
    any_order = True
    config_class = NADEConfig
    tiny_hyperparameters = {"hidden_size": 8}
    # Format 5 of compressed files codes with the sparse step; older files with the dense one.
    sparse_step_since: ClassVar[int] = 5
    coding_block_rows = 4096  # a state of 4096 x H floats is small; large blocks amortize the per-step overhead

    def __init__(self, shape: tuple[int, ...], num_values: int | None = 2, hidden_size: int = 500,
                 num_orders: int = 1, seed: int = 0, activation: str = "sigmoid", input_encoding: str = "auto",
                 **common: Any) -> None:
        super().__init__(shape, num_values, **common)  # validates the config too
        self.activation, self.act = activation, _ACTIVATIONS[activation]
        self.embed_size = self.set_input_encoding(input_encoding)
        f, p, g = self.embed_size * self.group_size, self.head.num_params, self.num_groups
        bound = 1.0 / math.sqrt(g * f)
        self.W = nn.Parameter(torch.empty(g, hidden_size, f).uniform_(-bound, bound))  # input weights per group
        self.c = nn.Parameter(torch.zeros(hidden_size))
        self.V = nn.Parameter(torch.empty(g, p, hidden_size).uniform_(-1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size)))
        self.b = nn.Parameter(torch.zeros(g, p))
        self.context = nn.Linear(self.context_dim, hidden_size, bias=False) if self.conditional else None

    def _hidden_bias(self, context: torch.Tensor | None) -> torch.Tensor:
        return self.c if self.context is None else self.c + self.context(context)  # (H,) or (B, H)

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # (B, G, P), groups in generation order; blocks of ~4 MB of activations stay in cache
        block = max(1, min(32, (1 << 20) // max(1, e.shape[0] * self.c.shape[0])))
        seq = _NADEPass.apply(e[:, order], self.W[order], self._hidden_bias(context), self.V[order], self.b[order],
                              self.activation, block)
        params = torch.empty_like(seq)
        params[:, order] = seq
        return params

    def features(self, x: torch.Tensor, context: Any = None, order: Any = None,
                 layer: int | Sequence[int] = -1) -> torch.Tensor | list[torch.Tensor]:
        """The hidden layer h_i of every group's conditional, ``(B, G, H)`` (group index order).
        NADE has one hidden layer: ``layer`` is 0 or -1 (or a sequence of them, giving a list), as
        for the models with several (:func:`~chainrule.models.base.select_layers`)."""
        select_layers(range(1), layer, "NADE has one layer: 0 or -1")  # a bad layer fails before the pass
        return select_layers([self._hidden_features(x, context, order)], layer, "NADE has one layer: 0 or -1")

    def _hidden_features(self, x: torch.Tensor, context: Any, order: Any) -> torch.Tensor:
        x, _ = self.validate(x)
        o = self.resolve_order(order)
        ctx = self.context_features(context, x.shape[0])
        e = self.group_features(self.embed(x))[:, o]
        contrib = torch.einsum("bie,ihe->bih", e, self.W[o])
        c = self._hidden_bias(ctx)
        a = (c.unsqueeze(-2) if c.dim() == 2 else c) + torch.nn.functional.pad(torch.cumsum(contrib, 1)[:, :-1], (0, 0, 1, 0))
        h = torch.empty_like(a)
        h[:, o] = self.act(a)
        return h

    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None) -> Any:
        # the running pre-activation a_0 = c (+ U context), (n, H), and its activation h (made at step 0)
        return {"a": self._hidden_bias(context).expand(n, -1).clone(), "h": None, "order": Static(order.tolist())}

    def coding_state(self, state: Any, version: int) -> Any:
        """Files of format versions before :attr:`sparse_step_since` were coded with the dense step
        (every row's activation recomputed at every step); they decode with it."""
        return {**state, "dense": Static(True)} if version < self.sparse_step_since else state

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Updates ``a`` and ``h`` in place (a state is stepped once). With value inputs (binary
        data) a value 0 adds nothing to ``a``: only the rows whose group is nonzero get
        ``a += W_j x_j`` and a new ``h`` (13% of binarized MNIST's pixels), the others keep theirs."""
        order, a, h = state["order"].value, state["a"], state["h"]
        if "dense" in state:  # the arithmetic of compressed-file format <= 4 (see coding_state)
            if x_prev is not None:
                a = a + self.encode_values(x_prev).reshape(len(x_prev), -1) @ self.W[order[i - 1]].T  # (n, F) @ (F, H)
            k = order[i]
            return self.act(a) @ self.V[k].T + self.b[k], {**state, "a": a}
        if h is None:
            h = self.act(a)
        if x_prev is not None:
            w = self.W[order[i - 1]].T  # (F, H)
            ex = self.encode_values(x_prev).reshape(len(x_prev), -1)  # (n, F)
            if self.input_encoding == "onehot":  # every row changes
                a.addmm_(ex, w)
                h = self.act(a)
            else:
                rows = ex.ne(0).any(1).nonzero().squeeze(1)
                if len(rows) == len(ex):
                    a.addmm_(ex, w)
                    h = self.act(a)
                elif len(rows):  # (index_put_ is 2x faster than index_copy_ on a CPU)
                    changed = torch.addmm(a.index_select(0, rows), ex.index_select(0, rows), w)
                    a.index_put_((rows,), changed)
                    h.index_put_((rows,), self.act(changed))
        k = order[i]
        return torch.addmm(self.b[k], h, self.V[k].T), {**state, "a": a, "h": h}


@register
class RNADE(NADE):
    """Real-valued NADE: a mixture of Gaussians per conditional (Uria et al. 2013).

    Args: as :class:`NADE`; ``num_mixture_components`` defaults to 10 and data must be real.
    """

    name = "rnade"
    supports_discrete = False
    config_class = RNADEConfig

    def __init__(self, shape: tuple[int, ...], num_values: int | None = None, hidden_size: int = 100,
                 num_orders: int = 1, seed: int = 0, activation: str = "relu", num_mixture_components: int = 10,
                 **common: Any) -> None:
        super().__init__(shape, num_values, hidden_size=hidden_size, num_orders=num_orders, seed=seed,
                         activation=activation, input_encoding="value", num_mixture_components=num_mixture_components,
                         **common)
