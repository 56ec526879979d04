"""docs/adding_a_model.md is run as written: its model registers, passes the contract's checks, and a
model that accepts a context but ignores it is caught by the registry suite's context check."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import chainrule
from chainrule.checks import check_autoregressive, check_context, check_step_matches_forward, normalization_total
from chainrule.models import registry

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding_a_model.md"


def page_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made inside a test vanish after it (the suite's model list stays as shipped)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


@pytest.fixture
def page_model(scratch_registry):
    blocks = page_blocks()
    assert len(blocks) == 2, "the page has a model block and a checks block"
    namespace: dict = {}
    exec(compile(blocks[0], str(PAGE), "exec"), namespace)
    assert "prefix_mean" in scratch_registry
    return namespace, blocks


def test_the_page_runs_as_written(page_model, capsys):
    namespace, blocks = page_model
    exec(compile(blocks[1], str(PAGE), "exec"), {**namespace, "torch": torch})
    assert "tensor(" in capsys.readouterr().out


@pytest.mark.parametrize("shape,num_values,extra", [
    ((5,), 2, {}), ((3, 1, 2), 3, {"group_shape": "pixel"}), ((4,), None, {}), ((4,), 2, {"context_shape": (3,)}),
])
def test_the_page_model_passes_the_contract(page_model, tmp_path, shape, num_values, extra):
    torch.manual_seed(0)
    model = chainrule.create_model("prefix_mean", shape, num_values, hidden_size=6, **extra)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    model.eval()
    context = torch.randn(3) if "context_shape" in extra else None
    for order in ("raster", "reversed", "random:4"):
        assert check_autoregressive(model, order=order) == model.num_groups
        check_step_matches_forward(model, order=order)
        if num_values is not None:
            assert abs(normalization_total(model, context, order=order) - 1) < 1e-5
    if model.conditional:
        check_context(model)
    x = model.sample(5, context, generator=torch.Generator().manual_seed(1))
    model.save(tmp_path / "ck")
    assert torch.equal(chainrule.load(tmp_path / "ck").log_prob(x, context), model.log_prob(x, context))


def test_a_model_that_ignores_its_context_fails_the_check(page_model):
    namespace, _ = page_model

    class Deaf(namespace["PrefixMean"]):
        """Claims class labels, never reads them."""
        name = "deaf"

        def forward_embedded(self, e, order, context):
            return super().forward_embedded(e, order, torch.zeros_like(context))

    model = Deaf((4,), 2, hidden_size=6, num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    assert check_autoregressive(model) == 4  # every other property holds ...
    assert abs(normalization_total(model, 1) - 1) < 1e-5
    with pytest.raises(AssertionError, match="ignores it"):  # ... but the context check catches it
        check_context(model)


def test_context_is_opt_in(scratch_registry):
    from chainrule.errors import InputError
    from chainrule.models.base import AutoregressiveModel

    class NoContext(AutoregressiveModel):
        name = "no_context"

        def forward_embedded(self, e, order, context):  # pragma: no cover - never built
            raise NotImplementedError

    with pytest.raises(InputError, match="takes no context"):
        NoContext((3,), 2, num_classes=2)


def test_models_and_ensembles_satisfy_the_contract_type():
    """Generic code is typed with chainrule.contract.ARModel; every model and an ensemble satisfy it."""
    from chainrule.contract import ARModel

    nade = chainrule.create_model("nade", (4,), 2, hidden_size=4)
    ensemble = chainrule.create_model("nade", (4,), 2, hidden_size=4, num_orders=3)
    for model in (nade, ensemble):
        assert isinstance(model, ARModel)
        assert model.base_model.num_members == 1 and model.float_dtype == torch.float32
    assert ensemble.num_members == 3 and ensemble.base_model is not ensemble
    calls = [ensemble.member_call(k) for k in range(3)]
    assert all(sorted(c) == ["order"] for c in calls) and not torch.equal(calls[0]["order"], calls[1]["order"])
    assert torch.equal(nade.member_call(0)["order"], nade.order)


def test_the_page_model_passes_the_registry_declarations(page_model):
    """The page's model declares its hyperparameters (checked when built) and its tiny ones, as the
    registry suite requires of every model; a model that declares no tiny hyperparameters fails it."""
    from test_registry import test_config_declares_exactly_the_model_arguments, test_every_model_declares_tiny_hyperparameters

    from chainrule.errors import InputError

    test_every_model_declares_tiny_hyperparameters("prefix_mean")
    test_config_declares_exactly_the_model_arguments("prefix_mean")
    with pytest.raises(InputError, match="hidden_size must be a positive integer, got 0"):
        chainrule.create_model("prefix_mean", (4,), 2, hidden_size=0)

    @registry.register
    class Untiny(page_model[0]["PrefixMean"]):
        name = "untiny"
        tiny_hyperparameters = None

    with pytest.raises(AssertionError, match="'untiny' declares no tiny_hyperparameters"):
        test_every_model_declares_tiny_hyperparameters("untiny")


def test_a_config_field_without_a_constraint_is_refused():
    import dataclasses

    from chainrule.models.config import ModelConfig

    @dataclasses.dataclass(frozen=True)
    class Loose(ModelConfig):
        width: int = 3

    with pytest.raises(TypeError, match="Loose.width declares no constraint"):
        Loose()
