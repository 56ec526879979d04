"""The model registry: names -> classes, :func:`create_model` and :func:`load`."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, TypeVar

import torch

from chainrule.errors import CheckpointError, InputError, UnknownNameError
from chainrule.io.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_matching_state, read_config, read_weights, upgrade_state
from chainrule.models.base import COMMON_OPTIONS, AutoregressiveModel, rename_hyperparameters
from chainrule.models.config import MAX_SEED
from chainrule.models.ensemble import Ensemble

_REGISTRY: dict[str, type[AutoregressiveModel]] = {}

M = TypeVar("M", bound=type[AutoregressiveModel])
Model = AutoregressiveModel | Ensemble


def register(cls: M) -> M:
    """Class decorator: add a model to the registry under ``cls.name``.

    A registered model is picked up by the CLI and by the shared test suite (autoregressive
    property, normalization, sampling, save/load) with nothing else to change.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a model named {cls.name!r} is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def get_model_class(name: str) -> type[AutoregressiveModel]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def accepted_hyperparameters(name: str) -> list[str]:
    """Every hyperparameter ``name`` accepts: its own arguments, then the options common to all models."""
    params = inspect.signature(get_model_class(name).__init__).parameters
    own = [p for p, v in params.items() if p not in ("self", "shape", "num_values")
           and v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    return own + [o for o in COMMON_OPTIONS if o not in own]


def _docstring_args(doc: str | None) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: ``{name: description}`` (continuation
    lines joined). An entry "a, b: text" describes both names."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return out
    current: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            if current:
                continue
            break
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break  # the section ended
        if width == indent and ":" in line:
            names, text = line.strip().split(":", 1)
            current = [n.strip() for n in names.split(",")]
            if not all(n.isidentifier() for n in current):
                current = []  # prose such as "common options (order, head, ...): see ..."
            for n in current:
                out[n] = text.strip()
        elif current:
            for n in current:
                out[n] = (out[n] + " " + line.strip()).strip()
    return out


def hyperparameter_help(name: str) -> list[tuple[str, Any, str]]:
    """``(hyperparameter, default, description)`` for every hyperparameter of model ``name``, its own
    first (from its signature and the ``Args:`` of its docstring), then the options common to all
    models (documented on :class:`~chainrule.models.base.AutoregressiveModel`). A default of
    ``inspect.Parameter.empty`` means required. The description of a model's own hyperparameter
    ends with what its config declares it takes, e.g. "[a positive integer]"."""
    cls = get_model_class(name)
    own_doc: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's entries win over its bases' ("Args: as NADE")
        if issubclass(klass, AutoregressiveModel) and klass is not AutoregressiveModel:
            own_doc.update(_docstring_args(klass.__doc__))
    common_doc = _docstring_args(AutoregressiveModel.__doc__)
    sig = inspect.signature(cls.__init__).parameters
    base = inspect.signature(AutoregressiveModel.__init__).parameters
    takes = cls.config_class.describe()
    rows = []
    for p in accepted_hyperparameters(name):
        default = sig[p].default if p in sig else base[p].default
        text = own_doc.get(p) or common_doc.get(p, "")
        rows.append((p, default, f"{text} [{takes[p]}]" if text and p in takes else text))
    return rows


def upgrade_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a saved config (a checkpoint's, a run's) in the current spelling:
    former names (:attr:`~chainrule.models.base.AutoregressiveModel.renamed_hyperparameters`) are
    mapped silently, since the user did not write them; an unknown model is left to the caller."""
    if name not in _REGISTRY or not isinstance(hyperparameters, dict):
        return hyperparameters
    return rename_hyperparameters(_REGISTRY[name], hyperparameters, warn=False)


def deprecated_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> list[tuple[str, str]]:
    """``(old, new)`` for every former spelling among ``hyperparameters`` (for the command line,
    which says so in one line and passes :func:`upgrade_hyperparameters`' result on)."""
    if name not in _REGISTRY:
        return []
    return [(old, new) for old, new in _REGISTRY[name].renamed_hyperparameters.items() if old in hyperparameters]


def check_hyperparameters(name: str, hyperparameters: dict[str, Any]) -> None:
    """Raise an :class:`InputError` listing the accepted names if ``hyperparameters`` has unknown ones."""
    accepted = accepted_hyperparameters(name)
    former = get_model_class(name).renamed_hyperparameters  # still accepted, for a release
    unknown = sorted(set(hyperparameters) - set(accepted) - set(former))
    if unknown:
        hints = getattr(get_model_class(name), "hyperparameter_hints", {})
        hint = "".join(f" ({hints[u]})" for u in unknown if u in hints)
        raise InputError(f"model {name!r} has no hyperparameter(s) {', '.join(unknown)}{hint}; it accepts: {', '.join(accepted)}")


#: The largest integer a size-like hyperparameter (channels, hidden units, layers, K, components)
#: may take: beyond it no model fits a machine, and a typo (1e11) fails here, not in an allocation.
MAX_SIZE = 1 << 24
#: The most variables an event may have (2**28: a 3 x 8192 x 8192 image still fits).
MAX_VARIABLES = 1 << 28


def _check_hyperparameter_values(name: str, num_values: Any, hyperparameters: dict[str, Any]) -> None:
    """Bounds every model shares, checked before a constructor allocates anything: a ``seed`` is an
    integer in 0..2**63-1; every other integer (also inside lists) is at most :data:`MAX_SIZE` in
    magnitude (a float too: ``1e11`` is a size typed as a float); K (``num_values``) too. Each model
    checks the meaning of its own values (NaN and inf included)."""
    if num_values is not None and isinstance(num_values, int) and not isinstance(num_values, bool) \
            and num_values > MAX_SIZE:
        raise InputError(f"num_values={num_values}: at most {MAX_SIZE:,} discrete values (2**24) are supported")
    for key, value in hyperparameters.items():
        if key.startswith("max_"):  # a ceiling (histogram's max_configurations), checked by its model
            continue
        if key == "seed" or key.endswith("_seed"):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
                raise InputError(f"model {name!r}: {key} must be an integer in 0..2**63-1, got {value!r}")
            continue
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, (list, tuple)):
                stack.extend(v)
            elif isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAX_SIZE and abs(v) != float("inf"):
                raise InputError(f"model {name!r}: {key}={_short(value)} holds {v}, beyond any model this library "
                                 f"can build (sizes are at most {MAX_SIZE:,})")


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_size(cls: type[AutoregressiveModel], name: str, shape: Any, num_values: Any,
                hyperparameters: dict[str, Any]) -> None:
    """Build the model on the meta device (no memory) and refuse it when its parameters and
    buffers would not fit this machine's memory; a constructor that cannot run on meta tensors
    (data-dependent steps) is simply built for real."""
    from chainrule.data.formats import memory_bytes

    memory = memory_bytes()
    if memory is None:
        return
    try:
        with torch.device("meta"):
            probe = cls(shape, num_values, **hyperparameters)
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - not buildable on meta: no estimate, the real build decides
        return
    n = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    if n > memory // 2:
        count = sum(p.numel() for p in probe.parameters())
        raise InputError(f"model {name!r}: these hyperparameters give {count:,} parameters ({n / 1e9:.3g} GB), more "
                         f"than this machine's memory allows ({memory / 1e9:.3g} GB); choose smaller sizes")


def create_model(name: str, shape: tuple[int, ...] | list[int] | int, num_values: int | None = None,
                 **hyperparameters: Any) -> Model:
    """Build a registered model for events of ``shape`` with ``num_values`` values per variable.

    Example: ``create_model("made", (1, 28, 28), num_values=2, hidden_sizes=[500])``. Ensemble
    hyperparameters (``num_orders`` > 1, MADE's ``num_masks`` > 1) give an
    :class:`~chainrule.models.ensemble.Ensemble` over the model. Unknown hyperparameters raise an
    :class:`InputError` listing the accepted ones; a former spelling (pixelcnn's ``num_blocks``)
    warns (:class:`DeprecationWarning`) and means the current one.
    """
    hyperparameters = rename_hyperparameters(get_model_class(name), hyperparameters, warn=True)
    check_hyperparameters(name, hyperparameters)
    dims = [shape] if isinstance(shape, int) else shape
    if isinstance(dims, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in dims) \
            and (any(d > MAX_SIZE for d in dims) or math.prod(dims) > MAX_VARIABLES):
        raise InputError(f"model {name!r}: an event of shape {tuple(dims)} has more variables than any model here "
                         f"can hold (at most {MAX_VARIABLES:,})")
    _check_hyperparameter_values(name, num_values, hyperparameters)
    cls = get_model_class(name)
    _check_size(cls, name, shape, num_values, hyperparameters)
    try:
        model = cls(shape, num_values, **hyperparameters)
    except TypeError as exc:  # a value of the wrong type deep in a constructor
        raise InputError(f"model {name!r}: a hyperparameter has the wrong type ({exc})") from None
    except (MemoryError, OverflowError, RuntimeError) as exc:  # sizes beyond this machine (or beyond int64)
        raise InputError(f"model {name!r}: cannot be built with these hyperparameters on this machine "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    members = model.ensemble_members()
    return Ensemble(model, members) if members else model


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> Model:
    """Load a model saved by ``model.save`` (or the trainer) from ``directory``."""
    directory = Path(directory)
    config = read_config(directory)
    if config.get("model") in ("vqvae", "latent"):  # not autoregressive models: chainrule.latent builds them
        raise CheckpointError(f"{directory} holds a {config['model']} model, not an autoregressive one: load it with "
                              "chainrule.latent.load; of the commands, eval, sample, compress, decompress, complete, "
                              "inspect and report take it")
    try:
        model = create_model(config["model"], tuple(config["shape"]), config.get("num_values"),
                             **upgrade_hyperparameters(config["model"], config.get("hyperparameters", {})))
    except (KeyError, TypeError, UnknownNameError, InputError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: cannot rebuild the model ({exc})") from None
    load_matching_state(model, upgrade_state(read_weights(directory, map_location), config, model), directory)
    check_loaded_state(model, directory / WEIGHTS_FILE)
    return model.to(map_location).eval()


def check_loaded_state(model: Model, where: str | Path) -> None:
    """What a checkpoint's tensors must satisfy beyond their shapes, checked on load: every stored
    order (the buffers ``order`` / ``orders``) is a permutation of the groups (an order of zeros
    would silently give wrong likelihoods), and every weight is finite (NaN weights give NaN for
    everything)."""
    for name, buf in model.named_buffers():
        if name.rsplit(".", 1)[-1] not in ("order", "orders") or buf.numel() == 0:
            continue
        rows = buf.reshape(-1, buf.shape[-1])
        g = rows.shape[-1]
        if rows.is_floating_point() or not torch.equal(rows.sort(dim=-1).values.cpu(),
                                                        torch.arange(g).expand(rows.shape[0], g)):
            raise CheckpointError(f"{where}: the stored {name} is not a permutation of 0..{g - 1} (the order of the "
                                  "model's variables); the checkpoint is damaged")
    for name, t in model.state_dict().items():  # what the file held (not masks built from the config)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: the tensor {name} holds NaN or infinite values; the checkpoint is "
                                  "damaged (or was saved from a run whose training diverged)")
