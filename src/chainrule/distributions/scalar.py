"""Scalar distributions: one variable's conditional, batched.

Each class wraps a parameter tensor ``(*batch, P)`` and gives ``log_prob``, ``sample``, ``mode`` and
``mean`` over ``(*batch,)``. Discrete distributions also give their probability table, the
cumulative table and the integer frequencies an entropy coder needs. The output heads
(:mod:`chainrule.distributions.heads`) build a group's joint distribution from these.

Everything is computed in log space (``log_softmax``, ``logsigmoid``, ``logsumexp``) and in at
least float32, so that no probability is rounded to exactly zero by a ``log(clamp(p))``.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from chainrule.errors import InputError

# Bounds on predicted log-scales of the continuous heads: the lower keeps densities finite, the
# upper keeps samples finite (an unbounded scale from random or diverging weights overflows exp).
_MIN_LOG_SCALE = -7.0
_MAX_LOG_SCALE = 10.0


def quantize_logits(logits: torch.Tensor, precision: int = 16) -> torch.Tensor:
    """Integer frequencies for an entropy coder from normalized or unnormalized logits ``(*batch, K)``.

    Every value gets a frequency of at least 1 (a coder cannot code probability 0) and each row sums
    to exactly ``2**precision``. Computed row by row in float64 from the given float values, with
    nothing that depends on the batch: equal logits give equal tables, bit for bit.
    """
    total, k = 1 << precision, logits.shape[-1]
    if total < 2 * k:
        raise InputError(f"precision={precision} is too small for {k} values: need 2**precision >= {2 * k}")
    p = torch.softmax(logits.double(), -1)
    freq = (p * (total - k)).floor().long() + 1  # each >= 1
    # Hand the rounding remainder to the most probable value (first on ties), so the sum is exact.
    deficit = total - freq.sum(-1, keepdim=True)
    return freq.scatter_add(-1, p.argmax(-1, keepdim=True), deficit)


def _likelihood_dtype(t: torch.Tensor) -> torch.Tensor:
    """Likelihood math runs in float32 or better (fp16/bf16 parameters are upcast)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Distribution:
    """A batch of independent one-dimensional conditionals.

    ``params`` has shape ``(*batch, P)``; ``log_prob(x)`` takes ``x`` of shape ``(*batch,)`` and
    returns ``(*batch,)``; ``sample()`` returns ``(*batch,)``.
    """

    def __init__(self, params: torch.Tensor) -> None:
        self.params = _likelihood_dtype(params)

    @property
    def batch_shape(self) -> torch.Size:
        return self.params.shape[:-1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def mode(self) -> torch.Tensor:
        """The most probable value (argmax; for the Gaussian mixture, the mean of the heaviest component)."""
        raise NotImplementedError

    def mean(self) -> torch.Tensor:
        """The expected value, ``(*batch,)``."""
        raise NotImplementedError


class DiscreteDistribution(Distribution):
    """A distribution over {0, ..., K-1}: adds the probability and cumulative tables."""

    num_values: int

    def logits(self) -> torch.Tensor:
        """Normalized log-probabilities, ``(*batch, K)``."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits().gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    def probs(self) -> torch.Tensor:
        """Probabilities, ``(*batch, K)``, summing to 1 over the last axis."""
        return self.logits().exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.probs()
        flat = p.reshape(-1, p.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(p.shape[:-1])

    def mode(self) -> torch.Tensor:
        return self.logits().argmax(-1)

    def mean(self) -> torch.Tensor:
        p = self.probs()
        return p @ torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)

    def cdf(self) -> torch.Tensor:
        """Cumulative probabilities, ``(*batch, K + 1)``: ``cdf[..., k] = P(x < k)``, from 0 to 1."""
        p = self.probs().double()
        zero = torch.zeros(*p.shape[:-1], 1, dtype=p.dtype, device=p.device)
        return torch.cat([zero, p.cumsum(-1)], -1).clamp_(max=1.0)

    def quantized_frequencies(self, precision: int = 16) -> torch.Tensor:
        """Integer frequencies for an entropy coder, ``(*batch, K)``, int64.

        Every value gets a frequency of at least 1 (a coder cannot encode probability 0), and the
        frequencies sum to exactly ``2**precision``. The computation is deterministic given the
        probabilities, so an encoder and a decoder that see the same probabilities agree.
        """
        return quantize_logits(self.logits(), precision)


class Bernoulli(DiscreteDistribution):
    """Binary variable; ``params[..., 0]`` is the logit of P(x = 1)."""

    num_values = 2

    def logits(self) -> torch.Tensor:
        a = self.params[..., 0]
        # log P(0) = logsigmoid(-a), log P(1) = logsigmoid(a): exact in log space.
        return torch.stack([F.logsigmoid(-a), F.logsigmoid(a)], -1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        a = self.params[..., 0]
        return -F.binary_cross_entropy_with_logits(a, x.to(a.dtype), reduction="none")

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        p = torch.sigmoid(self.params[..., 0])
        return torch.bernoulli(p, generator=generator).long()


class Categorical(DiscreteDistribution):
    """K-valued variable; ``params`` are K unnormalized logits."""

    def __init__(self, params: torch.Tensor) -> None:
        super().__init__(params)
        self.num_values = params.shape[-1]

    def logits(self) -> torch.Tensor:
        return F.log_softmax(self.params, -1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(
            self.params.reshape(-1, self.num_values), x.reshape(-1).long(), reduction="none"
        ).reshape(x.shape)


class Gaussian(Distribution):
    """Real variable; ``params[..., 0]`` is the mean, ``params[..., 1]`` the log standard deviation."""

    def _mean_log_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.params[..., 0], self.params[..., 1].clamp(_MIN_LOG_SCALE, _MAX_LOG_SCALE)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self._mean_log_scale()
        z = (x - mean) * torch.exp(-log_scale)
        return -0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_scale = self._mean_log_scale()
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + eps * log_scale.exp()

    def mode(self) -> torch.Tensor:
        return self.params[..., 0]

    def mean(self) -> torch.Tensor:
        return self.params[..., 0]


class MixtureOfGaussians(Distribution):
    """Real variable, mixture of M Gaussians (RNADE, Uria et al. 2013).

    ``params[..., :M]`` are the mixture logits, ``params[..., M:2M]`` the means and
    ``params[..., 2M:]`` the log standard deviations.
    """

    def __init__(self, params: torch.Tensor) -> None:
        super().__init__(params)
        if params.shape[-1] % 3:
            raise InputError(f"a mixture of Gaussians needs 3*M parameters, got {params.shape[-1]}")
        self.num_components = params.shape[-1] // 3

    def _split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.num_components
        logw = F.log_softmax(self.params[..., :m], -1)
        return logw, self.params[..., m : 2 * m], self.params[..., 2 * m :].clamp(_MIN_LOG_SCALE, _MAX_LOG_SCALE)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        logw, mean, log_scale = self._split()
        z = (x.unsqueeze(-1) - mean) * torch.exp(-log_scale)
        comp = -0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(logw + comp, -1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        logw, mean, log_scale = self._split()
        m = self.num_components
        k = torch.multinomial(logw.exp().reshape(-1, m), 1, generator=generator).reshape(logw.shape[:-1])
        mu = mean.gather(-1, k.unsqueeze(-1)).squeeze(-1)
        sd = log_scale.gather(-1, k.unsqueeze(-1)).squeeze(-1).exp()
        return mu + sd * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)

    def mode(self) -> torch.Tensor:
        logw, mean, _ = self._split()
        return mean.gather(-1, logw.argmax(-1, keepdim=True)).squeeze(-1)

    def mean(self) -> torch.Tensor:
        logw, mean, _ = self._split()
        return (logw.exp() * mean).sum(-1)
