"""The model contract every chainrule model implements (and nothing else: the generic code built on
it lives in :mod:`chainrule.inference`).

A model is one distribution over a fixed event ``shape`` of D variables, partitioned into G groups
(:mod:`chainrule.groups`; by default one variable each), factorized in an order o over the groups:

    p(x | c) = prod_i p(x_g(o(i)) | x_g(o(<i)), c)        (c: an optional context, e.g. a class label)

An architecture implements

- ``forward_embedded(e, order, context)``: the teacher-forced pass. ``e`` ``(B, G, F)`` holds the
  input features of every group *on its own* (F = S * E: the per-variable features of the group's S
  variables, see :meth:`embed`), ``order`` ``(G,)`` the order over groups, ``context`` ``(B, C)``
  the context features or None. Returns ``(B, G, P)``: ``params[:, g]`` are the P parameters of
  group g's conditional given the groups before it in ``order``. Masks, causal convolutions and
  attention live here.
- optionally ``new_state(n, order, context)`` and ``step(state, i, x_prev)``: an incremental pass
  with a cache for fast sampling (``step`` returns the parameters ``(n, P)`` of group ``order[i]``
  given the values ``x_prev`` ``(n, S)`` of group ``order[i-1]``).

and gets from this class: input validation, the event structure (groups, orders, context), the
output head (:mod:`chainrule.distributions.heads`, a group's joint distribution) and, as thin
methods over :mod:`chainrule.inference`, ``log_prob``, ``log_prob_per_variable``, ``sample``,
``beam_search`` and ``save``. Because ``embed`` encodes each variable on its own, the
autoregressive property can be checked by the gradient of ``forward_embedded``
(:mod:`chainrule.checks`).

Models with ``any_order = True`` take an order at call time (``log_prob(x, order=...)``), so a
caller can put observed groups first and condition on them; the others read in the order they were
built with. Ensembles over orders or connectivities wrap a model (:mod:`chainrule.models.ensemble`).
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

from chainrule.distributions import GroupDistribution, Head, output_head
from chainrule.errors import InputError, renamed_parameters, warn_deprecated
from chainrule.groups import GroupSpec, Grouping
from chainrule.inference import beam as _beam
from chainrule.inference import likelihood as _likelihood
from chainrule.inference import sampling as _sampling
from chainrule.inference.state import Static
from chainrule.io.checkpoint import save_model
from chainrule.models.config import ModelConfig
from chainrule.orderings import OrderSpec, make_ordering, validate_permutation

#: Options every model accepts (keyword-only, passed through ``**common`` by the architectures).
COMMON_OPTIONS = ("order", "group_shape", "head", "num_mixture_components", "num_classes", "context_shape")


class AutoregressiveModel(nn.Module):
    """Base class of every chainrule model. Subclasses set ``name`` and implement ``forward_embedded``.

    Args:
        shape: event shape of one example, e.g. ``(784,)``, ``(1, 28, 28)``, ``(3, 32, 32)`` or ``(T,)``.
        num_values: K when every variable takes values in {0, ..., K-1} (K=2: binary); None for
            real-valued data (only for models with ``supports_real``).
        order: the default order over groups (:mod:`chainrule.orderings`; "raster" is pixel-major
            on images).
        group_shape: the block of variables predicted jointly by one conditional (None: one
            variable per group; "pixel": the channels of a pixel); see :mod:`chainrule.groups`.
        head: name of the output head (:func:`chainrule.distributions.list_heads`); default the
            natural one for ``num_values``.
        num_mixture_components: components of a mixture head: for real-valued data Gaussians per
            conditional (None or 1: a Gaussian); for ``head="logistic_mixture"`` logistics per pixel
            (None: the head's default).
        num_classes: a class-conditional model: the context is a label in 0..num_classes-1.
        context_shape: a model conditioned on a real tensor of this shape per example.
    """

    name: ClassVar[str] = ""
    supports_real: ClassVar[bool] = False
    supports_discrete: ClassVar[bool] = True
    any_order: ClassVar[bool] = False  # accepts an order at call time
    fixed_order: ClassVar[str | None] = None  # the only order the architecture can read in (PixelCNN: "raster")
    image_only: ClassVar[bool] = False  # events must be images (C, H, W)
    mixed_precision: ClassVar[bool] = False  # bf16 training parity measured (precision="auto" times every model)
    # Capabilities are opt-in: a model that does not read a context must never be built with one
    # (the registry suite checks that a model claiming a context is changed by it).
    supports_context: ClassVar[bool] = False  # class labels (num_classes)
    supports_tensor_context: ClassVar[bool] = False  # context tensors (context_shape)
    supports_groups: ClassVar[bool] = True
    closed_form: ClassVar[bool] = False  # fitted by counting (``fit_counts``), not by gradient steps
    call_options: ClassVar[tuple[str, ...]] = ()  # extra call-time arguments (MADE: "mask")
    # The compressed-file format version (apps.compression) from which this architecture's files are
    # coded with its cached step; older files were coded with the full pass at every step.
    coding_step_since: ClassVar[int] = 1
    # Rows per block of the coding tables this architecture is compressed with (recorded in the file):
    # larger blocks amortize each step's Python overhead, at the memory of the state of that many rows.
    coding_block_rows: ClassVar[int] = 128
    num_members: ClassVar[int] = 1  # an ensemble (a wrapper) has more
    input_encoding: str = "value"
    # The architecture's own hyperparameters, each with its constraint (:mod:`chainrule.models.config`);
    # built and validated from the call's arguments at the end of this class's __init__ (``model.hparams``).
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # Hyperparameters small enough for the registry suite's exhaustive checks (every registered
    # model declares them; the suite fails for one that does not).
    tiny_hyperparameters: ClassVar[dict[str, Any] | None] = None
    # Former spellings of hyperparameters, old -> new: a call with the old one warns
    # (DeprecationWarning) and means the new; a checkpoint's config with it loads silently.
    renamed_hyperparameters: ClassVar[dict[str, str]] = {}

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
                kw = rename_hyperparameters(type(self), kw, warn=True)
                try:
                    bound = sig.bind(self, *args, **kw)
                except TypeError as exc:
                    raise InputError(f"model {cls.name!r}: {exc}") from None
                bound.apply_defaults()
                recorded: dict[str, Any] = {}
                for key, value in bound.arguments.items():
                    if sig.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                        recorded.update(value)
                    elif key != "self":
                        recorded[key] = value
                self.__dict__["_init_args"] = recorded
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(self, shape: tuple[int, ...] | list[int] | int, num_values: int | None, *,
                 order: OrderSpec = "raster", group_shape: GroupSpec = None, head: str | None = None,
                 num_mixture_components: int | None = None, num_classes: int | None = None,
                 context_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if isinstance(shape, int):
            shape = (shape,)
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise InputError(f"shape must be a tuple of positive integers, got {shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise InputError(f"shape must be a non-empty tuple of positive integers, got {shape!r}")
        if self.image_only and len(shape) != 3:
            raise InputError(f"model {self.name!r} models images: shape must be (C, H, W), got {shape!r} "
                             "(a grey image is (1, H, W))")
        if num_values is None and not self.supports_real:
            raise InputError(f"model {self.name!r} models discrete data only: pass num_values=K (K >= 2)")
        if num_values is not None and not self.supports_discrete:
            raise InputError(f"model {self.name!r} models real-valued data only: pass num_values=None")
        if num_values is not None and (not isinstance(num_values, int) or isinstance(num_values, bool) or num_values < 2):
            raise InputError(f"num_values must be an integer >= 2 (or None for real values), got {num_values!r}")
        self.shape: tuple[int, ...] = shape
        self.num_values: int | None = num_values
        self.dim: int = math.prod(shape)
        self.groups = Grouping(shape, group_shape)
        if not self.groups.trivial and not self.supports_groups:
            raise InputError(f"model {self.name!r} predicts one variable per conditional: group_shape must be None")
        self.num_groups, self.group_size = self.groups.num_groups, self.groups.group_size
        self.head: Head = output_head(num_values, num_mixture_components, self.group_size, head)
        if self.head.discrete != (num_values is not None):
            raise InputError(f"head {head!r} does not fit num_values={num_values!r}: "
                             f"{'discrete' if self.head.discrete else 'real-valued'} heads need "
                             f"{'num_values=K' if self.head.discrete else 'num_values=None'}")
        self.register_buffer("order", make_ordering(order, self.groups.grid), persistent=True)
        if self.fixed_order is not None and self.order.device.type != "meta" \
                and not torch.equal(self.order, make_ordering(self.fixed_order, self.groups.grid)):
            raise InputError(f"model {self.name!r} reads its variables in {self.fixed_order!r} order only (on images: "
                             "pixels row by row, R -> G -> B inside each pixel); it cannot be built with another order")
        self._init_context(num_classes, context_shape)
        #: The architecture's own hyperparameters, validated (a frozen :attr:`config_class`).
        self.hparams = self.config_class.from_arguments(self.__dict__.get("_init_args", {}))

    # ------------------------------------------------------------------ context
    def _init_context(self, num_classes: int | None, context_shape: Sequence[int] | None) -> None:
        if num_classes is not None and context_shape is not None:
            raise InputError("give num_classes (a class label per example) or context_shape (a tensor), not both")
        if (num_classes is not None or context_shape is not None) and not self.supports_context:
            raise InputError(f"model {self.name!r} takes no context (num_classes / context_shape)")
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
            raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
        if context_shape is not None:
            if not self.supports_tensor_context:
                raise InputError(f"model {self.name!r} takes class labels only (num_classes), not a context tensor")
            try:
                context_shape = tuple(int(s) for s in context_shape)
            except (TypeError, ValueError):
                raise InputError(f"context_shape must be a tuple of positive integers, got {context_shape!r}") from None
            if not context_shape or min(context_shape) < 1:
                raise InputError(f"context_shape must be a non-empty tuple of positive integers, got {context_shape!r}")
        self.num_classes: int | None = num_classes
        self.context_shape: tuple[int, ...] | None = context_shape  # type: ignore[assignment]
        self.context_dim: int = num_classes or (math.prod(context_shape) if context_shape else 0)

    @property
    def conditional(self) -> bool:
        """True for a model of p(x | context) (class labels or a context tensor)."""
        return self.context_dim > 0

    def normalize_context(self, context: Any, n: int) -> torch.Tensor | None:
        """Check a context for a batch of ``n`` and return it with a leading axis of ``n`` (None if
        the model is unconditional): labels ``(n,)`` long, or a tensor ``(n, *context_shape)``.

        Labels (``num_classes``): an int or ``(n,)`` integers in 0..num_classes-1.
        Tensors (``context_shape``): ``context_shape`` (the same for every example) or ``(n, *context_shape)``, finite.
        """
        if not self.conditional:
            if context is not None:
                raise InputError(f"{self.name}: this model is unconditional; it takes no context (got one). "
                                 "Build it with num_classes=... or context_shape=... to condition on one")
            return None
        if context is None:
            what = f"a class label in 0..{self.num_classes - 1}" if self.num_classes else f"a tensor of shape {self.context_shape}"
            raise InputError(f"{self.name}: this model is conditional: pass context= ({what} per example)")
        if isinstance(context, (str, bytes)):
            raise InputError(f"{self.name}: context must be {'class labels' if self.num_classes else 'a tensor'}, got a string")
        if self.num_classes:
            try:
                y = torch.as_tensor(context, device=self.device)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f"{self.name}: context must be class labels (integers), got {type(context).__name__}") from None
            if y.is_floating_point() and torch.isfinite(y).all() and torch.equal(y, y.round()):
                y = y.long()
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise InputError(f"{self.name}: context must be integer class labels 0..{self.num_classes - 1}, got dtype {y.dtype}")
            if y.dim() == 0:
                y = y.expand(n)
            if y.shape != (n,):
                raise InputError(f"{self.name}: expected {n} class labels (one per example), got shape {tuple(y.shape)}")
            if n and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise InputError(f"{self.name}: class labels must lie in 0..{self.num_classes - 1} (num_classes="
                                 f"{self.num_classes}), got values from {int(y.min())} to {int(y.max())}")
            return y.long()
        try:
            c = torch.as_tensor(context, device=self.device)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{self.name}: context must be a tensor of shape {self.context_shape}, got {type(context).__name__}") from None
        if not c.is_floating_point():
            c = c.float()
        if tuple(c.shape) == self.context_shape:
            c = c.expand(n, *self.context_shape)
        if tuple(c.shape) != (n, *self.context_shape):
            raise InputError(f"{self.name}: expected a context of shape ({n}, {', '.join(map(str, self.context_shape))}), "
                             f"got {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise InputError(f"{self.name}: the context contains NaN or infinite values")
        return c

    def context_features(self, context: Any, n: int) -> torch.Tensor | None:
        """The context of a batch of ``n`` as features ``(n, C)``: one-hot labels or the flattened
        tensor (None for an unconditional model). Checks it first (:meth:`normalize_context`)."""
        c = self.normalize_context(context, n)
        if c is None:
            return None
        if self.num_classes:
            return torch.nn.functional.one_hot(c, self.num_classes).to(self.float_dtype)
        return c.reshape(n, -1).to(self.float_dtype)

    @property
    def float_dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point weights (float32 unless converted): real values,
        features and one-hot encodings are made in it."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    # ------------------------------------------------------------------ orders
    def resolve_order(self, order: OrderSpec | None = None, **options: Any) -> torch.Tensor:
        """The order over groups a call uses, ``(G,)`` on the model's device: the model's own when
        ``order`` is None; any permutation for ``any_order`` models; an error otherwise."""
        if order is None:
            return self.order
        if isinstance(order, str):
            o = make_ordering(order, self.groups.grid)
        else:
            o = validate_permutation(order, self.num_groups)
        o = o.to(self.order.device)
        if not self.any_order and not torch.equal(o, self.order):
            raise InputError(f"model {self.name!r} reads its variables in the order it was built with; it does not "
                             "take another order at call time (models that do: fvsbn, nade, made, mlp, causalconv, "
                             "histogram, ...)")
        return o

    @property
    def base_model(self) -> AutoregressiveModel:
        """The model doing the work: the model itself (an ensemble's is the model it wraps)."""
        return self

    def member_call(self, member: int = 0, order: OrderSpec | None = None, **options: Any) -> dict[str, Any]:
        """The call arguments of member ``member`` (a single model has one, member 0): the resolved
        order and ``options`` — the same face as :meth:`Ensemble.member_call`."""
        if member != 0:
            raise InputError(f"{self.name}: member must be 0 (a single model has one member), got {member!r}")
        return {"order": self.resolve_order(order), **options}

    def check_options(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.call_options))
        if unknown:
            accepted = ", ".join(("context", "order") + self.call_options)
            raise InputError(f"{self.name}: unknown argument(s) {', '.join(unknown)}; it accepts: {accepted}")

    # ------------------------------------------------------------------ the contract
    def set_input_encoding(self, encoding: str) -> int:
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
            return v.to(self.float_dtype).unsqueeze(-1)
        if self.input_encoding == "onehot":
            return torch.nn.functional.one_hot(v.long(), self.num_values).to(self.float_dtype)
        return (v.to(self.float_dtype) / (self.num_values - 1)).unsqueeze(-1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-variable input features: ``(B, *shape)`` -> ``(B, D, E)``, each variable on its own."""
        return self.encode_values(x.reshape(x.shape[0], self.dim))

    def group_features(self, e: torch.Tensor) -> torch.Tensor:
        """``(B, D, E)`` per-variable features -> ``(B, G, S * E)`` per group."""
        if self.groups.trivial:
            return e
        g = self.groups.gather(e)  # (B, G, S, E)
        return g.reshape(g.shape[0], self.num_groups, -1)

    @staticmethod
    def to_generation_order(e: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """``(B, G, ...)`` in group index order -> the sequence in generation order (a no-op for raster)."""
        return e if _is_identity(order) else e[:, order]

    @staticmethod
    def from_generation_order(seq: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_generation_order`."""
        if _is_identity(order):
            return seq
        out = torch.empty_like(seq)
        out[:, order] = seq
        return out

    def forward_embedded(self, e: torch.Tensor, order: torch.Tensor, context: torch.Tensor | None,
                         **options: Any) -> torch.Tensor:
        """Teacher-forced pass: ``(B, G, F)`` -> parameters of every group's conditional ``(B, G, P)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, context: Any = None, order: OrderSpec | None = None,
                **options: Any) -> torch.Tensor:
        """Parameters of every group's conditional, ``(B, G, P)``, for a valid batch ``x`` ``(B, *shape)``.

        This is the call the trainer makes (so that a ``DistributedDataParallel`` wrapper
        synchronizes gradients); ``x`` must already be validated (:meth:`validate`).
        """
        self.check_options(options)
        ctx = self.context_features(context, x.shape[0])
        return self.forward_embedded(self.group_features(self.embed(x)), self.resolve_order(order), ctx, **options)

    # ------------------------------------------------------------------ incremental pass
    def init_state(self, n: int, context: Any = None, order: OrderSpec | None = None, **options: Any) -> Any:
        """The sampling cache for ``n`` examples before step 0 (see :meth:`step`)."""
        self.check_options(options)
        return self.new_state(n, self.resolve_order(order), self.context_features(context, n), **options)

    def init_full_pass_state(self, n: int, context: Any = None, order: OrderSpec | None = None,
                             **options: Any) -> Any:
        """A state for :meth:`full_pass_step`: the contract's uncached step, which re-runs the
        teacher-forced pass at every step, whatever cache the architecture has. Compressed files
        written before an architecture had its cached step were coded this way, and decode only
        this way (the two round differently)."""
        self.check_options(options)
        return AutoregressiveModel.new_state(self, n, self.resolve_order(order), self.context_features(context, n),
                                             **options)

    def full_pass_step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """:meth:`step` without the architecture's cache (see :meth:`init_full_pass_state`)."""
        return AutoregressiveModel.step(self, state, i, x_prev)

    def coding_state(self, state: Any, version: int) -> Any:
        """The state :meth:`init_state` made, set up to compute the tables of compressed-file format
        ``version``. An architecture whose cached step changed its arithmetic (the same conditionals,
        rounded differently) keeps the older one here for older files: a decoder must meet the
        encoder's tables bit for bit. Default: the state as it is."""
        return state

    def new_state(self, n: int, order: torch.Tensor, context: torch.Tensor | None, **options: Any) -> Any:
        """Architectures with a cache override this and :meth:`step`. Default: the partial sample."""
        x = torch.zeros(n, self.dim, dtype=torch.long if self.num_values else self.float_dtype, device=self.device)
        return {"x": x, "order": Static(order), "context": context, "options": Static(options)}

    def step(self, state: Any, i: int, x_prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Parameters ``(n, P)`` of the conditional of group ``order[i]``, given the values ``x_prev``
        ``(n, S)`` of group ``order[i-1]`` (None at i=0); returns them and the new state.

        The default recomputes the full teacher-forced pass (O(G) work per step). Models override
        it with a cache; :func:`chainrule.checks.check_step_matches_forward` tests they agree.
        A step may update ``state`` in place: pass each state to ``step`` once.
        """
        order = state["order"].value
        x = state["x"]
        if x_prev is not None:
            x = x.clone()
            x[:, self.groups.index[int(order[i - 1])].to(x.device)] = x_prev.to(x.dtype)
        e = self.group_features(self.embed(x.reshape(-1, *self.shape)))
        params = self.forward_embedded(e, order, state["context"], **state["options"].value)
        return params[:, int(order[i])], {**state, "x": x}

    # ------------------------------------------------------------------ validation
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
            if isinstance(x, (bool, str, bytes)) or x is None:
                raise InputError(f"{self.name}: expected a tensor or array of shape (batch, *{self.shape}), got {type(x).__name__}")
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(f"{self.name}: expected a tensor or array of shape (batch, *{self.shape}), got {type(x).__name__}: {exc}") from None
        if x.device.type == "meta":
            raise InputError(f"{self.name}: the data are a tensor on the meta device (a shape without values); "
                             f"pass a tensor with values (the model is on {self.device})")
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
        if x.is_complex():
            raise InputError(f"{self.name}: complex data is not supported")
        if self.num_values is None:
            if not x.is_floating_point():
                x = x.float()
            if not torch.isfinite(x).all():
                raise InputError(f"{self.name}: data contains NaN or infinite values")
            return x.to(self.device, self.float_dtype), batch
        if x.is_floating_point():
            if not torch.isfinite(x).all():
                raise InputError(f"{self.name}: data contains NaN or infinite values; expected integers 0..{self.num_values - 1}")
            if not torch.equal(x, x.round()):
                raise InputError(
                    f"{self.name}: expected integer values in 0..{self.num_values - 1} (num_values={self.num_values}), "
                    "got non-integer floats; real-valued data needs a model with num_values=None"
                )
        x = x.long()
        if x.numel() and (x.min() < 0 or x.max() >= self.num_values):
            raise InputError(
                f"{self.name}: values must lie in 0..{self.num_values - 1} (num_values={self.num_values}), "
                f"got values from {int(x.min())} to {int(x.max())}"
            )
        return x.to(self.device), batch

    # ------------------------------------------------------------------ the public face (generic code)
    def conditionals(self, x: torch.Tensor, context: Any = None, order: OrderSpec | None = None,
                     **options: Any) -> GroupDistribution:
        """The distribution of every group given the groups before it; batch shape ``(B, G)``."""
        x, _ = self.validate(x)
        return self.head(self(x, context, order, **options))

    def log_prob(self, x: torch.Tensor, context: Any = None, order: OrderSpec | None = None,
                 **options: Any) -> torch.Tensor:
        """Exact log-likelihood in nats, ``(*batch, *shape)`` -> ``(*batch,)`` (see
        :func:`chainrule.inference.likelihood.log_prob`)."""
        return _likelihood.log_prob(self, x, context, order=order, **options)

    def log_prob_per_variable(self, x: torch.Tensor, context: Any = None, order: OrderSpec | None = None,
                              **options: Any) -> torch.Tensor:
        """log p(x_j | everything before it) for every variable j, ``(*batch, D)``, nats."""
        return _likelihood.log_prob_per_variable(self, x, context, order=order, **options)

    @renamed_parameters(prefix="prompt")
    def sample(self, n: int, context: Any = None, generator: torch.Generator | None = None, *,
               prompt: torch.Tensor | None = None, observed: tuple[torch.Tensor, torch.Tensor] | None = None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               order: OrderSpec | None = None, progress: bool = False, **options: Any) -> torch.Tensor:
        """``n`` ancestral samples ``(n, *shape)`` (see :func:`chainrule.inference.sampling.sample`);
        ``prompt``: the first values in the model's order, kept (formerly ``prefix=``, deprecated);
        ``progress``: a progress bar over the steps."""
        return _sampling.sample(self, n, context, generator, prompt=prompt, observed=observed, temperature=temperature,
                                top_k=top_k, top_p=top_p, order=order, progress=progress, **options)

    @renamed_parameters(prefix="prompt")
    def beam_search(self, beam_width: int, context: Any = None, prompt: torch.Tensor | None = None,
                    length_penalty: float = 0.0, order: OrderSpec | None = None,
                    **options: Any) -> list[tuple[torch.Tensor, float, float]]:
        """The most probable whole examples found by beam search (see :func:`chainrule.inference.beam.search_model`);
        ``prompt`` fixes the first values (formerly ``prefix=``, deprecated)."""
        return _beam.search_model(self, beam_width, context, prompt=prompt, length_penalty=length_penalty,
                                  order=order, **options)

    # ------------------------------------------------------------------ ensembles and persistence
    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The arguments this model was built with (beyond shape and num_values)."""
        args = dict(self.__dict__.get("_init_args", {}))
        args.pop("shape", None)
        args.pop("num_values", None)
        return args

    def ensemble_members(self) -> list[dict[str, Any]] | None:
        """Call arguments of each member when the hyperparameters ask for an ensemble
        (``num_orders`` > 1: member 0 the model's order, the others seeded random orders), else None.
        :func:`chainrule.create_model` wraps the model in an :class:`~chainrule.models.ensemble.Ensemble`."""
        k = getattr(self.hparams, "num_orders", 1)  # validated by the model's config
        if k == 1:
            return None
        seed = self.hyperparameters.get("seed", 0)
        return [{"order": self.order}] + [
            {"order": make_ordering(f"random:{seed * 100003 + c}", self.groups.grid)} for c in range(1, k)]

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able description that :func:`chainrule.create_model` rebuilds this model from."""
        args = dict(self.__dict__.get("_init_args", {}))
        shape = args.pop("shape", self.shape)
        num_values = args.pop("num_values", self.num_values)
        return {"model": self.name, "shape": list(shape) if not isinstance(shape, int) else [shape],
                "num_values": num_values, "hyperparameters": _jsonable(args)}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (see :mod:`chainrule.io.checkpoint`)."""
        return save_model(self, directory, extra=extra)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        groups = "" if self.groups.trivial else f", group_shape={self.groups.group_shape}"
        return f"shape={self.shape}, num_values={self.num_values}{groups}"


def rename_hyperparameters(cls: type[AutoregressiveModel], hyperparameters: dict[str, Any], *, warn: bool,
                           stacklevel: int = 4) -> dict[str, Any]:
    """``hyperparameters`` with the former spellings of ``cls`` (:attr:`~AutoregressiveModel.renamed_hyperparameters`)
    replaced by the current ones. ``warn``: a :class:`DeprecationWarning` per old name (a user's call);
    without it the mapping is silent (a saved checkpoint's config). Giving both spellings is an
    :class:`InputError`. ``stacklevel`` 4 points the warning at the caller of this function's caller."""
    renames = getattr(cls, "renamed_hyperparameters", {})
    if not renames or not any(old in hyperparameters for old in renames):
        return hyperparameters
    out = dict(hyperparameters)
    for old, new in renames.items():
        if old in out:
            if new in out:
                raise InputError(f"model {cls.name!r}: give {new}= (the new name of {old}=), not both")
            if warn:
                warn_deprecated(f"hyperparameter {old}= of model {cls.name!r}", f"{new}=", stacklevel=stacklevel)
            out[new] = out.pop(old)
    return out


def select_layers(hs: Sequence[Any], layer: int | Sequence[int], what: str,
                  transform: Any = None) -> Any:
    """What a model's ``features(x, layer=...)`` returns, from the hidden states ``hs`` its one
    forward pass computed (one entry per feature layer).

    ``layer``: an integer (negative ones count from the end) gives ``transform(hs[layer])``; a
    sequence of integers gives the list ``[transform(hs[l]) for l in layer]`` in that order, so a
    caller who wants several layers (a linear probe of every layer) pays for one pass, not one per
    layer. ``what`` describes the layers for the error message (e.g. "0 = the first layer");
    ``transform`` (default: none) maps a layer's states to the features the model returns.
    ``hs`` may be any sequence: ``select_layers(range(L), layer, ...)`` checks ``layer`` before
    the pass.
    """
    single = not isinstance(layer, Sequence) or isinstance(layer, str)
    wanted = [layer] if single else list(layer)
    n = len(hs)
    for l in wanted:
        if not isinstance(l, int) or isinstance(l, bool) or not -n <= l < n:
            raise InputError(f"layer must be an integer in {-n}..{n - 1} ({what}) or a sequence of them, got {l!r}")
    if not wanted:
        raise InputError("layer is an empty sequence: give at least one layer")
    out = [hs[l] if transform is None else transform(hs[l]) for l in wanted]
    return out[0] if single else out


def _is_identity(order: torch.Tensor) -> bool:
    return bool(torch.equal(order, torch.arange(order.numel(), device=order.device)))


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
