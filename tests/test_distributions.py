"""Output distributions against torch.distributions and their own definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as td

import chainrule

from chainrule.distributions import Bernoulli, Categorical, Gaussian, MixtureOfGaussians, output_head
from chainrule.errors import InputError


def test_bernoulli_matches_torch_and_is_exact_at_extremes():
    a = torch.tensor([-200.0, -3.0, 0.0, 2.5, 200.0])
    for v in (0, 1):
        x = torch.full_like(a, v)
        ours = Bernoulli(a.unsqueeze(-1)).log_prob(x)
        ref = td.Bernoulli(logits=a).log_prob(x)
        assert torch.allclose(ours, ref, atol=1e-6)
        assert torch.isfinite(ours).all()  # no log(0) even at logit +-200
    tbl = Bernoulli(a.unsqueeze(-1)).logits()
    assert torch.allclose(tbl.exp().sum(-1), torch.ones(5))


def test_categorical_matches_torch():
    logits = torch.randn(4, 3, 7)
    x = torch.randint(7, (4, 3))
    assert torch.allclose(Categorical(logits).log_prob(x), td.Categorical(logits=logits).log_prob(x), atol=1e-6)
    assert torch.allclose(Categorical(logits).probs().sum(-1), torch.ones(4, 3))


def test_gaussian_and_mixture_match_torch():
    p = torch.randn(5, 2)
    x = torch.randn(5)
    ref = td.Normal(p[:, 0], p[:, 1].exp()).log_prob(x)
    assert torch.allclose(Gaussian(p).log_prob(x), ref, atol=1e-5)
    m = 3
    q = torch.randn(5, 3 * m)
    mix = td.MixtureSameFamily(td.Categorical(logits=q[:, :m]), td.Normal(q[:, m:2 * m], q[:, 2 * m:].exp()))
    assert torch.allclose(MixtureOfGaussians(q).log_prob(x), mix.log_prob(x), atol=1e-5)


def test_sampling_moments():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[1.5, math.log(0.5)]]).expand(200_000, 2)
    s = Gaussian(p).sample(g)
    assert abs(s.mean() - 1.5) < 0.01 and abs(s.std() - 0.5) < 0.01
    q = torch.tensor([[0.0, 0.0, -4.0, 4.0, math.log(0.1), math.log(0.1)]]).expand(200_000, 6)
    s = MixtureOfGaussians(q).sample(g)
    assert abs((s > 0).float().mean() - 0.5) < 0.01
    c = Categorical(torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(100_000, 3)).sample(g)
    assert torch.allclose(torch.bincount(c, minlength=3).float() / 1e5, torch.tensor([0.1, 0.2, 0.7]), atol=0.01)


def test_cdf_and_quantized_frequencies():
    logits = torch.tensor([[0.0, -30.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    d = Categorical(logits)
    cdf = d.cdf()
    assert cdf.shape == (2, 5) and torch.all(cdf[:, 0] == 0) and torch.allclose(cdf[:, -1], torch.ones(2, dtype=cdf.dtype))
    assert torch.all(cdf[:, 1:] >= cdf[:, :-1])
    f = d.quantized_frequencies(precision=12)
    assert f.dtype == torch.int64 and torch.all(f >= 1)  # even the ~e-30 value can be coded
    assert torch.all(f.sum(-1) == 4096)
    assert torch.equal(f[1], torch.full((4,), 1024))
    with pytest.raises(InputError, match="precision"):
        d.quantized_frequencies(precision=2)


def test_mode():
    assert Categorical(torch.tensor([[0.0, 3.0, 1.0]])).mode().item() == 1
    assert Bernoulli(torch.tensor([[-0.5]])).mode().item() == 0
    assert MixtureOfGaussians(torch.tensor([[0.0, 2.0, -1.0, 3.0, 0.0, 0.0]])).mode().item() == 3.0


def test_output_head_choice_and_errors():
    assert output_head(2).name == "bernoulli" and output_head(2).num_params == 1
    assert output_head(17).name == "categorical" and output_head(17).num_params == 17
    assert output_head(None).name == "gaussian"
    assert output_head(None, 4).num_params == 12
    assert output_head(17, group_size=3).num_params == 51  # a group of 3 variables: 3 x 17 logits
    assert output_head(5, name="categorical").name == "categorical"
    with pytest.raises(InputError, match="binary"):
        output_head(5, name="bernoulli")
    with pytest.raises(chainrule.UnknownNameError, match="registered heads"):
        output_head(5, name="nope")
    with pytest.raises(InputError):
        output_head(1)
    with pytest.raises(InputError, match="parameters"):
        output_head(3)(torch.zeros(2, 4))


def test_half_precision_parameters_are_upcast():
    a = torch.tensor([[30.0]], dtype=torch.float16)
    lp = Bernoulli(a).log_prob(torch.tensor([0]))
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()


def test_means():
    assert torch.allclose(Categorical(torch.log(torch.tensor([[0.2, 0.3, 0.5]]))).mean(), torch.tensor([1.3]))
    assert torch.allclose(Bernoulli(torch.tensor([[0.0]])).mean(), torch.tensor([0.5]))
    q = torch.tensor([[0.0, math.log(3.0), -2.0, 2.0, 0.0, 0.0]])  # weights 1/4, 3/4
    assert torch.allclose(MixtureOfGaussians(q).mean(), torch.tensor([1.0]))
