"""The shared suite every registered model passes, on tiny configurations.

A model added with ``@register`` is picked up here automatically: autoregressive property by
gradients (every ordering it accepts, every component of an ensemble), normalization over a tiny
space, samples in the support and distributed as ``exp(log_prob)`` says, cached step == full
pass, save -> load identical, batched == one at a time, clear errors on bad input.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import chainrule
from chainrule.checks import (
    all_configurations,
    check_autoregressive,
    check_step_matches_forward,
    normalization_total,
)
from chainrule.errors import InputError
from chainrule.models.registry import get_model_class

MODELS = chainrule.list_models()
DISCRETE = [n for n in MODELS if get_model_class(n).supports_discrete]
REAL = [n for n in MODELS if get_model_class(n).supports_real]

# Hyperparameters that keep each model tiny; a model with small defaults needs no entry.
TINY: dict[str, dict] = {
    "causalconv": {"channels": 8, "kernel_size": 3, "num_layers": 3},
    "made": {"hidden_sizes": [16, 16]},
    "nade": {"hidden_size": 8},
    "mlp": {"memory": 2, "hidden_sizes": [8]},
    "rnn": {"hidden_size": 8, "num_layers": 2, "embedding_size": 4},
    "lstm": {"hidden_size": 8, "num_layers": 2, "embedding_size": 4},
    "gru": {"hidden_size": 8, "num_layers": 2, "embedding_size": 4},
    "wavenet": {"dilations": [1, 2, 1], "residual_channels": 4, "skip_channels": 6, "embedding_size": 4},
    "transformer": {"num_layers": 2, "num_heads": 2, "embed_dim": 8},
    "rnade": {"hidden_size": 8, "num_mixture_components": 2},
}

# (event shape, num_values): binary vector, categorical vector, binary image, real vector / image.
SPACES = [((6,), 2), ((3,), 4), ((1, 2, 3), 2), ((6,), None), ((1, 2, 3), None)]
ORDERS = ["raster", "reversed", "random:3", "snake", [2, 0, 1, 5, 3, 4]]


def make(name: str, shape: tuple[int, ...], num_values: int | None, seed: int = 0, **kw) -> chainrule.AutoregressiveModel:
    torch.manual_seed(seed)
    model = chainrule.create_model(name, shape, num_values, **{**TINY.get(name, {}), **kw})
    # Random, non-trivial weights (some models start at zero): every path must carry signal.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def accepts_order(name: str) -> bool:
    import inspect

    return "order" in inspect.signature(get_model_class(name).__init__).parameters


def orders_for(name: str, shape: tuple[int, ...]) -> list:
    if not accepts_order(name):
        return [None]
    d = math.prod(shape)
    return [o for o in ORDERS if not isinstance(o, list) or len(o) == d]


def kwargs_for(order) -> dict:
    return {} if order is None else {"order": order}


def supports(name: str, num_values: int | None) -> bool:
    cls = get_model_class(name)
    return cls.supports_real if num_values is None else cls.supports_discrete


def some_data(model: chainrule.AutoregressiveModel, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if model.num_values is None:
        return torch.randn(n, *model.shape, generator=g)
    return torch.randint(model.num_values, (n, *model.shape), generator=g)


CASES = [(n, s, k, o) for n in MODELS for s, k in SPACES for o in orders_for(n, s) if supports(n, k)]
DISCRETE_CASES = [c for c in CASES if c[2] is not None]


@pytest.mark.parametrize("name,shape,num_values,order", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_autoregressive_by_gradients(name, shape, num_values, order):
    model = make(name, shape, num_values, **kwargs_for(order))
    assert check_autoregressive(model) == model.dim * model.num_components


@pytest.mark.parametrize("name,shape,num_values,order", DISCRETE_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_normalization(name, shape, num_values, order):
    model = make(name, shape, num_values, **kwargs_for(order))
    assert abs(normalization_total(model) - 1.0) < 1e-5


@pytest.mark.parametrize("name,shape,num_values,order", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_cached_step_equals_full_pass(name, shape, num_values, order):
    check_step_matches_forward(make(name, shape, num_values, **kwargs_for(order)))


@pytest.mark.parametrize("name", DISCRETE)
@pytest.mark.parametrize("shape,num_values", [((4,), 2), ((2,), 5)])
def test_samples_follow_log_prob(name, shape, num_values):
    """Chi-square goodness of fit of 20,000 samples against exp(log_prob) on a tiny space."""
    model = make(name, shape, num_values, seed=1)
    n = 20_000
    samples = model.sample(n, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, *shape) and samples.dtype == torch.long
    assert samples.min() >= 0 and samples.max() < num_values
    space = all_configurations(model)
    probs = model.log_prob(space).double().exp().detach().numpy()
    index = {tuple(v.tolist()): i for i, v in enumerate(space.reshape(len(space), -1))}
    counts = np.bincount([index[tuple(v.tolist())] for v in samples.reshape(n, -1)], minlength=len(space))
    _, pvalue = stats.chisquare(counts, probs / probs.sum() * n)
    assert pvalue > 1e-3, f"samples do not follow exp(log_prob) (chi-square p={pvalue:.2g})"


@pytest.mark.parametrize("name", DISCRETE)
def test_sample_shapes_and_prefix(name):
    model = make(name, (1, 2, 3), 3)
    x = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 2, 3)
    order = model.current_order()
    prefix = torch.tensor([2, 0, 1])
    y = model.sample(4, generator=torch.Generator().manual_seed(0), prefix=prefix)
    assert torch.equal(y.reshape(4, -1)[:, order[:3]], prefix.expand(4, 3))


@pytest.mark.parametrize("name,num_values", [(n, 3) for n in DISCRETE] + [(n, None) for n in REAL])
def test_save_load_roundtrip(name, num_values, tmp_path):
    kw = {"order": "random:5"} if accepts_order(name) else {}
    model = make(name, (1, 2, 3), num_values, **kw)
    x = some_data(model, 7)
    model.save(tmp_path / "ck")
    loaded = chainrule.load(tmp_path / "ck")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))
    assert torch.equal(loaded.sample(3, generator=torch.Generator().manual_seed(1)),
                       model.sample(3, generator=torch.Generator().manual_seed(1)))
    # never pickle: the weights file is safetensors, the config plain JSON
    assert (tmp_path / "ck" / "model.safetensors").read_bytes()[8:9] == b"{"


@pytest.mark.parametrize("name", DISCRETE)
def test_batched_equals_one_at_a_time_and_batch_dims(name):
    model = make(name, (5,), 3)
    x = torch.randint(3, (6, 5))
    batched = model.log_prob(x)
    single = torch.stack([model.log_prob(x[i:i + 1])[0] for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert model.log_prob(x.reshape(2, 3, 5)).shape == (2, 3)
    assert model.log_prob(x[0]).shape == ()
    assert torch.allclose(model.log_prob(x.float()), batched)  # integral floats are accepted


@pytest.mark.parametrize("name", DISCRETE)
def test_bad_input_is_a_clear_error(name):
    model = make(name, (1, 2, 3), 3)
    with pytest.raises(InputError, match=r"shape"):
        model.log_prob(torch.zeros(4, 6, dtype=torch.long))
    with pytest.raises(InputError, match=r"0\.\.2"):
        model.log_prob(torch.full((2, 1, 2, 3), 3))
    with pytest.raises(InputError, match=r"0\.\.2"):
        model.log_prob(-torch.ones(2, 1, 2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="NaN"):
        model.log_prob(torch.full((2, 1, 2, 3), float("nan")))
    with pytest.raises(InputError, match="integer"):
        model.log_prob(torch.full((2, 1, 2, 3), 0.5))
    with pytest.raises(InputError, match="positive integer"):
        model.sample(0)
    if accepts_order(name):
        with pytest.raises(InputError, match="permutation"):
            chainrule.create_model(name, (3,), 2, order=[0, 0, 1])
        with pytest.raises(InputError, match="ordering"):
            chainrule.create_model(name, (3,), 2, order="zigzag")


def test_create_model_errors():
    with pytest.raises(chainrule.UnknownNameError, match="registered models"):
        chainrule.create_model("nope", (3,), 2)
    with pytest.raises(InputError, match="no hyperparameter"):
        chainrule.create_model("made", (3,), 2, hidden=[3])
    with pytest.raises(InputError, match="num_values"):
        chainrule.create_model("made", (3,), 1)
    with pytest.raises(InputError, match="shape"):
        chainrule.create_model("made", (0, 3), 2)


# ---------------------------------------------------------------- real-valued heads
@pytest.mark.parametrize("name", REAL)
def test_real_valued_samples_and_bad_input(name):
    model = make(name, (3,), None)
    x = model.sample(4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 3) and x.dtype == torch.float32 and torch.isfinite(x).all()
    # samples score higher under the model than points from far outside its mass
    assert model.log_prob(x).mean() > model.log_prob(x + 50.0).mean()
    with pytest.raises(InputError, match="NaN"):
        model.log_prob(torch.tensor([[0.0, float("inf"), 1.0]]))
    with pytest.raises(InputError, match="shape"):
        model.log_prob(torch.zeros(2, 4))
    if not get_model_class(name).supports_discrete:
        with pytest.raises(InputError, match="real-valued"):
            chainrule.create_model(name, (3,), 2)



@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("components", [1, 3])
def test_real_valued_normalizes_on_a_grid(name, components):
    """Integrate exp(log_prob) numerically over a 2-D grid: the density integrates to 1."""
    model = make(name, (2,), None, num_mixture_components=components)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)  # keep the density inside the grid
    grid = torch.linspace(-12, 12, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1).float()
    dens = model.log_prob(pts).double().exp().detach().reshape(801, 801)
    total = torch.trapezoid(torch.trapezoid(dens, grid), grid)
    assert abs(float(total) - 1) < 1e-3
    check_autoregressive(model)
    check_step_matches_forward(model)


# ---------------------------------------------------------------- ensembles
def ensemble_kwargs(name: str) -> dict | None:
    import inspect

    params = inspect.signature(get_model_class(name).__init__).parameters
    if "num_orders" in params:
        return {"num_orders": 4}
    if "num_masks" in params:
        return {"num_masks": 4, "order_agnostic": True}
    return None


ENSEMBLES = [n for n in MODELS if ensemble_kwargs(n) is not None]


@pytest.mark.parametrize("name", ENSEMBLES)
def test_ensembles_average_probabilities(name, tmp_path):
    num_values = 2 if get_model_class(name).supports_discrete else None
    model = make(name, (5,), num_values, **ensemble_kwargs(name))
    assert model.num_components == 4
    x = all_configurations(model) if num_values else some_data(model, 50)
    per = []
    for c in range(4):
        model.set_component(c)
        per.append(model.log_prob_per_variable(x).sum(-1))
    model.set_component(0)
    expected = torch.logsumexp(torch.stack(per), 0) - math.log(4)
    assert torch.allclose(model.log_prob(x), expected, atol=1e-5)
    assert torch.allclose(model.log_prob(x, component=2), per[2], atol=1e-6)
    assert len({tuple(model.orders[c].tolist()) for c in range(4)}) > 1  # orderings differ
    assert check_autoregressive(model) == 4 * 5
    check_step_matches_forward(model)
    if num_values:
        assert abs(normalization_total(model) - 1) < 1e-5
    model.save(tmp_path / "ck")
    assert torch.equal(chainrule.load(tmp_path / "ck").log_prob(x), model.log_prob(x))


# ---------------------------------------------------------------- the checks can fail
class _Leaky(chainrule.AutoregressiveModel):
    """A deliberately broken model: variable j sees variable j itself (not registered)."""

    name = "leaky"

    def __init__(self, shape, num_values):
        super().__init__(shape, num_values)
        self.w = torch.nn.Parameter(torch.randn(self.dim, self.dim))

    def forward_embedded(self, e):
        mask = torch.tril(torch.ones(self.dim, self.dim))  # includes the diagonal: a leak
        return (e[..., 0] @ (self.w * mask).T).unsqueeze(-1)


def test_checks_detect_a_leak():
    model = _Leaky((4,), 2)
    with pytest.raises(AssertionError, match="depends on variables"):
        check_autoregressive(model)
    assert abs(normalization_total(model) - 1) > 1e-3  # a leaky model is not normalized


def test_step_check_detects_a_wrong_cache():
    model = make("fvsbn", (4,), 2)

    def bad_step(state, i, x_prev):
        params, state = type(model).step(model, state, i, x_prev)
        return params + (0.1 if i == 2 else 0.0), state

    model.step = bad_step
    with pytest.raises(AssertionError, match="step 2"):
        check_step_matches_forward(model)


def test_all_configurations_enumerates_the_space():
    model = make("fvsbn", (3,), 3)
    space = all_configurations(model)
    assert space.shape == (27, 3)
    assert {tuple(r) for r in space.tolist()} == set(itertools.product(range(3), repeat=3))
