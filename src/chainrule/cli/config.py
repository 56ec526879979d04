"""Configuration files for ``chainrule train``: every option of ``train`` can come from a TOML file
(``--config run.toml``), the command line overrides it, and the resolved configuration is stored in
the run directory as ``RUN/config.toml`` (loadable again with ``--config``).

The file's keys are the long options' names without the dashes (``batch-size`` or ``batch_size``),
plus ``model`` (the positional argument) and a ``[hyperparameters]`` table (the ``-p NAME=VALUE``
values, as native TOML values)::

    model = "made"
    dataset = "binarized-mnist"
    epochs = 200
    lr = 1e-3
    order = "reversed"

    [hyperparameters]
    hidden_sizes = [500, 500]

Precedence: the defaults < the file < the command line (``-p`` on the command line adds to /
replaces the file's hyperparameters name by name).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from chainrule.errors import InputError

#: The table of model hyperparameters in a configuration file.
HYPERPARAMETERS = "hyperparameters"
#: Options of ``train`` that a configuration file does not hold: ``-p`` (the hyperparameters table
#: instead) and ``--config`` itself.
_NOT_IN_FILE = ("help", "param", "config")
#: Options about the run directory rather than the run: accepted in a file, never stored in
#: ``RUN/config.toml`` (re-running a stored configuration must not silently replace or resume a run).
_NOT_STORED = ("resume", "force")


def train_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a configuration file may set: ``{dest: action}`` of the ``train`` subparser
    ``parser`` (the command line passes its own, so this module needs nothing from it)."""
    return {a.dest: a for a in parser._actions if a.dest not in _NOT_IN_FILE and a.dest != argparse.SUPPRESS}


def _kind(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "bool"
    if action.type is int:
        return "int"
    if action.type is float:
        return "float"
    return "str"


_KIND_NAMES = {"bool": "a boolean (true or false)", "int": "an integer", "float": "a number", "str": "a string"}


def _checked(key: str, value: Any, action: argparse.Action, where: str) -> Any:
    kind = _kind(action)
    if action.dest == "num_values" and isinstance(value, int) and not isinstance(value, bool):
        return value  # num-values = 2 (or the string "real"); checked with the command line's value
    if kind == "str" and key == "order" and isinstance(value, list) \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return json.dumps(value)  # order = [2, 0, 1]: a permutation, as --order '[2,0,1]'
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}[kind](value)
    if not ok:
        expected = _KIND_NAMES[kind] + (" or a list of integers (a permutation)" if key == "order" else
                                        " (\"real\") or an integer K" if action.dest == "num_values" else "")
        raise InputError(f"{where}: {key} must be {expected}, got {value!r} ({_toml_type(value)})")
    if kind == "float":
        value = float(value)
    if action.choices is not None and value not in action.choices:
        raise InputError(f"{where}: {key} = {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _toml_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _check_hyperparameter(name: str, value: Any, where: str) -> None:
    """JSON-like values only (what ``-p NAME=VALUE`` can give): no TOML dates or times."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_hyperparameter(f"{name}.{k}", v, where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_hyperparameter(f"{name}[{i}]", v, where)
    elif not isinstance(value, (bool, int, float, str)):
        raise InputError(f"{where}: hyperparameters.{name} must be a number, boolean, string, array or table, "
                         f"got {value!r} ({_toml_type(value)})")


def load_train_config(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a ``chainrule train`` configuration file: ``{dest: value}`` for the options it sets
    (``batch-size`` -> ``batch_size``, float options as floats, ``order = [2, 0, 1]`` as the JSON
    string ``--order`` takes) plus ``"hyperparameters": {name: value}`` when it has that table.

    Raises :class:`InputError` naming the file for a missing / unreadable / invalid TOML file (with
    the line tomllib reports), an unknown key (with the valid ones) or a value of the wrong type.
    """
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"--config {path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise InputError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"--config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"--config {path}: invalid TOML: {exc}") from None
    options = train_options(parser)
    valid = sorted(d.replace("_", "-") for d in options) + [f"[{HYPERPARAMETERS}]"]
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest in seen:
            raise InputError(f"{where}: {key!r} and {seen[dest]!r} are the same option: give it once")
        seen[dest] = key
        if dest == HYPERPARAMETERS:
            if not isinstance(value, dict):
                raise InputError(f"{where}: {key} must be a table ([{HYPERPARAMETERS}] with name = value lines), "
                                 f"got {value!r} ({_toml_type(value)})")
            hp: dict[str, Any] = {}
            for name, v in value.items():
                _check_hyperparameter(name, v, where)
                hp[name.replace("-", "_")] = v
            out[HYPERPARAMETERS] = hp
            continue
        if dest not in options:
            close = difflib.get_close_matches(key.replace("_", "-"), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            what = "a table" if isinstance(value, dict) else "key"
            raise InputError(f"{where}: unknown {what} {key!r}{hint}; the valid keys are: {', '.join(valid)}")
        out[dest] = _checked(key, value, options[dest], where)
    return out


def resolved_train_config(args: argparse.Namespace, hyperparameters: dict[str, Any],
                          parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The configuration a ``train`` run resolved to (defaults < file < command line), as a file
    would hold it: ``{dest: value}`` for every option that has a value (TOML has no null: an option
    left unset is left out) except ``--resume`` / ``--force``, plus ``"hyperparameters"``."""
    out = {}
    for dest in train_options(parser):
        value = getattr(args, dest, None)
        if dest not in _NOT_STORED and value is not None:
            out[dest] = value
    out[HYPERPARAMETERS] = dict(hyperparameters)
    return out


# ---------------------------------------------------------------------- writing TOML
def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key) else _toml_string(key)


def _toml_string(s: str) -> str:
    # JSON's escapes (\" \\ \n \t \uXXXX ...) are TOML's; DEL must be escaped too in TOML
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # 0.001, 1e-05, 1e+20: all TOML floats
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, f"{name}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v, f'{name}.{k}')}" for k, v in value.items()) + "}"
    raise ValueError(f"{name} = {value!r}: TOML cannot hold {type(value).__name__} values")


def dumps_train_config(config: dict[str, Any]) -> str:
    """``config`` (as :func:`resolved_train_config` gives it) as TOML text that
    :func:`load_train_config` reads back to the same dict. ValueError for a value TOML cannot hold
    (a ``None`` hyperparameter, from ``-p NAME=null``)."""
    lines = ["# chainrule train configuration (re-run with: chainrule train --config THIS_FILE)"]
    hp = config.get(HYPERPARAMETERS, {})
    for key, value in config.items():
        if key != HYPERPARAMETERS:
            lines.append(f"{key.replace('_', '-')} = {_toml_value(value, key)}")
    lines += ["", f"[{HYPERPARAMETERS}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v, f'hyperparameters.{k}')}" for k, v in hp.items()]
    return "\n".join(lines) + "\n"


def write_train_config(path: str | Path, config: dict[str, Any]) -> Path:
    """Write ``config`` to ``path`` as TOML (see :func:`dumps_train_config`); returns ``path``."""
    path = Path(path)
    text = dumps_train_config(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
