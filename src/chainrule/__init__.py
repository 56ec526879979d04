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
"""

__version__ = "0.1.0"

from chainrule.checkpoint import load  # noqa: E402
from chainrule.errors import ChainruleError, CheckpointError, DataError, InputError, UnknownNameError  # noqa: E402
from chainrule.models import AutoregressiveModel, create_model, list_models, register  # noqa: E402
from chainrule.data import Dataset, list_datasets, load_dataset  # noqa: E402
from chainrule.evaluation import EvalResult, evaluate  # noqa: E402
from chainrule.training import TrainConfig, Trainer  # noqa: E402

__all__ = [
    "AutoregressiveModel", "ChainruleError", "CheckpointError", "DataError", "Dataset", "EvalResult", "InputError",
    "TrainConfig", "Trainer", "UnknownNameError", "__version__", "create_model", "evaluate", "list_datasets",
    "list_models", "load", "load_dataset", "register",
]
