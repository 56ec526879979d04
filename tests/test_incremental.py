"""Incremental steps and the masked-weight cache of the coding path (issue 21): MADE's and the
causal-conv ARM's steps equal their full passes in the configurations the shared registry tests do
not build (direct connections, several hidden layers, tanh, dilations, kernel sizes 1 and 2), and a
MaskedLinear keeps gradients exact and forgets its cached product when the weight or mask changes."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.checks import check_autoregressive, check_step_matches_forward
from chainrule.nn import MaskedLinear


@pytest.mark.parametrize("kw", [
    {"hidden_sizes": [9], "direct_connections": True},
    {"hidden_sizes": [8, 7, 6], "activation": "tanh"},
    {"hidden_sizes": [10, 10], "direct_connections": True, "num_masks": 3, "order_agnostic": True, "seed": 2},
])
def test_made_step_equals_full_pass(kw):
    torch.manual_seed(0)
    model = chainrule.create_model("made", (7,), 3, **kw)
    check_step_matches_forward(model)
    check_step_matches_forward(model, order=[6, 0, 5, 1, 4, 2, 3])
    grouped = chainrule.create_model("made", (3, 2, 2), 4, group_shape="pixel", num_classes=2, **kw)
    check_step_matches_forward(grouped)


@pytest.mark.parametrize("kw", [
    {"kernel_size": 2, "dilations": [1, 2, 4], "num_layers": 3},
    {"kernel_size": 1, "num_layers": 2},
    {"kernel_size": 3, "dilations": [2, 3], "num_layers": 2, "input_encoding": "onehot"},
])
def test_causalconv_step_equals_full_pass(kw):
    torch.manual_seed(0)
    model = chainrule.create_model("causalconv", (11,), 3, channels=6, **kw)
    check_autoregressive(model)
    check_step_matches_forward(model)
    check_step_matches_forward(model, order="random:1")
    ctx = chainrule.create_model("causalconv", (2, 3), 2, channels=5, num_classes=3, **kw)
    check_step_matches_forward(ctx)


def test_masked_linear_caches_the_product_only_outside_autograd():
    torch.manual_seed(0)
    layer = MaskedLinear(5, 4)
    mask = (torch.rand(4, 5) > 0.5).float()
    x = torch.randn(3, 5)
    # with gradients: masked weights get exactly zero gradient, the others the plain one
    layer(x, mask).sum().backward()
    assert torch.equal(layer.weight.grad[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.allclose(layer.weight.grad, mask * x.sum(0).expand(4, 5))
    # without: one product per (weight version, mask), reused, and dropped when either changes
    with torch.no_grad():
        w1 = layer.masked_weight(mask)
        assert layer.masked_weight(mask) is w1 and torch.equal(w1, mask * layer.weight)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    opt.step()  # an in-place update of the weight
    with torch.inference_mode():
        w2 = layer.masked_weight(mask)
        assert w2 is not w1 and torch.equal(w2, mask * layer.weight)
        assert torch.equal(layer(x, mask), torch.nn.functional.linear(x, mask * layer.weight, layer.bias))
    mask[0, 0] = 1 - mask[0, 0]  # an in-place change of the mask
    other = (torch.rand(4, 5) > 0.5).float()
    with torch.no_grad():
        assert torch.equal(layer.masked_weight(mask), mask * layer.weight)
        assert torch.equal(layer.masked_weight(other), other * layer.weight)
        layer.load_state_dict({"weight": torch.randn(4, 5), "bias": torch.zeros(4)})
        assert torch.equal(layer.masked_weight(mask), mask * layer.weight)
    # a product cached under inference mode still serves a training step's forward correctly
    layer.zero_grad()
    layer(x, mask).sum().backward()
    assert torch.allclose(layer.weight.grad, mask * x.sum(0).expand(4, 5))


def test_made_trains_after_coding():
    """Coding caches masked weights; a training step afterwards still moves only unmasked weights
    and the cache follows the update."""
    torch.manual_seed(0)
    model = chainrule.create_model("made", (6,), 2, hidden_sizes=[8])
    x = torch.randint(2, (5, 6))
    with torch.inference_mode():
        before = model.log_prob(x)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loss = -model.log_prob(x).mean()
    loss.backward()
    opt.step()
    masks = model.masks(model.order)
    for layer, m in zip([*model.hidden, model.out], masks):
        assert torch.equal(layer.weight.grad[m == 0], torch.zeros(int((m == 0).sum())))
    with torch.inference_mode():
        after = model.log_prob(x)
    with torch.no_grad():
        fresh = chainrule.create_model("made", (6,), 2, hidden_sizes=[8])
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(after, fresh.log_prob(x))
    assert not torch.equal(before, after)
    check_step_matches_forward(model)
