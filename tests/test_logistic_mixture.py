"""The discretized logistic mixture head (PixelCNN++) against brute-force sums and a float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from chainrule.distributions import (
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureHead,
    get_head,
    output_head,
)
from chainrule.errors import InputError


def make_head(k: int, s: int, m: int) -> DiscretizedLogisticMixtureHead:
    return output_head(k, num_mixture_components=m, group_size=s, name="logistic_mixture")


def random_params(head: DiscretizedLogisticMixtureHead, batch: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, head.num_params, generator=g) * scale


def all_configs(k: int, s: int) -> torch.Tensor:
    """Every group value, ``(K^S, S)``."""
    return torch.tensor(list(itertools.product(range(k), repeat=s)), dtype=torch.long)


def joint_table(dist: DiscretizedLogisticMixture, k: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every configuration for a batch of B groups: ``(K^S, S)`` configs, ``(K^S, B)`` log-probs."""
    xs = all_configs(k, s)
    b = dist.batch_shape[0]
    return xs, dist.log_prob(xs[:, None, :].expand(-1, b, -1))


def pack(m: int, s: int, logits, means, log_scales, coeffs) -> torch.Tensor:
    """Parameters of one group from their parts: logits (M,), means (S, M), log-scales (S, M),
    coupling (S(S-1)/2, M) before tanh."""
    parts = [torch.as_tensor(t, dtype=torch.float32).reshape(-1) for t in (logits, means, log_scales, coeffs)]
    out = torch.cat(parts)
    assert out.numel() == m * (1 + 2 * s + s * (s - 1) // 2)
    return out


def reference_bin_log_prob(k: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_values: int) -> torch.Tensor:
    """log P(bin k) straight from the definition, float64 sigmoid differences (accurate while the
    mass of the bin is not tiny)."""
    k, mean, log_scale = k.double(), mean.double(), log_scale.double().clamp(-7, 7)
    h = 1.0 / (num_values - 1)
    x = 2 * k / (num_values - 1) - 1
    s = log_scale.exp()
    upper = torch.sigmoid((x + h - mean) / s)
    lower = torch.sigmoid((x - h - mean) / s)
    mass = torch.where(k == 0, upper, torch.where(k == num_values - 1, 1 - lower, upper - lower))
    return mass.log()


# ---------------------------------------------------------------------------- 1. normalization
@pytest.mark.parametrize("k,s", [(4, 1), (256, 1), (2, 1), (2, 3), (3, 3), (4, 3), (5, 2)])
@pytest.mark.parametrize("scale", [0.3, 1.5, 5.0])
def test_sums_to_one_over_all_configurations(k, s, scale):
    head = make_head(k, s, 3)
    dist = head(random_params(head, 6, scale, seed=k * 10 + s))
    _, lp = joint_table(dist, k, s)
    assert torch.isfinite(lp).all()
    total = lp.double().exp().sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5, rtol=0), total


def test_sums_to_one_with_scales_at_both_bounds():
    """log-scales far beyond [-7, 7] are clamped; the 256 bins still sum to 1 (the widest logistic
    puts almost all its mass in the two edge bins, the narrowest almost all in one bin)."""
    head = make_head(256, 1, 2)
    rows = []
    for mu, ls in itertools.product([-3.0, -1.0, -0.3, 0.0, 0.7, 1.0, 4.0], [-30.0, -7.0, 0.0, 7.0, 30.0]):
        rows.append(pack(2, 1, [0.0, 1.0], [[mu, -mu]], [[ls, ls / 2]], []))
    dist = head(torch.stack(rows))
    _, lp = joint_table(dist, 256, 1)
    total = lp.double().exp().sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5, rtol=0), total


# ---------------------------------------------------------------------------- 2. chain rule inside the group
@pytest.mark.parametrize("k,s,m", [(5, 3, 4), (3, 2, 1), (256, 3, 5), (4, 4, 2)])
def test_per_variable_terms_and_variable_logits_agree(k, s, m):
    head = make_head(k, s, m)
    dist = head(random_params(head, 40, 1.5, seed=1))
    x = torch.randint(k, (40, s), generator=torch.Generator().manual_seed(2))
    per = dist.log_prob_per_variable(x)
    assert per.shape == (40, s)
    assert torch.allclose(per.sum(-1), dist.log_prob(x), atol=1e-5, rtol=0)
    other = torch.randint(k, (40, s), generator=torch.Generator().manual_seed(3))
    for j in range(s):
        vl = dist.variable_logits(x, j)
        assert vl.shape == (40, k)
        assert torch.allclose(vl.logsumexp(-1), torch.zeros(40), atol=1e-5)
        assert torch.allclose(vl.gather(-1, x[:, j : j + 1]).squeeze(-1), per[:, j], atol=1e-5, rtol=0)
        # Only x[..., :j] is read: anything in x[..., j:] gives the same table.
        mixed = torch.cat([x[:, :j], other[:, j:]], -1)
        assert torch.equal(dist.variable_logits(mixed, j), vl)
    assert torch.equal(dist.variable_logits(None, 0), dist.variable_logits(x, 0))
    with pytest.raises(InputError, match="variable index"):
        dist.variable_logits(x, s)
    if s > 1:
        with pytest.raises(InputError, match="x=None"):
            dist.variable_logits(None, 1)


