"""The discretized logistic mixture head of PixelCNN++ (Salimans, Karpathy, Chen & Kingma 2017,
"PixelCNN++: Improving the PixelCNN with discretized logistic mixture likelihood and other
modifications", ICLR 2017, section 2.1-2.2).

A group is the S channels of one pixel (``group_shape="pixel"``), each with values 0..K-1. The
pixel has ONE mixture index m shared by its channels; given m, channel c is a logistic whose mean
depends linearly on the earlier channels of the same pixel, discretized to K bins:

    p(x) = sum_m pi_m prod_c p(x_c | m, x_<c)
    p(x_c | m, x_<c) = DLogistic(x_c; mu_cm + sum_{c'<c} tanh(a_cc'm) * v(x_c'), s_cm)

where v(k) = 2k/(K-1) - 1 rescales the values to [-1, 1]. For RGB this is PixelCNN++'s
mu_G = mu_G + alpha v(x_R), mu_B = mu_B + beta v(x_R) + gamma v(x_G).

The mass of bin k, with bin half-width h = 1/(K-1), a = (v(k) + h - mu)/s, b = (v(k) - h - mu)/s:

    k = 0:      sigma(a)                (all the mass below the first edge)
    k = K-1:    1 - sigma(b)            (all the mass above the last edge)
    otherwise:  sigma(a) - sigma(b) = sigma(a) * sigma(-b) * (1 - exp(-(a - b)))

The last identity (from sigma(a) - sigma(b) = (e^-b - e^-a) / ((1 + e^-a)(1 + e^-b))) turns the
difference of two sigmoids, which cancels catastrophically when the bin is narrow compared with s
or far in a tail, into a product of three positive factors. In log space each factor is exact:
log sigma(a) = -softplus(-a) and log sigma(-b) = -softplus(b) (``logsigmoid``), and a - b = 2h/s is
computed directly (no cancellation) and goes through log1mexp. So every bin has a finite, accurate
log-probability for any finite parameters that do not overflow float32 (|mu| up to ~1e35), with no
fallback to a density at the bin centre (PixelCNN++'s approximation below 1e-5).

In float32 the one inexact step is the bin edge itself (v(k) +- h is rounded to 24 bits), an error
of about one float32 unit of 1 in the edge, amplified by 1/s <= e^7 in a and b: the same as moving
mu by about one unit in its last place, i.e. as accurate as a float32 mu can ask for.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from chainrule.distributions.heads import GroupDistribution, Head, register_head
from chainrule.errors import InputError

# Bounds of the log-scale. The lower (PixelCNN++'s -7) keeps 1/s <= e^7 ~ 1100, so the
# standardized edges stay far from float32 overflow and their rounding error small; a logistic that
# narrow already puts almost all its mass in one bin even for K = 256, so little is lost. The upper
# keeps a logistic from being flatter than any use needs (s = e^7, ~1100 times the whole [-1, 1]
# range). A hard clamp like the other heads: gradients are exact inside, zero outside, never inf or NaN.
_MIN_LOG_SCALE = -7.0
_MAX_LOG_SCALE = 7.0
_LN2 = math.log(2.0)


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) for d > 0, accurate for every d (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): log(-expm1(-d)) for small d, log1p(-exp(-d)) for large d.

    Each branch only sees inputs where it is finite, so the unused branch of ``torch.where``
    cannot put an inf or NaN into the gradient.
    """
    small = d <= _LN2
    d_small = d.clamp(max=_LN2)
    d_large = d.clamp(min=_LN2)
    return torch.where(small, torch.log(-torch.expm1(-d_small)), torch.log1p(-torch.exp(-d_large)))


def discretized_logistic_log_prob(k: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  num_values: int) -> torch.Tensor:
    """log P(bin k) for a logistic(mean, exp(log_scale)) discretized to ``num_values`` bins on [-1, 1].

    Args:
        k: integer values in 0..K-1 (any integer or float dtype), broadcastable with ``mean``.
        mean, log_scale: the logistic's location (in the rescaled units) and log-scale (already
            bounded), broadcastable.
        num_values: K >= 2.

    Returns: the broadcast shape, in the dtype of ``mean``; sums to 1 (in probability) over k.
    """
    km1 = num_values - 1
    kf = k.to(mean.dtype)
    inv_s = torch.exp(-log_scale)
    # Edges from integers, so the right edge of bin k and the left edge of bin k+1 are the same
    # float: the bins tile the line exactly.
    a = ((2 * kf + 1) / km1 - 1 - mean) * inv_s  # right edge, standardized
    b = ((2 * kf - 1) / km1 - 1 - mean) * inv_s  # left edge, standardized
    # logsigmoid is min(t, 0) - log1p(exp(-|t|)): exact for every t (unlike softplus, whose linear
    # cut-off at t > 20 drops up to 2e-9, visible in float64).
    log_below = F.logsigmoid(a)  # log sigma(a): mass left of the right edge
    log_above = F.logsigmoid(-b)  # log(1 - sigma(b)) = log sigma(-b): mass right of the left edge
    width = (2.0 / km1) * inv_s  # a - b, without cancellation
    interior = log_below + log_above + _log1mexp(width)
    return torch.where(k == 0, log_below, torch.where(k == km1, log_above, interior))


