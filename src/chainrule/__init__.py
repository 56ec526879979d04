"""chainrule: autoregressive generative models, p(x) = prod_i p(x_o(i) | x_o(<i)).

The public API::

    import chainrule
    ds = chainrule.load_dataset("digits")
    model = chainrule.create_model("made", ds.shape, ds.num_values, hidden_sizes=[500])
    chainrule.Trainer(model, chainrule.TrainConfig(epochs=50)).fit(ds.train, ds.val)
    chainrule.evaluate(model, ds.test)   # NLL nats/example, bits/dim, perplexity
    model.log_prob(x)        # (batch,) exact log-likelihood, nats
    model.sample(16)         # (16, 1, 28, 28)
    model.save("run/")       # safetensors + JSON
    model = chainrule.load("run/")

Names are imported on first use, so ``import chainrule.data`` (or the tokenizers, or the n-gram
models) does not pay for the neural-network layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chainrule._version import __version__

if TYPE_CHECKING:  # the lazy names below, visible to type checkers and IDEs
    from chainrule.contract import ARModel
    from chainrule.data import Dataset, list_datasets, load_dataset
    from chainrule.errors import ChainruleError, CheckpointError, DataError, InputError, UnknownNameError
    from chainrule.inference.likelihood import EvalResult, evaluate
    from chainrule.models import AutoregressiveModel, Ensemble, create_model, list_models, load, register
    from chainrule.training import TrainConfig, Trainer

_LAZY = {
    "load": "chainrule.models",
    "ChainruleError": "chainrule.errors", "CheckpointError": "chainrule.errors", "DataError": "chainrule.errors",
    "InputError": "chainrule.errors", "UnknownNameError": "chainrule.errors",
    "ARModel": "chainrule.contract", "AutoregressiveModel": "chainrule.models", "Ensemble": "chainrule.models", "create_model": "chainrule.models",
    "list_models": "chainrule.models", "register": "chainrule.models",
    "Dataset": "chainrule.data", "list_datasets": "chainrule.data", "load_dataset": "chainrule.data",
    "EvalResult": "chainrule.inference.likelihood", "evaluate": "chainrule.inference.likelihood",
    "TrainConfig": "chainrule.training", "Trainer": "chainrule.training",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chainrule' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
