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


def test_every_command_line_option_has_a_help_text():
    """Every option and argument of every command (and the ngram actions) says what it does in --help."""
    import argparse

    from chainrule.cli.main import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                if not (action.help or "").strip():
                    yield " ".join(path) + " " + (action.option_strings[0] if action.option_strings else action.dest)

    missing = list(walk(build_parser(), ["chainrule"]))
    assert not missing, f"options without a help text: {missing}"


def test_models_list_is_aligned_and_whole(capsys):
    """`chainrule models`: one row per model, the columns aligned on the longest name, and every
    description its docstring's whole first paragraph (no line cut mid-sentence)."""
    assert main(["models"]) == 0
    rows = capsys.readouterr().out.splitlines()
    names = chainrule.list_models()
    assert len(rows) == 1 + len(names)
    assert [row.split()[0] for row in rows[1:]] == names
    # the data column starts at the same place on every row
    assert len({row.find(row.split()[1], len(row.split()[0])) for row in rows[1:]}) == 1
    row_lstm = next(r for r in rows if r.startswith("row_lstm "))
    assert row_lstm.rstrip().endswith("receptive field.")
