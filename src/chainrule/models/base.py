"""The model contract every chainrule model implements, and everything written once on top of it.

A model is one distribution p(x) = prod_i p(x_o(i) | x_o(<i)) over a fixed event shape. It
implements two small pieces:

- ``embed(x)``: ``(B, *shape) -> (B, D, E)``, features of each variable *on its own* (a lookup, a
  scaling, a one-hot: never mixing variables). D = prod(shape), variables in row-major order.
- ``forward_embedded(e)``: ``(B, D, E) -> (B, D, P)``, the teacher-forced pass: ``params[:, j]``
  are the P parameters of the conditional of variable j given the variables before it in the
  order. This is where the masks, causal convolutions or attention live.

and optionally an incremental ``step`` with a cache for fast sampling. From these the base class
gives ``log_prob`` (exact, nats), ``sample`` (ancestral), the per-variable conditionals, ensembles
over several orderings or connectivities (probabilities averaged), and save/load. Because
``embed`` is per-variable, the autoregressive property can be checked by the gradient of
``forward_embedded`` (see :mod:`chainrule.checks`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from chainrule.decoding import beam_search, choose, processors
from chainrule.distributions import Distribution, OutputHead, output_head
from chainrule.errors import InputError
from chainrule.orderings import OrderSpec, make_ordering


class AutoregressiveModel(nn.Module):
    """Base class of every chainrule model. Subclasses set ``name`` and implement the two passes.

    Args:
        shape: event shape of one example, e.g. ``(784,)``, ``(1, 28, 28)`` or ``(T,)``.
        num_values: K when every variable takes values in {0, ..., K-1} (K=2: binary); None for
            real-valued data (only for models with ``supports_real``).
        num_mixture_components: for real-valued data, Gaussians per conditional (1: a Gaussian).
    """

    name: ClassVar[str] = ""
    supports_real: ClassVar[bool] = False
    supports_discrete: ClassVar[bool] = True
    # ensembles (see _init_order) overwrite these per instance
    _component: int = 0
    _train_rng: torch.Generator | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Record the arguments of the outermost __init__ call, so a checkpoint's JSON config can
        # rebuild the model without each model writing (and forgetting to update) a to_config().
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__dict__["__init__"]
        sig = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: AutoregressiveModel, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                args_dict = dict(bound.arguments)
                args_dict.pop("self")
                self.__dict__["_init_args"] = args_dict
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(self, shape: tuple[int, ...] | list[int] | int, num_values: int | None,
                 num_mixture_components: int = 1) -> None:
        super().__init__()
        if isinstance(shape, int):
            shape = (shape,)
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise InputError(f"shape must be a tuple of positive integers, got {shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise InputError(f"shape must be a non-empty tuple of positive integers, got {shape!r}")
        if num_values is None and not self.supports_real:
            raise InputError(f"model {self.name!r} models discrete data only: pass num_values=K (K >= 2)")
        if num_values is not None and not self.supports_discrete:
            raise InputError(f"model {self.name!r} models real-valued data only: pass num_values=None")
        self.shape: tuple[int, ...] = shape
        self.num_values: int | None = num_values
        self.dim: int = math.prod(shape)
        self.head: OutputHead = output_head(num_values, num_mixture_components)

    # ------------------------------------------------------------------ the contract
    input_encoding: str = "value"

    def _set_input_encoding(self, encoding: str) -> int:
        """Choose how :meth:`embed` encodes a variable and return the feature size E.

        ``"value"``: the value itself (E=1; discrete values scaled to [0, 1]); ``"onehot"``: a
        one-hot vector (E=K, discrete only); ``"auto"``: one-hot when 2 < K <= 64, else value.
        """
        if encoding == "auto":
            encoding = "onehot" if self.num_values is not None and 2 < self.num_values <= 64 else "value"
        if encoding not in ("value", "onehot"):
            raise InputError(f"input_encoding must be 'auto', 'value' or 'onehot', got {encoding!r}")
        if encoding == "onehot" and self.num_values is None:
            raise InputError("input_encoding='onehot' needs discrete data (num_values=K)")
        self.input_encoding = encoding
        return self.num_values if encoding == "onehot" else 1  # type: ignore[return-value]

    def encode_values(self, v: torch.Tensor) -> torch.Tensor:
        """Encode values ``(...)`` into features ``(..., E)`` by ``input_encoding``."""
        if self.num_values is None:
            return v.float().unsqueeze(-1)
        if self.input_encoding == "onehot":
            return torch.nn.functional.one_hot(v.long(), self.num_values).float()
        return (v.float() / (self.num_values - 1)).unsqueeze(-1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-variable input features: ``(B, *shape)`` -> ``(B, D, E)``, each variable on its own.

        Default: :meth:`encode_values` (no position information; models add it where they need it).
        """
        return self.encode_values(x.reshape(x.shape[0], self.dim))

    def forward_embedded(self, e: torch.Tensor) -> torch.Tensor:
        """Teacher-forced pass: ``(B, D, E)`` -> parameters of every conditional ``(B, D, P)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Parameters of every conditional, ``(B, D, P)``, for a valid batch ``x`` ``(B, *shape)``."""
        return self.forward_embedded(self.embed(x))

    # ------------------------------------------------------------------ orderings and ensembles
    def _init_order(self, order: OrderSpec, num_components: int = 1, random_orders: bool = True,
                    seed: int = 0) -> None:
        """Subclasses that take an ordering call this once.

        Stores the persistent buffer ``orders`` ``(C, D)``: component 0 uses ``order``; components
        1..C-1 use seeded random orderings when ``random_orders`` (order-agnostic ensembles), else
        ``order`` again (ensembles over connectivity only, as MADE's masks).
        """
        if not isinstance(num_components, int) or num_components < 1:
            raise InputError(f"the number of orderings/masks must be a positive integer, got {num_components!r}")
        first = make_ordering(order, self.shape)
        orders = [first] + [
            make_ordering(f"random:{seed * 100003 + c}", self.shape) if random_orders else first
            for c in range(1, num_components)
        ]
        self.register_buffer("orders", torch.stack(orders), persistent=True)
        self._component = 0
        self._train_rng = torch.Generator().manual_seed(seed)

    @property
    def order(self) -> torch.Tensor:
        """The ordering of the current component, ``(D,)``: ``order[i]`` is generated at step i."""
        orders = self._buffers.get("orders")
        if orders is None:
            return torch.arange(self.dim, device=self.device)
        return orders[self._component]

    @property
    def num_components(self) -> int:
        """Number of orderings/connectivities averaged in :meth:`log_prob` (1 for most models)."""
        orders = self._buffers.get("orders")
        return 1 if orders is None else orders.shape[0]

    def set_component(self, k: int) -> None:
        """Make component ``k`` (an ordering/connectivity of an ensemble) the current one."""
        if not 0 <= k < self.num_components:
            raise InputError(f"component must be in 0..{self.num_components - 1}, got {k}")
        if self.num_components > 1:
            self._component = k
            self._component_changed()

    @property
    def component(self) -> int:
        """Index of the current component (ordering/connectivity) of an ensemble; 0 otherwise."""
        return self._component

    def _component_changed(self) -> None:
        """Hook: rebuild whatever depends on the current ordering (e.g. masks)."""

    def current_order(self) -> torch.Tensor:
        """Same as :attr:`order`."""
        return self.order

    def next_training_component(self) -> None:
        """Called by the trainer before each step: an ensemble moves to a random component, so
        training covers every ordering/connectivity (MADE; EoNADE's order-agnostic training)."""
        if self.num_components > 1:
            self.set_component(int(torch.randint(self.num_components, (1,), generator=self._train_rng)))

    # ------------------------------------------------------------------ generic on top
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def validate(self, x: torch.Tensor | Any) -> tuple[torch.Tensor, torch.Size]:
        """Check a batch ``(*batch, *shape)`` and return it as ``(B, *shape)`` plus the batch shape.

        Discrete data must be integer-valued in {0, ..., K-1} (float tensors holding integers are
        accepted); real data must be finite. Raises :class:`InputError` naming what is wrong.
        """
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"expected a tensor or array of shape (batch, *{self.shape}), got {type(x).__name__}: {exc}") from None
        n = len(self.shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n:]) != self.shape:
            raise InputError(
                f"{self.name}: expected data of shape (batch, {', '.join(map(str, self.shape))}) "
                f"(event shape {self.shape}), got {tuple(x.shape)}"
            )
        batch = x.shape[: x.dim() - n]
        x = x.reshape(-1, *self.shape)
        if x.dtype == torch.bool:
            x = x.long()
        if self.num_values is None:
            if not x.is_floating_point():
                x = x.float()
            if not torch.isfinite(x).all():
                raise InputError(f"{self.name}: data contains NaN or infinite values")
            return x.to(self.device), batch
        if x.is_floating_point():
            if not torch.isfinite(x).all():
                raise InputError(f"{self.name}: data contains NaN or infinite values; expected integers 0..{self.num_values - 1}")
            if not torch.equal(x, x.round()):
                raise InputError(
                    f"{self.name}: expected integer values in 0..{self.num_values - 1} (num_values={self.num_values}), "
                    "got non-integer floats; real-valued data needs a model with num_values=None"
                )
        elif x.is_complex():
            raise InputError(f"{self.name}: complex data is not supported")
        x = x.long()
        if x.numel() and (x.min() < 0 or x.max() >= self.num_values):
            raise InputError(
                f"{self.name}: values must lie in 0..{self.num_values - 1} (num_values={self.num_values}), "
                f"got values from {int(x.min())} to {int(x.max())}"
            )
        return x.to(self.device), batch

    def conditionals(self, x: torch.Tensor) -> Distribution:
        """The distribution of every variable given its predecessors, for the current component.

        Its batch shape is ``(B, D)`` (flat variable index, row-major).
        """
        x, _ = self.validate(x)
        return self.head(self(x))

    def _component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-variable log-likelihoods ``(B, D)`` of a validated batch, current component."""
        return self.head(self(x)).log_prob(x.reshape(x.shape[0], self.dim))

    def log_prob_per_variable(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_j | x_<j) for every variable j, ``(*batch, D)``, nats, current component."""
        x, batch = self.validate(x)
        return self._component_log_prob(x).reshape(*batch, self.dim)

    def log_prob(self, x: torch.Tensor, component: int | Sequence[int] | None = None) -> torch.Tensor:
        """Exact log-likelihood in nats, ``(*batch, *shape)`` -> ``(*batch,)``.

        For an ensemble of K orderings/connectivities the *probabilities* are averaged,
        log (1/K) sum_k p_k(x), which is itself a normalized distribution. ``component=k`` gives
        the likelihood under ordering/connectivity k alone (also normalized); a sequence of
        components gives the smaller ensemble of just those (e.g. ``range(4)``, a cheaper
        validation score while training a 32-mask ensemble).
        """
        x, batch = self.validate(x)
        if component is None:
            components: Sequence[int] = range(self.num_components)
        elif isinstance(component, int):
            components = [component]
        else:
            components = list(component)
            if not components:
                raise InputError("component: expected an index or a non-empty sequence of indices, got an empty one")
        return self._log_prob_valid(x, components).reshape(batch)

    def _log_prob_valid(self, x: torch.Tensor, components: Sequence[int]) -> torch.Tensor:
        """log-mean-exp over ``components`` of each one's log-likelihood, ``(B,)``."""
        if len(components) == 1 and components[0] == self._component:  # no switching needed
            return self._component_log_prob(x).sum(-1)
        current, per = self._component, []
        try:
            for c in components:
                self.set_component(c)
                per.append(self._component_log_prob(x).sum(-1))
        finally:
            self.set_component(current)
        return torch.logsumexp(torch.stack(per, 0), 0) - math.log(len(per))

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log-likelihood ``(B,)`` of a validated batch under the current component (for training:
        an ensemble is trained one ordering/mask per step, as in MADE and EoNADE)."""
        return self._component_log_prob(x).sum(-1)

    # ------------------------------------------------------------------ incremental sampling
    def init_state(self, n: int) -> Any:
        """Empty sampling cache for ``n`` sequences. Default: the partial sample itself."""
        return torch.zeros(n, self.dim, dtype=torch.long if self.num_values else torch.float, device=self.device)

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Parameters ``(n, P)`` of the conditional of variable ``order[i]``, given the value
        ``x_prev`` ``(n,)`` of variable ``order[i-1]`` (None at i=0); returns them and the new state.

        The default recomputes the full teacher-forced pass (O(D) work per step). Models override
        it with a cache; :func:`chainrule.checks.check_step_matches_forward` tests they agree.
        A step may update ``state`` in place: pass each state to ``step`` once.
        """
        order = self.current_order()
        if x_prev is not None:
            state = state.clone()
            state[:, order[i - 1]] = x_prev
        params = self(state.reshape(-1, *self.shape))
        return params[:, order[i]], state

    def sample(self, n: int, generator: torch.Generator | None = None, prefix: torch.Tensor | None = None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
        """Draw ``n`` samples by ancestral sampling, ``(n, *shape)``.

        Args:
            n: number of samples.
            generator: a ``torch.Generator`` for reproducible draws.
            prefix: optional values of the first k variables *in the model's order*, ``(k,)`` (the
                same for every sample) or ``(n, k)``; sampling continues after them.
            temperature, top_k, top_p: decoding filters for discrete data (see
                :mod:`chainrule.decoding`; temperature 0 = greedy). The defaults sample the model's
                own distribution exactly.
        """
        if not isinstance(n, int) or n < 1:
            raise InputError(f"n must be a positive integer, got {n!r}")
        chain = processors(temperature, top_k, top_p)
        if chain and self.num_values is None:
            raise InputError("temperature/top-k/top-p apply to discrete data; this model is real-valued")
        with torch.inference_mode():
            x = self._sample(n, generator, prefix, chain)
        # A normal tensor, not an inference tensor: callers may feed samples to log_prob with autograd.
        return x.clone()

    def _sample(self, n: int, generator: torch.Generator | None, prefix: torch.Tensor | None,
                chain: list | None = None) -> torch.Tensor:
        k = self.num_components
        if k == 1:
            return self._sample_component(n, generator, prefix, chain)
        # A mixture: pick each sample's component uniformly, then sample from that component.
        current = self._component
        which = torch.randint(k, (n,), generator=generator)
        out = torch.empty(n, *self.shape, dtype=torch.long if self.num_values else torch.float, device=self.device)
        for c in range(k):
            idx = (which == c).nonzero().squeeze(-1)
            if idx.numel():
                self.set_component(c)
                pre = prefix if prefix is None or prefix.dim() == 1 else prefix[idx]
                out[idx.to(out.device)] = self._sample_component(idx.numel(), generator, pre, chain)
        self.set_component(current)
        return out

    def _check_prefix(self, n: int, prefix: torch.Tensor) -> torch.Tensor:
        prefix = torch.as_tensor(prefix, device=self.device)
        if prefix.dim() == 1:
            prefix = prefix.unsqueeze(0).expand(n, -1)
        if prefix.dim() != 2 or prefix.shape[0] != n:
            raise InputError(f"prefix must have shape (k,) or (n, k) = ({n}, k), got {tuple(prefix.shape)}")
        if prefix.shape[1] > self.dim:
            raise InputError(f"prefix has {prefix.shape[1]} values but an example has only {self.dim} variables")
        # validate the values as data: pad to a full example with zeros
        full = torch.zeros(n, self.dim, dtype=prefix.dtype, device=self.device)
        full[:, : prefix.shape[1]] = prefix
        self.validate(full.reshape(n, *self.shape))
        return prefix.long() if self.num_values else prefix.float()

    def _sample_component(self, n: int, generator: torch.Generator | None, prefix: torch.Tensor | None,
                          chain: list | None = None) -> torch.Tensor:
        order = self.current_order()
        k = 0
        if prefix is not None:
            prefix = self._check_prefix(n, prefix)
            k = prefix.shape[1]
        x = torch.zeros(n, self.dim, dtype=torch.long if self.num_values else torch.float, device=self.device)
        state = self.init_state(n)
        prev = None
        for i in range(self.dim):
            params, state = self.step(state, i, prev)
            if i < k:
                prev = prefix[:, i]
            elif chain:
                prev = choose(self.head(params).logits(), chain, generator)
            else:
                prev = self.head(params).sample(generator).to(x.dtype)
            x[:, order[i]] = prev
        return x.reshape(n, *self.shape)

    @torch.no_grad()
    def beam_search(self, beam_width: int, prefix: torch.Tensor | None = None,
                    length_penalty: float = 0.0) -> list[tuple[torch.Tensor, float, float]]:
        """The most probable whole examples found by beam search (discrete models).

        Returns up to ``beam_width`` triples ``(x (*shape), log_prob_nats, score)``, best first;
        ``score = log_prob / D ** length_penalty`` (every example has D variables, so the ranking
        equals the raw log-probability's). ``prefix`` fixes the first variables in the order; its
        probability is included in ``log_prob`` so that it equals ``self.log_prob(x)``.
        """
        if self.num_values is None:
            raise InputError("beam search needs a discrete model")
        if self.num_components > 1:
            raise InputError("beam search over an ensemble is not supported: pick a component with set_component")
        tokens: list[int] = []
        if prefix is not None:
            tokens = self._check_prefix(1, prefix)[0].tolist()
        if len(tokens) >= self.dim:
            raise InputError(f"the prefix fixes all {self.dim} variables: nothing is left to search")

        def step(state: Any, last: torch.Tensor | None, i: int) -> tuple[torch.Tensor, Any]:
            params, state = self.step(state, i, None if last is None else last.to(self.device))
            return self.head(params).logits(), state

        order = self.current_order()
        results = []
        for h in beam_search(step, self.init_state(1), beam_width, self.dim - len(tokens),
                             length_penalty=length_penalty, prefix=tokens):
            flat = torch.empty(self.dim, dtype=torch.long, device=self.device)
            flat[order] = torch.tensor(tokens + h.tokens, dtype=torch.long, device=self.device)
            lp = h.log_prob + h.prefix_log_prob
            results.append((flat.reshape(self.shape).clone(), lp, lp / self.dim ** length_penalty))
        return results

    # ------------------------------------------------------------------ persistence
    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description that :func:`chainrule.create_model` rebuilds this model from."""
        args = dict(self.__dict__.get("_init_args", {}))
        shape = args.pop("shape", self.shape)
        num_values = args.pop("num_values", self.num_values)
        return {"model": self.name, "shape": list(shape) if not isinstance(shape, int) else [shape],
                "num_values": num_values, "hyperparameters": _jsonable(args)}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (see :mod:`chainrule.checkpoint`)."""
        from chainrule.checkpoint import save_model

        return save_model(self, directory, extra=extra)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_values={self.num_values}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