class DiscretizedLogisticMixture(GroupDistribution):
    """The joint conditional of a batch of pixels under a discretized logistic mixture.

    Args:
        params: ``(*batch, P)`` with ``P = M * (1 + 2S + S(S-1)/2)``, laid out as
            ``[logits (M) | means (S, M) | log-scales (S, M) | coupling (S(S-1)/2, M)]``; the coupling
            rows are the pairs (c, c') with c' < c in the order (1,0), (2,0), (2,1), (3,0), ...
            (for RGB: alpha, beta, gamma of PixelCNN++) and pass through tanh.
        num_values: K, values 0..K-1.
        group_size: S, channels per pixel.
        num_components: M.

    Everything is computed in float32 (fp16/bf16 parameters are upcast; float64 stays float64).
    """

    discrete = True

    def __init__(self, params: torch.Tensor, num_values: int, group_size: int, num_components: int) -> None:
        p = params.float() if params.dtype in (torch.float16, torch.bfloat16) else params
        m, s = num_components, group_size
        batch = p.shape[:-1]
        self.num_values, self.group_size, self.num_components = num_values, group_size, num_components
        self.log_weights = F.log_softmax(p[..., :m], -1)  # (*batch, M)
        o = m
        self.means = p[..., o : o + s * m].reshape(*batch, s, m)  # (*batch, S, M), rescaled units
        o += s * m
        self.log_scales = p[..., o : o + s * m].reshape(*batch, s, m).clamp(_MIN_LOG_SCALE, _MAX_LOG_SCALE)
        o += s * m
        self.coeffs = torch.tanh(p[..., o:].reshape(*batch, s * (s - 1) // 2, m))  # (*batch, S(S-1)/2, M)

    @property
    def batch_shape(self) -> torch.Size:
        return self.log_weights.shape[:-1]

    # ------------------------------------------------------------------ helpers
    def _rescale(self, k: torch.Tensor) -> torch.Tensor:
        """Values 0..K-1 (or their expectations) -> [-1, 1]."""
        return k.to(self.means.dtype) * (2.0 / (self.num_values - 1)) - 1.0

    def _coupled_means(self, v: torch.Tensor | None, j: int, per_component: bool = False) -> torch.Tensor:
        """Channel j's mean in every component, ``(*batch, M)``, given the earlier channels' rescaled
        values ``v``: ``(*batch, j)`` shared by all components, or ``(*batch, j, M)`` if ``per_component``."""
        mu = self.means[..., j, :]
        if j == 0:
            return mu
        start = j * (j - 1) // 2
        c = self.coeffs[..., start : start + j, :]  # (*batch, j, M)
        return mu + (c * (v if per_component else v.unsqueeze(-1))).sum(-2)

    def _check_x(self, x: torch.Tensor | None, j: int) -> None:
        if j > 0 and x is None:
            raise InputError(f"this needs the group's values x[..., :{j}] (a long tensor), got x=None")
        if x is not None and (x.dim() < 1 or x.shape[-1] != self.group_size):
            raise InputError(f"expected values of shape (*batch, {self.group_size}) (one per channel of the "
                             f"group), got {tuple(x.shape)}")

    def _component_log_probs(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """log p(x_c | m, x_<c) for c < ``upto``: a list of ``(*batch, M)``."""
        v = self._rescale(x[..., :upto])
        out = []
        for c in range(upto):
            mu = self._coupled_means(v[..., :c], c)
            k = x[..., c].unsqueeze(-1)
            out.append(discretized_logistic_log_prob(k, mu, self.log_scales[..., c, :], self.num_values))
        return out

    def _table(self, mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """``(*batch, M)`` means and log-scales -> ``(*batch, M, K)`` log-probabilities of every value."""
        ks = torch.arange(self.num_values, device=mu.device)
        return discretized_logistic_log_prob(ks, mu.unsqueeze(-1), log_scale.unsqueeze(-1), self.num_values)

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of whole pixels: ``(*batch, S)`` -> ``(*batch,)``, nats."""
        self._check_x(x, self.group_size)
        comps = self._component_log_probs(x, self.group_size)
        return torch.logsumexp(self.log_weights + sum(comps), -1)

    def log_prob_per_variable(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_j | x_<j) inside the pixel, ``(*batch, S)``: the mixture over the posterior of the
        component given the channels seen so far, w_m(x_<j) ~ pi_m prod_{c<j} p(x_c | m, x_<c)."""
        self._check_x(x, self.group_size)
        comps = self._component_log_probs(x, self.group_size)
        acc, out = self.log_weights, []
        for lp in comps:
            out.append(torch.logsumexp(acc.log_softmax(-1) + lp, -1))
            acc = acc + lp
        return torch.stack(out, -1)

    def variable_logits(self, x: torch.Tensor | None, j: int) -> torch.Tensor:
        """log p(x_j = k | x_<j) for k = 0..K-1, ``(*batch, K)``; only ``x[..., :j]`` is read (x may be
        None for j = 0). The same computation as :meth:`log_prob_per_variable`, for every k."""
        if not isinstance(j, int) or not 0 <= j < self.group_size:
            raise InputError(f"variable index j must be in 0..{self.group_size - 1}, got {j!r}")
        self._check_x(x, j)
        acc = self.log_weights
        v = None
        if j:
            for lp in self._component_log_probs(x, j):
                acc = acc + lp
            v = self._rescale(x[..., :j])
        table = self._table(self._coupled_means(v, j), self.log_scales[..., j, :])  # (*batch, M, K)
        return torch.logsumexp(acc.log_softmax(-1).unsqueeze(-1) + table, -2)

    # ------------------------------------------------------------------ draws and summaries
    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact ancestral draw, ``(*batch, S)`` long: the component, then channel by channel a
        logistic draw of that component (coupled to the channels already drawn) by the inverse CDF,
        mu + s (log u - log(1 - u)), put in its bin: value k's bin is [c_k - 1/(K-1), c_k + 1/(K-1))
        around c_k = 2k/(K-1) - 1 with the edge bins open, which is exactly how the discretized
        probabilities are defined, so the draw has their law without building a K-entry table per
        pixel (a whole image at once: 64 x 784 pixels drew in 4 s through the tables)."""
        batch, m, kk = self.batch_shape, self.num_components, self.num_values
        x = torch.zeros(*batch, self.group_size, dtype=torch.long, device=self.means.device)
        if x.numel() == 0:
            return x
        comp = torch.multinomial(self.log_weights.exp().reshape(-1, m), 1, generator=generator).reshape(*batch, 1)
        for j in range(self.group_size):
            mu = self._coupled_means(self._rescale(x[..., :j]), j).gather(-1, comp)[..., 0]  # (*batch,)
            ls = self.log_scales[..., j, :].gather(-1, comp)[..., 0]
            u = torch.rand(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            y = mu + ls.exp() * (torch.log(u) - torch.log1p(-u))
            x[..., j] = ((y + 1) * ((kk - 1) / 2)).round().clamp(0, kk - 1).long()
        return x

    def mode(self) -> torch.Tensor:
        """Greedy sequential mode, ``(*batch, S)`` long: x_j = argmax_k p(x_j = k | x_<j = the modes
        chosen before). Not necessarily the joint mode of the pixel."""
        x = torch.zeros(*self.batch_shape, self.group_size, dtype=torch.long, device=self.means.device)
        for j in range(self.group_size):
            x[..., j] = self.variable_logits(x, j).argmax(-1)
        return x

    def mean(self) -> torch.Tensor:
        """Expected values in 0..K-1 units, ``(*batch, S)`` float: sum_m pi_m E[x_j | m].

        Exact for channel 0 and for uncoupled channels. With coupling, E[x_j | m] would need a sum
        over all K^j earlier values (the discretized mean is nonlinear in the logistic's mean), so
        the earlier channels enter channel j's coupled mean at their expected values under the same
        component (a first-order approximation).
        """
        ks = torch.arange(self.num_values, device=self.means.device, dtype=self.means.dtype)
        weights = self.log_weights.exp()
        per_comp: list[torch.Tensor] = []  # E[x_c | m], (*batch, M)
        for j in range(self.group_size):
            v = torch.stack([self._rescale(e) for e in per_comp], -2) if j else None  # (*batch, j, M)
            probs = self._table(self._coupled_means(v, j, per_component=True), self.log_scales[..., j, :]).exp()
            per_comp.append(probs @ ks)
        return torch.stack([(weights * e).sum(-1) for e in per_comp], -1)


@register_head
class DiscretizedLogisticMixtureHead(Head):
    """PixelCNN++'s discretized logistic mixture for groups of S channels with values 0..K-1.

    Args:
        num_values: K >= 2.
        group_size: S >= 1 channels per group (1 grey, 3 RGB).
        num_mixture_components: M >= 1 logistics per pixel, shared by its channels (the PixelCNN++
            code uses 10).

    ``num_params = M * (1 + 2S + S(S-1)/2)`` (10 M for RGB); the layout is described in
    :class:`DiscretizedLogisticMixture`.
    """

    name = "logistic_mixture"
    discrete = True

    def __init__(self, num_values: int | None, group_size: int = 1, num_mixture_components: int = 10) -> None:
        if not isinstance(num_mixture_components, int) or isinstance(num_mixture_components, bool) \
                or num_mixture_components < 1:
            raise InputError(f"the logistic_mixture head needs num_mixture_components, a positive integer, "
                             f"got {num_mixture_components!r}")
        super().__init__(num_values, group_size)
        self.num_mixture_components = num_mixture_components
        s = group_size
        self.num_params = num_mixture_components * (1 + 2 * s + s * (s - 1) // 2)

    def distribution(self, params: torch.Tensor) -> GroupDistribution:
        k: int = self.num_values  # type: ignore[assignment]  # validated >= 2 by Head
        return DiscretizedLogisticMixture(params, k, self.group_size, self.num_mixture_components)

    @property
    def options(self) -> dict[str, Any]:
        return {"num_mixture_components": self.num_mixture_components}
