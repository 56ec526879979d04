"""`chainrule models NAME`: every hyperparameter of every model is listed with its default and a
description taken from the model's docstring (so an undocumented hyperparameter fails here)."""

from __future__ import annotations

import inspect

import pytest

import chainrule
from chainrule.cli.main import main
from chainrule.models.registry import _docstring_args, accepted_hyperparameters, hyperparameter_help


@pytest.mark.parametrize("name", chainrule.list_models())
def test_every_hyperparameter_is_documented(name):
    rows = hyperparameter_help(name)
    assert [r[0] for r in rows] == accepted_hyperparameters(name)
    undocumented = [hp for hp, _, text in rows if not text]
    assert not undocumented, f"{name}: hyperparameters without a description in its docstring: {undocumented}"


def test_docstring_args_parser():
    doc = """Title.

    Args:
        alpha: the first,
            continued here.
        beta, gamma: both of them.
        common options (order, head, ...): see the base class.

    Returns: nothing.
    """
    assert _docstring_args(doc) == {"alpha": "the first, continued here.", "beta": "both of them.",
                                    "gamma": "both of them."}


def test_cli_models_name(capsys):
    assert main(["models", "pixelcnn"]) == 0
    out = capsys.readouterr().out
    assert "raster order only" in out and "cached sampling step: yes" in out
    for hp, default, _ in hyperparameter_help("pixelcnn"):
        assert hp in out
    assert "channels                 default 64" in out
    assert main(["models", "nosuch"]) == 2
    assert "registered models" in capsys.readouterr().err
    assert inspect.Parameter.empty not in [d for _, d, _ in hyperparameter_help("made")]
