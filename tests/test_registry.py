"""The shared suite every registered model passes, on tiny configurations.

A model added with ``@register`` is picked up here automatically: autoregressive property by
gradients (every ordering, every member of an ensemble, orders given at call time), normalization
over a tiny space (also per class of a class-conditional model, and with groups of variables
predicted jointly), samples in the support and distributed as ``exp(log_prob)`` says, cached step
== full pass, save -> load identical, batched == one at a time, clear errors on bad input.
"""

from __future__ import annotations

import inspect
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
    check_context,
    check_step_matches_forward,
    normalization_total,
)
from chainrule.errors import InputError
from chainrule.models.registry import get_model_class

MODELS = chainrule.list_models()
DISCRETE = [n for n in MODELS if get_model_class(n).supports_discrete]
REAL = [n for n in MODELS if get_model_class(n).supports_real]

# Hyperparameters that keep each model tiny: each model declares its own (``tiny_hyperparameters``,
# next to the model; ``test_every_model_declares_tiny_hyperparameters`` fails for one that does not).
TINY: dict[str, dict] = {n: dict(get_model_class(n).tiny_hyperparameters or {}) for n in MODELS}


def tiny(name: str) -> dict:
    """The model's tiny hyperparameters (also of a model registered after this module was imported)."""
    return dict(get_model_class(name).tiny_hyperparameters or {})


# (event shape, num_values): binary vector, categorical vector, binary image, a 3-channel image
# (pixel-major order: R -> G -> B inside each pixel), real vector / image.
SPACES = [((6,), 2), ((3,), 4), ((1, 2, 3), 2), ((3, 1, 2), 3), ((6,), None), ((1, 2, 3), None)]
ORDERS = ["raster", "reversed", "random:3", "snake", "planar", [2, 0, 1, 5, 3, 4]]
# Spaces whose conditionals are groups of variables predicted jointly: the channels of a pixel.
GROUPED = [((3, 1, 2), 3, "pixel"), ((2, 2, 2), 2, "pixel"), ((4,), 3, (2,)), ((2, 1, 2), None, "pixel")]