def test_per_variable_terms_are_the_conditionals_of_the_joint():
    """log p(x_j | x_<j) from brute-force marginals of the joint over all K^S configurations: the
    component posterior given the earlier channels is what the chain rule needs."""
    k, s = 3, 3
    head = make_head(k, s, 3)
    dist = head(random_params(head, 4, 2.0, seed=5))
    xs, lp = joint_table(dist, k, s)
    joint = lp.double().exp().reshape(k, k, k, 4)
    p0 = joint.sum((1, 2))  # (K, B)
    p01 = joint.sum(2)  # (K, K, B)
    expected = torch.stack([
        p0[xs[:, 0]].log(),
        (p01[xs[:, 0], xs[:, 1]] / p0[xs[:, 0]]).log(),
        (joint[xs[:, 0], xs[:, 1], xs[:, 2]] / p01[xs[:, 0], xs[:, 1]]).log(),
    ], -1)  # (K^S, B, S)
    per = dist.log_prob_per_variable(xs[:, None, :].expand(-1, 4, -1)).double()
    assert torch.allclose(per, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- 3. channel coupling
def test_coupling_follows_pixelcnnpp_for_rgb():
    """M = 1: mu_G = mu_G + tanh(alpha) v(x_R), mu_B = mu_B + tanh(beta) v(x_R) + tanh(gamma) v(x_G)."""
    k = 16
    head = make_head(k, 3, 1)
    mu, ls, raw = [0.1, -0.2, 0.3], [-1.5, -1.0, -2.0], [0.8, -0.5, 1.2]  # alpha, beta, gamma
    dist = head(pack(1, 3, [0.0], mu, ls, raw).expand(5, -1))
    x = torch.tensor([[0, 3, 9], [15, 0, 2], [7, 7, 7], [2, 15, 0], [11, 4, 13]])
    v = 2 * x.double() / (k - 1) - 1
    a, b, c = (torch.tanh(torch.tensor(r, dtype=torch.float64)) for r in raw)
    means = [torch.full((5,), mu[0], dtype=torch.float64), mu[1] + a * v[:, 0], mu[2] + b * v[:, 0] + c * v[:, 1]]
    ks = torch.arange(k, dtype=torch.float64)
    for j in range(3):
        ref = reference_bin_log_prob(ks, means[j][:, None], torch.tensor(ls[j]), k)
        assert torch.allclose(dist.variable_logits(x, j).double(), ref, atol=1e-5, rtol=0)


def test_coupled_channel_depends_on_the_earlier_one():
    k = 8
    head = make_head(k, 3, 1)
    dist = head(pack(1, 3, [0.0], [0.0, 0.0, 0.0], [-2.0, -2.0, -2.0], [2.0, 0.0, 0.0]).expand(k, -1))
    x = torch.zeros(k, 3, dtype=torch.long)
    x[:, 0] = torch.arange(k)
    green = dist.variable_logits(x, 1).exp()  # p(x_G | x_R = 0..K-1)
    assert (green[0] - green[-1]).abs().max() > 0.1
    e_green = green @ torch.arange(k, dtype=torch.float32)
    assert (e_green.diff() > 0).all()  # a positive alpha moves G up with R
    blue = dist.variable_logits(x, 2)  # beta = gamma = 0: B does not see R
    assert torch.allclose(blue, blue[:1].expand_as(blue), atol=1e-6)


def test_uncoupled_single_component_channels_are_independent():
    k, s = 4, 3
    head = make_head(k, s, 1)
    g = torch.Generator().manual_seed(7)
    p = pack(1, s, [0.3], torch.randn(s, generator=g), torch.randn(s, generator=g) - 1, [0.0, 0.0, 0.0])
    dist = head(p.expand(k**s, -1))
    xs = all_configs(k, s)
    tables = [dist.variable_logits(xs, j) for j in range(s)]
    for t in tables:  # the same table whatever the earlier channels
        assert torch.allclose(t, t[:1].expand_as(t), atol=1e-6)
    independent = sum(tables[j].gather(-1, xs[:, j : j + 1]).squeeze(-1) for j in range(s))
    assert torch.allclose(dist.log_prob(xs), independent, atol=1e-5)


def test_channels_share_one_component():
    """Two components, no coupling: the channels are still dependent through the shared mixture
    index (dark pixels are dark in every channel), unlike a per-channel mixture."""
    k = 8
    head = make_head(k, 2, 2)
    dist = head(pack(2, 2, [0.0, 0.0], [[-0.8, 0.8], [-0.8, 0.8]], [[-3.0, -3.0], [-3.0, -3.0]], [[0.0, 0.0]]).expand(2, -1))
    x = torch.tensor([[0, 0], [k - 1, 0]])
    green = dist.variable_logits(x, 1).exp() @ torch.arange(k, dtype=torch.float32)
    assert green[0] < 2.5 and green[1] > 4.5


# ---------------------------------------------------------------------------- 4. edge bins and extremes
@pytest.mark.parametrize("k", [2, 4, 256])
def test_extreme_parameters_give_finite_log_probs_and_gradients(k):
    mus = [-50.0, -3.0, -1.0, -1e-3, 0.0, 0.5, 1.0, 3.0, 50.0]
    log_scales = [-40.0, -7.0, -3.0, 0.0, 3.0, 7.0, 40.0]
    rows = torch.tensor([[0.0, mu, ls] for mu, ls in itertools.product(mus, log_scales)], requires_grad=True)
    dist = make_head(k, 1, 1)(rows)
    xs = torch.arange(k)[:, None, None].expand(-1, rows.shape[0], 1)  # every bin, incl. 0 and K-1
    lp = dist.log_prob(xs)  # (K, R)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp.logsumexp(0), torch.zeros(rows.shape[0]), atol=1e-5)
    lp.sum().backward()
    assert torch.isfinite(rows.grad).all()
    # Gradient of one bin at a time too (a single far-tail bin, not averaged with the others).
    for kk in {0, k // 2, k - 1}:
        rows.grad = None
        dist = make_head(k, 1, 1)(rows)
        dist.log_prob(torch.full((rows.shape[0], 1), kk)).sum().backward()
        assert torch.isfinite(rows.grad).all()


def test_tiny_masses_are_accurate():
    """Far in a tail: log P = log sigma(a) (edge bin) and log(sigma(a) - sigma(b)) = a + log(1 - e^{b-a})
    + O(e^a) (interior bin, a, b << 0): checked against those asymptotics in float64."""
    k, ls = 256, -7.0
    inv_s = torch.tensor(-ls, dtype=torch.float64).exp()
    h = 1.0 / (k - 1)
    head = make_head(k, 1, 1)
    for mu, kk in [(50.0, 0), (50.0, 100), (50.0, 254), (-50.0, 255), (-50.0, 1)]:
        dist = head(torch.tensor([[0.0, mu, ls]]))
        ours = dist.log_prob(torch.tensor([[kk]])).double()
        x = 2 * kk / (k - 1) - 1
        if mu > 0:  # the bin is far left of the mean: a, b << 0
            a, b = (x + h - mu) * inv_s, (x - h - mu) * inv_s
            ref = a if kk == 0 else a + torch.log1p(-torch.exp(b - a))
        else:  # far right: by symmetry with -b, -a
            a, b = (x + h - mu) * inv_s, (x - h - mu) * inv_s
            ref = -b if kk == k - 1 else -b + torch.log1p(-torch.exp(b - a))
        assert torch.isfinite(ours).all() and ours.item() < -1000
        assert abs(ours.item() - ref.item()) <= 1e-6 * abs(ref.item()), (mu, kk, ours.item(), ref.item())


@pytest.mark.parametrize("k", [2, 4, 256])
def test_matches_float64_sigmoid_differences(k):
    g = torch.Generator().manual_seed(k)
    n = 200
    mu = torch.rand(n, generator=g) * 2.4 - 1.2
    ls = torch.rand(n, generator=g) * 3.5 - 3.0  # log-scales in [-3, 0.5]
    head = make_head(k, 1, 1)
    rows = torch.stack([torch.zeros(n), mu, ls], -1)
    xs = torch.arange(k)[:, None, None].expand(-1, n, 1)
    ref = reference_bin_log_prob(torch.arange(k)[:, None], mu, ls, k)  # (K, n)
    # Where a bin's mass is not tiny: the difference of float64 sigmoids, each within ~1e-16, is then
    # accurate to ~1e-11 in log space (further out it is not: see the arbitrary-precision test).
    accurate = ref > -12
    assert accurate.float().mean() > 0.3
    ours32 = head(rows).log_prob(xs)
    assert ours32.dtype == torch.float32
    assert (ours32.double() - ref)[accurate].abs().max() < 1e-5
    ours64 = head(rows.double()).log_prob(xs)  # the formula itself, without float32 rounding
    assert (ours64 - ref)[accurate].abs().max() < 1e-9


def test_matches_arbitrary_precision_in_the_tails():
    """Against mpmath at 50 digits, over the whole parameter range, tails included (where float64
    sigmoid differences lose their digits): float64 to ~1e-13 relative; float32 to ~1e-6 relative
    plus the rounding of the bin edges to float32 (~2 units of 1.0 in the last place, times 1/s,
    times |d log P / d a| <= 1), i.e. a shift of mu by about one float32 ulp."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50

    def exact(k: int, kk: int, mu: float, ls: float) -> float:
        mu_, s_ = mpmath.mpf(mu), mpmath.exp(mpmath.mpf(ls))
        h, x = mpmath.mpf(1) / (k - 1), mpmath.mpf(2 * kk) / (k - 1) - 1
        cdf = lambda t: 1 / (1 + mpmath.exp(-(t - mu_) / s_))  # noqa: E731
        sf = lambda t: 1 / (1 + mpmath.exp((t - mu_) / s_))  # 1 - cdf, without cancellation  # noqa: E731
        if kk == 0:
            mass = cdf(x + h)
        elif kk == k - 1:
            mass = sf(x - h)
        else:  # difference of the two tails that are small here (mpf has no underflow)
            mass = cdf(x + h) - cdf(x - h) if x <= mu_ else sf(x - h) - sf(x + h)
        return float(mpmath.log(mass))

    g = torch.Generator().manual_seed(0)
    for k in (2, 4, 256):
        n = 12
        mu = torch.cat([torch.rand(n - 2, generator=g) * 8 - 4, torch.tensor([-50.0, 50.0])])
        ls = torch.cat([torch.rand(n - 2, generator=g) * 14 - 7, torch.tensor([-7.0, 7.0])])
        bins = sorted({0, 1, k // 3, k // 2, k - 2, k - 1})
        ref = torch.tensor([[exact(k, kk, float(m), float(l)) for m, l in zip(mu, ls)] for kk in bins],
                           dtype=torch.float64)
        xs = torch.tensor(bins)[:, None, None].expand(-1, n, 1)
        rows = torch.stack([torch.zeros(n), mu, ls], -1)
        tol = 1.0 + ref.abs()
        ours64 = make_head(k, 1, 1)(rows.double()).log_prob(xs)
        assert ((ours64 - ref).abs() / tol).max() < 1e-13
        ours32 = make_head(k, 1, 1)(rows).log_prob(xs).double()
        edge_rounding = 2.5 * torch.finfo(torch.float32).eps * (-ls.double().clamp(-7, 7)).exp()
        assert ((ours32 - ref).abs() <= 1e-6 * tol + edge_rounding).all()


def test_multichannel_extremes_stay_finite():
    head = make_head(256, 3, 4)
    p = (random_params(head, 50, 40.0, seed=9)).requires_grad_(True)
    dist = head(p)
    x = torch.randint(256, (50, 3), generator=torch.Generator().manual_seed(0))
    x[:10] = 0
    x[10:20] = 255
    lp, per = dist.log_prob(x), dist.log_prob_per_variable(x)
    assert torch.isfinite(lp).all() and torch.isfinite(per).all()
    for j in range(3):
        assert torch.isfinite(dist.variable_logits(x, j)).all()
    (lp.sum() + per.sum()).backward()
    assert torch.isfinite(p.grad).all()


def test_half_precision_parameters_are_upcast():
    head = make_head(16, 3, 2)
    p = random_params(head, 8, 1.0).bfloat16()
    x = torch.randint(16, (8, 3), generator=torch.Generator().manual_seed(0))
    lp = head(p).log_prob(x)
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, head(p.float()).log_prob(x))


# ---------------------------------------------------------------------------- 5. sampling, mode, mean
def test_samples_follow_the_probabilities():
    k, s, n = 3, 2, 20_000
    head = make_head(k, s, 2)
    p = pack(2, s, [0.4, -0.2], [[-0.5, 0.6], [0.2, -0.3]], [[-0.5, -1.0], [-1.2, -0.3]], [[1.5, -0.8]])
    dist = head(p.expand(n, -1))
    x = dist.sample(torch.Generator().manual_seed(0))
    assert x.shape == (n, s) and x.dtype == torch.long
    assert x.min() >= 0 and x.max() < k
    assert torch.equal(x, dist.sample(torch.Generator().manual_seed(0)))
    assert not torch.equal(x, dist.sample(torch.Generator().manual_seed(1)))
    xs = all_configs(k, s)
    probs = head(p).log_prob(xs).double().exp()  # (K^S,)
    counts = torch.bincount(x[:, 0] * k + x[:, 1], minlength=k**s).double()
    assert torch.allclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    assert chisquare(counts.numpy(), (probs / probs.sum() * n).numpy()).pvalue > 1e-3


def test_samples_of_a_coupled_rgb_pixel_follow_the_probabilities():
    k, s, n = 2, 3, 20_000
    head = make_head(k, s, 2)
    dist = head(random_params(head, 1, 1.5, seed=3).expand(n, -1))
    x = dist.sample(torch.Generator().manual_seed(0))
    probs = head(random_params(head, 1, 1.5, seed=3)).log_prob(all_configs(k, s)[:, None, :]).squeeze(-1).double().exp()
    counts = torch.bincount(x[:, 0] * 4 + x[:, 1] * 2 + x[:, 2], minlength=8).double()
    assert chisquare(counts.numpy(), (probs / probs.sum() * n).numpy()).pvalue > 1e-3


def test_mode_and_mean():
    k = 6
    head = make_head(k, 1, 3)
    dist = head(random_params(head, 10, 2.0, seed=4))
    table = dist.variable_logits(None, 0)
    assert torch.equal(dist.mode()[:, 0], table.argmax(-1))
    assert torch.allclose(dist.mean()[:, 0], table.exp() @ torch.arange(k, dtype=torch.float32), atol=1e-5)
    # Uncoupled channels: mean() is the exact expectation, checked by brute force.
    k, s = 4, 3
    head = make_head(k, s, 2)
    p = random_params(head, 3, 1.5, seed=6)
    p[:, -3 * 2 :] = 0.0  # coupling off
    dist = head(p)
    xs, lp = joint_table(dist, k, s)
    exact = (lp.double().exp()[..., None] * xs[:, None, :].double()).sum(0)  # (B, S)
    assert torch.allclose(dist.mean().double(), exact, atol=1e-5)
    mode = dist.mode()
    for j in range(s):  # greedy: each channel the argmax given the modes before it
        assert torch.equal(mode[:, j], dist.variable_logits(mode, j).argmax(-1))


# ---------------------------------------------------------------------------- 6. registry and arguments
def test_output_head_by_name_and_bad_arguments():
    h = output_head(256, num_mixture_components=5, group_size=3, name="logistic_mixture")
    assert isinstance(h, DiscretizedLogisticMixtureHead) and h.discrete
    assert get_head("logistic_mixture") is DiscretizedLogisticMixtureHead
    assert h.num_params == 50 and h.options == {"num_mixture_components": 5}  # 10 M for RGB, as PixelCNN++
    assert output_head(256, num_mixture_components=4, group_size=1, name="logistic_mixture").num_params == 12
    assert output_head(7, num_mixture_components=2, group_size=4, name="logistic_mixture").num_params == 2 * 15
    assert DiscretizedLogisticMixtureHead(256, 3).num_mixture_components == 10
    assert isinstance(h(torch.zeros(2, 5, 50)), DiscretizedLogisticMixture)
    assert h(torch.zeros(2, 5, 50)).log_prob(torch.zeros(2, 5, 3, dtype=torch.long)).shape == (2, 5)
    assert output_head(None, 4, name="mog").num_params == 12  # the other mixture head still gets M
    with pytest.raises(InputError, match="num_values must be an integer >= 2"):
        output_head(1, num_mixture_components=5, name="logistic_mixture")
    with pytest.raises(InputError, match="num_values must be an integer >= 2"):
        output_head(None, num_mixture_components=5, name="logistic_mixture")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="num_mixture_components"):
            output_head(256, num_mixture_components=bad, name="logistic_mixture")
    with pytest.raises(InputError, match="group_size"):
        output_head(256, num_mixture_components=2, group_size=0, name="logistic_mixture")
    with pytest.raises(InputError, match="expects 50 parameters"):
        h(torch.zeros(2, 49))
    with pytest.raises(InputError, match=r"shape \(\*batch, 3\)"):
        h(torch.zeros(2, 50)).log_prob(torch.zeros(2, 2, dtype=torch.long))
