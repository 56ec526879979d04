"""Output distributions: scalar conditionals (:mod:`.scalar`) and the heads that give a group of
variables its joint conditional (:mod:`.heads`, and PixelCNN++'s discretized logistic mixture in
:mod:`.logistic`)."""

from chainrule.distributions.heads import (
    GroupDistribution,
    Head,
    Independent,
    get_head,
    list_heads,
    output_head,
    register_head,
)
from chainrule.distributions.logistic import DiscretizedLogisticMixture, DiscretizedLogisticMixtureHead
from chainrule.distributions.scalar import (
    Bernoulli,
    Categorical,
    DiscreteDistribution,
    Distribution,
    Gaussian,
    MixtureOfGaussians,
    quantize_logits,
)

__all__ = [
    "Bernoulli", "Categorical", "DiscreteDistribution", "DiscretizedLogisticMixture",
    "DiscretizedLogisticMixtureHead", "Distribution", "Gaussian", "GroupDistribution", "Head",
    "Independent", "MixtureOfGaussians", "get_head", "list_heads", "output_head", "quantize_logits", "register_head",
]
