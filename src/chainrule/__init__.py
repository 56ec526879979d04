"""chainrule: autoregressive generative models, p(x) = prod_i p(x_o(i) | x_o(<i)).

The public API::

    import chainrule
    model = chainrule.create_model("made", (1, 28, 28), num_values=2, hidden_sizes=[500])
    model.log_prob(x)        # (batch,) exact log-likelihood, nats
    model.sample(16)         # (16, 1, 28, 28)
    model.save("run/")       # safetensors + JSON
    model = chainrule.load("run/")
"""

__version__ = "0.1.0"

from chainrule.checkpoint import load  # noqa: E402
from chainrule.errors import ChainruleError, CheckpointError, DataError, InputError, UnknownNameError  # noqa: E402
from chainrule.models import AutoregressiveModel, create_model, list_models, register  # noqa: E402

__all__ = [
    "AutoregressiveModel", "ChainruleError", "CheckpointError", "DataError", "InputError", "UnknownNameError",
    "__version__", "create_model", "list_models", "load", "register",
]