def event(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The suite's spaces for a model: image-only models read a vector (D,) as a (1, 1, D) image."""
    if get_model_class(name).image_only and len(shape) == 1:
        return (1, 1, shape[0])
    return shape


def make(name: str, shape: tuple[int, ...], num_values: int | None, seed: int = 0, **kw) -> chainrule.AutoregressiveModel:
    torch.manual_seed(seed)
    shape = event(name, shape)
    model = chainrule.create_model(name, shape, num_values, **{**tiny(name), **kw})
    # Random, non-trivial weights (some models start at zero): every path must carry signal.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def any_order(name: str) -> bool:
    return get_model_class(name).any_order


def orders_for(name: str, shape: tuple[int, ...]) -> list:
    if get_model_class(name).fixed_order is not None:
        return [get_model_class(name).fixed_order]
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
    assert check_autoregressive(model) == model.dim * model.num_members


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
    assert samples.shape == (n, *model.shape) and samples.dtype == torch.long
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
    order = model.order
    prefix = torch.tensor([2, 0, 1])
    y = model.sample(4, generator=torch.Generator().manual_seed(0), prompt=prefix)
    assert torch.equal(y.reshape(4, -1)[:, order[:3]], prefix.expand(4, 3))


@pytest.mark.parametrize("name,num_values", [(n, 3) for n in DISCRETE] + [(n, None) for n in REAL])
def test_save_load_roundtrip(name, num_values, tmp_path):
    model = make(name, (1, 2, 3), num_values, **({} if get_model_class(name).fixed_order else {"order": "random:5"}))
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
    x = torch.randint(3, (6, *model.shape))
    batched = model.log_prob(x)
    single = torch.stack([model.log_prob(x[i:i + 1])[0] for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert model.log_prob(x.reshape(2, 3, *model.shape)).shape == (2, 3)
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
    with pytest.raises(InputError, match="permutation"):
        chainrule.create_model(name, event(name, (3,)), 2, order=[0, 0, 1])
    with pytest.raises(InputError, match="ordering"):
        chainrule.create_model(name, event(name, (3,)), 2, order="zigzag")
    if get_model_class(name).fixed_order is not None:
        with pytest.raises(InputError, match="order only"):
            chainrule.create_model(name, event(name, (3,)), 2, order="reversed", **TINY.get(name, {}))
    if get_model_class(name).image_only:
        with pytest.raises(InputError, match=r"\(C, H, W\)"):
            chainrule.create_model(name, (6,), 2)
    x = torch.randint(3, (2, 1, 2, 3))
    with pytest.raises(InputError, match="unconditional"):
        model.log_prob(x, context=torch.tensor([0, 1]))
    if any_order(name):
        with pytest.raises(InputError, match="permutation"):
            model.log_prob(x, order=[0, 1, 2, 3, 4, 4])
    else:
        with pytest.raises(InputError, match="order it was built with"):
            model.log_prob(x, order="reversed")


def test_create_model_errors():
    with pytest.raises(chainrule.UnknownNameError, match="registered models"):
        chainrule.create_model("nope", (3,), 2)
    with pytest.raises(InputError, match="no hyperparameter"):
        chainrule.create_model("made", (3,), 2, hidden=[3])
    with pytest.raises(InputError, match="num_values"):
        chainrule.create_model("made", (3,), 1)
    with pytest.raises(InputError, match="shape"):
        chainrule.create_model("made", (0, 3), 2)


# ---------------------------------------------------------------- declared hyperparameters
def own_arguments(cls) -> dict[str, inspect.Parameter]:
    """A model's own constructor arguments: beyond shape, num_values and the options every model shares."""
    from chainrule.models.base import COMMON_OPTIONS

    return {p: v for p, v in inspect.signature(cls.__init__).parameters.items()
            if p not in ("self", "shape", "num_values", *COMMON_OPTIONS)
            and v.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


@pytest.mark.parametrize("name", MODELS)
def test_every_model_declares_tiny_hyperparameters(name):
    cls = get_model_class(name)
    assert cls.tiny_hyperparameters is not None, (
        f"model {name!r} declares no tiny_hyperparameters: give its class the hyperparameters that keep it tiny "
        "for this suite (an empty dict if its defaults already are)")
    assert set(cls.tiny_hyperparameters) <= set(own_arguments(cls)), f"{name}: tiny_hyperparameters names unknown arguments"


@pytest.mark.parametrize("name", MODELS)
def test_config_declares_exactly_the_model_arguments(name):
    """The model's dataclass declares each of its own arguments once, with a constraint, and its
    defaults pass it."""
    import dataclasses

    cls = get_model_class(name)
    args = own_arguments(cls)
    fields = [f.name for f in dataclasses.fields(cls.config_class)]
    assert sorted(fields) == sorted(args), f"{name}: {cls.config_class.__name__} declares {fields}, __init__ takes {list(args)}"
    assert all(f.metadata.get("check") for f in dataclasses.fields(cls.config_class))
    defaults = cls.config_class.from_arguments({p: v.default for p, v in args.items()})  # validated
    k = 2 if cls.supports_discrete else None
    model = make(name, (1, 2, 3), k)
    assert type(model.hparams) is cls.config_class
    assert {**defaults.as_dict(), **{k: (tuple(v) if isinstance(v, list) else v) for k, v in tiny(name).items()}} \
        == model.hparams.as_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.hparams.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", MODELS)
def test_a_bad_hyperparameter_is_named_in_the_error(name):
    cls = get_model_class(name)
    for field in cls.config_class.describe():
        with pytest.raises(InputError, match=rf"\b{field} must be"):
            chainrule.create_model(name, event(name, (1, 2, 3)), 2 if cls.supports_discrete else None,
                                   **{**tiny(name), field: "?"})


RENAMED = [(n, old, new) for n in MODELS for old, new in get_model_class(n).renamed_hyperparameters.items()]


@pytest.mark.parametrize("name,old,new", RENAMED)
def test_former_hyperparameter_names_warn_then_load_silently(name, old, new, tmp_path):
    import json
    import warnings

    tiny = {k: v for k, v in TINY[name].items() if k != new}
    value = TINY[name].get(new, 1)
    with pytest.warns(DeprecationWarning, match=rf"{old}=.*use {new}="):
        model = chainrule.create_model(name, event(name, (1, 2, 3)), 2, **tiny, **{old: value})
    with pytest.warns(DeprecationWarning, match=rf"{old}=.*use {new}="):  # the class itself too
        get_model_class(name)(event(name, (1, 2, 3)), 2, **tiny, **{old: value})
    assert model.hyperparameters[new] == value and old not in model.config["hyperparameters"]
    with pytest.raises(InputError, match="not both"):
        chainrule.create_model(name, event(name, (1, 2, 3)), 2, **{old: value, new: value})
    # a checkpoint written before the rename: its config.json holds the old name; it loads, silently
    model.save(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["hyperparameters"][old] = cfg["hyperparameters"].pop(new)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = chainrule.load(tmp_path / "ck")
    assert loaded.hparams == model.hparams
    x = some_data(model, 4)
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))


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
    assert isinstance(model, chainrule.Ensemble) and model.num_members == 4
    x = all_configurations(model) if num_values else some_data(model, 50)
    per = [model.log_prob_per_variable(x, member=c).sum(-1) for c in range(4)]
    expected = torch.logsumexp(torch.stack(per), 0) - math.log(4)
    assert torch.allclose(model.log_prob(x), expected, atol=1e-5)
    assert torch.allclose(model.log_prob(x, member=2), per[2], atol=1e-6)
    assert len({tuple(model.orders[c].tolist()) for c in range(4)}) > 1  # orderings differ
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.log_prob(x, member=3)
    model.sample(5, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing switched inside
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

    def forward_embedded(self, e, order, context):
        mask = torch.tril(torch.ones(self.dim, self.dim))  # includes the diagonal: a leak
        return (e[..., 0] @ (self.w * mask).T).unsqueeze(-1)


def test_checks_detect_a_leak():
    model = _Leaky((4,), 2)
    with pytest.raises(AssertionError, match="depends on groups"):
        check_autoregressive(model)
    assert abs(normalization_total(model) - 1) > 1e-3  # a leaky model is not normalized


def test_step_check_detects_a_wrong_cache():
    model = make("fvsbn", (4,), 2)

    def bad_step(state, i, x_prev):  # noqa: ANN001
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


# ---------------------------------------------------------------- groups of variables
GROUP_CASES = [(n, s, k, g) for n in MODELS for s, k, g in GROUPED
               if supports(n, k) and get_model_class(n).supports_groups
               and (g == "pixel" or not get_model_class(n).image_only)]  # image models: sub-pixels or pixels


@pytest.mark.parametrize("name,shape,num_values,group_shape", GROUP_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_groups_are_one_conditional_each(name, shape, num_values, group_shape):
    """With a group shape, each group is one conditional: no group may see itself or later groups,
    the model normalizes, the step equals the full pass, and sampling and save/load work."""
    model = make(name, shape, num_values, group_shape=group_shape)
    g = model.num_groups
    assert g * model.group_size == model.dim and model.group_size > 1
    assert check_autoregressive(model) == g
    check_step_matches_forward(model)
    x = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, *shape)
    per_var = model.log_prob_per_variable(x)
    assert per_var.shape == (4, model.dim)
    assert torch.allclose(per_var.sum(-1), model.log_prob(x), atol=1e-5)
    if num_values is not None:
        assert abs(normalization_total(model) - 1.0) < 1e-5


def test_bad_group_shapes_are_clear_errors():
    with pytest.raises(InputError, match="does not divide"):
        chainrule.create_model("made", (3, 4, 4), 2, group_shape=(2, 1, 1))
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        chainrule.create_model("made", (12,), 2, group_shape="pixel")
    with pytest.raises(InputError, match="one variable per conditional"):
        chainrule.create_model("histogram", (2, 1, 2), 2, group_shape="pixel")


def test_default_image_order_is_pixel_major():
    """On (C, H, W) every model reads pixels in raster order, R -> G -> B inside each pixel."""
    model = chainrule.create_model("transformer", (3, 2, 2), 4, num_layers=1, num_heads=1, embed_dim=4)
    # flat index of (c, h, w) is c*4 + h*2 + w: pixel 0's R, G, B, then pixel 1's ...
    assert model.order.tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert chainrule.create_model("transformer", (3, 2, 2), 4, order="planar", num_layers=1, num_heads=1,
                                  embed_dim=4).order.tolist() == list(range(12))


# ---------------------------------------------------------------- context (class-conditional models)
CONTEXT_MODELS = [n for n in MODELS if get_model_class(n).supports_context]


@pytest.mark.parametrize("name", CONTEXT_MODELS)
@pytest.mark.parametrize("shape,num_values", [((4,), 2), ((3, 1, 2), 2), ((3,), None)])
def test_class_conditional_models(name, shape, num_values, tmp_path):
    """p(x | y): autoregressive for every label, normalized for every label, dependent on the label,
    step == full pass, samples follow the label, save/load keeps it."""
    if not supports(name, num_values):
        pytest.skip("value type not supported")
    model = make(name, shape, num_values, num_classes=3)
    assert model.conditional and check_autoregressive(model) == model.num_groups
    check_step_matches_forward(model)
    x = some_data(model, 6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    lp = model.log_prob(x, y)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    assert not torch.allclose(model.log_prob(x, 0), model.log_prob(x, 1))  # the label matters
    check_context(model)
    if num_values is not None:
        for label in range(3):
            assert abs(normalization_total(model, label) - 1.0) < 1e-5
    s = model.sample(6, y, generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, *model.shape)
    model.save(tmp_path / "ck")
    loaded = chainrule.load(tmp_path / "ck")
    assert torch.equal(loaded.log_prob(x, y), lp)
    with pytest.raises(InputError, match="conditional"):
        model.log_prob(x)
    with pytest.raises(InputError, match=r"0\.\.2"):
        model.log_prob(x, torch.full((6,), 3))
    with pytest.raises(InputError, match="6 class labels"):
        model.log_prob(x, torch.tensor([0, 1]))
    with pytest.raises(InputError, match="integer class labels"):
        model.log_prob(x, torch.full((6,), 0.5))


@pytest.mark.parametrize("name", [n for n in CONTEXT_MODELS if get_model_class(n).supports_tensor_context])
def test_tensor_context(name):
    model = make(name, (4,), 2 if get_model_class(name).supports_discrete else None, context_shape=(2,))
    c = torch.randn(5, 2)
    assert check_autoregressive(model) == 4
    check_step_matches_forward(model)
    check_context(model)  # the tensor matters
    if model.num_values is not None:
        assert abs(normalization_total(model, c[0]) - 1.0) < 1e-5
    assert model.log_prob(some_data(model, 5), c).shape == (5,)
    with pytest.raises(InputError, match="shape"):
        model.log_prob(some_data(model, 5), torch.randn(5, 3))
    with pytest.raises(InputError, match="NaN"):
        model.log_prob(some_data(model, 1), torch.tensor([[float("nan"), 0.0]]))


# ---------------------------------------------------------------- orders at call time
ANY_ORDER = [n for n in MODELS if any_order(n)]


@pytest.mark.parametrize("name", ANY_ORDER)
@pytest.mark.parametrize("shape,num_values", [((5,), 2), ((3, 1, 2), 2), ((4,), None)])
def test_orders_given_at_call_time(name, shape, num_values):
    """A model that takes any order is a normalized, autoregressive model in each order given at
    call time, its cache follows the order, and sampling with observed values conditions exactly."""
    if not supports(name, num_values):
        pytest.skip("value type not supported")
    model = make(name, shape, num_values)
    d = model.num_groups
    for order in ("reversed", "random:7", list(torch.randperm(d, generator=torch.Generator().manual_seed(1)).tolist())):
        assert check_autoregressive(model, order=order) == d
        check_step_matches_forward(model, order=order)
        if num_values is not None:
            assert abs(normalization_total(model, order=order) - 1.0) < 1e-5
    x = some_data(model, 3)
    assert not torch.allclose(model.log_prob(x), model.log_prob(x, order="reversed")) or name == "histogram"


@pytest.mark.parametrize("name", [n for n in ANY_ORDER if get_model_class(n).supports_discrete])
def test_observed_values_condition_exactly(name):
    """Observed variables anywhere (any-order models): they are kept, and the rest follows the
    conditional p(x_u | x_o) of the order with the observed variables first (chi-square)."""
    model = make(name, (4,), 2, seed=2)
    value = torch.tensor([1, 0, 1, 0])
    mask = torch.tensor([False, True, False, True])  # observe x1 = 0, x3 = 0
    n = 8000
    s = model.sample(n, observed=(value, mask), generator=torch.Generator().manual_seed(0))
    assert torch.equal(s[:, mask], value[mask].expand(n, 2))
    from chainrule.orderings import observed_first
    order = observed_first(mask, model.order)
    space = all_configurations(model)
    space = space[(space[:, mask] == value[mask]).all(-1)]  # the 4 completions
    joint = model.log_prob(space, order=order).detach().double().exp()
    probs = (joint / joint.sum()).numpy()
    index = {tuple(v.tolist()): i for i, v in enumerate(space)}
    counts = np.bincount([index[tuple(v.tolist())] for v in s], minlength=len(space))
    _, pvalue = stats.chisquare(counts, probs * n)
    assert pvalue > 1e-3, f"completions do not follow the conditional (chi-square p={pvalue:.2g})"


@pytest.mark.parametrize("name", [n for n in MODELS if not any_order(n) and get_model_class(n).supports_discrete])
def test_fixed_order_models_take_observed_prefixes_only(name):
    model = make(name, (4,), 2)
    value = torch.tensor([1, 0, 1, 0]).reshape(model.shape)
    s = model.sample(3, observed=(value, torch.tensor([True, True, False, False]).reshape(model.shape)),
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.reshape(3, 4)[:, :2], value.reshape(4)[:2].expand(3, 2))
    with pytest.raises(InputError, match="prefix"):
        model.sample(3, observed=(value, torch.tensor([False, True, False, False]).reshape(model.shape)))


@pytest.mark.parametrize("name", DISCRETE)
def test_sample_prefix_and_generate_make_the_same_draws(name):
    """One sampling loop: sample(prompt=p) and generate(p) agree draw for draw from one seed."""
    from chainrule.inference.sampling import generate
    if name == "histogram" or get_model_class(name).image_only:
        pytest.skip("generation is for sequence models")
    model = make(name, (8,), 5)
    prompt = torch.tensor([3, 1, 4])
    a = model.sample(4, prompt=prompt, generator=torch.Generator().manual_seed(7))
    b = generate(model, prompt, 5, num_samples=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- regressions found by outside checks
def test_binary_transformer_is_weight_tied():
    """K = 2: the single logit is the difference of the two tokens' scores against the embedding."""
    model = chainrule.create_model("transformer", (6,), 2, num_layers=1, num_heads=2, embed_dim=8)
    assert model.tied and model.out is None
    assert not any(n.startswith("out") for n, _ in model.named_parameters())
    x = torch.randint(2, (3, 6))
    params = model(x)
    h = model.ln_f(model._hidden(model.group_features(model.embed(x)), None)[-1])
    w = model.tok.weight
    assert torch.allclose(params[..., 0], h @ (w[1] - w[0]), atol=1e-6)
    assert abs(normalization_total(model) - 1) < 1e-5


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("components", [1, 3])
def test_real_heads_stay_finite_with_random_weights(name, components):
    """The log-scale is bounded: random weights give finite samples and finite log-likelihoods
    (before the bound, a causal-conv mixture model, D = 2, reversed order, gave 119 non-finite
    samples in 1,000)."""
    torch.manual_seed(0)
    model = chainrule.create_model(name, (2,), None, order="reversed", num_mixture_components=components,
                                   **TINY.get(name, {}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 3.0)  # large random weights push the log-scales far out
    x = model.sample(1000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    assert torch.isfinite(model.log_prob(x)).all()


# ---------------------------------------------------------------- features
FEATURE_MODELS = [n for n in MODELS if hasattr(get_model_class(n), "features")]


@pytest.mark.parametrize("shape", [(1, 2, 3), (3, 1, 2)])
@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_features_are_causal_hidden_states(name, shape):
    """features(x): finite, one row per example (and per group for per-group features), and the
    features that predict a group read only the groups before it in the order."""
    num_values = 3 if get_model_class(name).supports_discrete else None
    model = make(name, shape, num_values, num_classes=2)
    x = some_data(model, 4)
    y = torch.tensor([0, 1, 0, 1])
    f = model.features(x, y)
    assert f.shape[0] == 4 and f.dim() in (2, 3) and torch.isfinite(f).all()
    assert not torch.allclose(f, model.features(x, 1 - y))  # the context enters the features
    if f.dim() == 2:
        return  # one vector per example (MADE: hidden units shared by all conditionals)
    assert f.shape[1] == model.num_groups
    k = 3  # change the group at step k: the features of steps 0..k must not move
    o = model.order
    x2 = x.clone().reshape(4, -1)
    x2[:, o[k]] = (x2[:, o[k]] + 1) % 3 if num_values else x2[:, o[k]] + 1.0
    f2 = model.features(x2.reshape(x.shape), y)
    assert torch.allclose(f[:, o[:k + 1]], f2[:, o[:k + 1]], atol=1e-6)
    assert not torch.allclose(f[:, o[k + 1:]], f2[:, o[k + 1:]], atol=1e-6)


LAYERED_FEATURE_MODELS = [n for n in FEATURE_MODELS if "layer" in inspect.signature(get_model_class(n).features).parameters]


@pytest.mark.parametrize("name", LAYERED_FEATURE_MODELS)
def test_features_of_several_layers_come_from_one_pass(name):
    """features(x, layer=[...]) is the list of the single-layer features, in the order asked
    (repeats and negative layers included); a bad entry, or an empty list, is refused."""
    num_values = 3 if get_model_class(name).supports_discrete else None
    model = make(name, (1, 2, 3), num_values).eval()
    x = some_data(model, 4)
    with torch.no_grad():
        count = 0
        while True:
            try:
                model.features(x, layer=count)
            except InputError:
                break
            count += 1
        assert count >= 1
        wanted = [count - 1, 0, -1, 0]
        got = model.features(x, layer=wanted)
        assert isinstance(got, list) and len(got) == len(wanted)
        for layer, f in zip(wanted, got):
            torch.testing.assert_close(f, model.features(x, layer=layer))
        for bad in ([0, count], [True], [], ["0"]):
            with pytest.raises(InputError, match="layer"):
                model.features(x, layer=bad)


def test_models_without_hidden_states_have_no_features():
    """FVSBN (logistic regressions on the inputs) and the histogram (a table) have no hidden states."""
    assert not hasattr(get_model_class("fvsbn"), "features")
    assert not hasattr(get_model_class("histogram"), "features")
