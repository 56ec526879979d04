"""Models: the contract (:mod:`.base`), ensembles (:mod:`.ensemble`), the registry, and one file per architecture."""

from chainrule.models.base import AutoregressiveModel
from chainrule.models.ensemble import Ensemble
from chainrule.models.registry import create_model, get_model_class, list_models, load, register

# Importing an architecture registers it.
from chainrule.models import causalconv, fvsbn, gated_pixelcnn, histogram, made, mlp, nade, pixelcnn, pixelcnnpp, pixelrnn, rnn, sigma_gpt, transformer, wavenet  # noqa: E402,F401  isort: skip

__all__ = ["AutoregressiveModel", "Ensemble", "create_model", "get_model_class", "list_models", "load", "register"]
