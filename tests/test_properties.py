"""Property-based tests (hypothesis) of the structured inputs a user types or hands over:
``-p NAME=VALUE`` hyperparameters, ``--order`` permutations and seeds, the K inferred from an
array's values, and the lossless compression round trip. Each property: the input is accepted
and means what it says, or it is refused with an :class:`InputError` / ``DataError`` (a
ChainruleError: one line on the command line), never another exception.

Deterministic (``derandomize=True``): the same examples every run, on CI and elsewhere; modest
example counts keep the file well under a minute on a loaded core.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import chainrule
from chainrule.apps.compression import compress, decompress
from chainrule.cli.common import parse_hyperparameters
from chainrule.cli.common import order_arg as _order_arg
from chainrule.data import ValueRangeError, summarize_values
from chainrule.errors import DataError, InputError
from chainrule.orderings import make_ordering

PROPS = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(PROPS, max_examples=25)

# JSON values as `-p` takes them: finite numbers (JSON has no NaN / infinities), nested a little
_scalars = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=8)
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
names = st.text(min_size=1, max_size=12).filter(lambda s: "=" not in s)


# ---------------------------------------------------------------------- (a) -p NAME=VALUE
@PROPS
@given(st.lists(st.tuples(names, json_values), max_size=4))
def test_hyperparameters_round_trip(pairs):
    """``NAME=<json of v>`` gives ``{NAME with - as _: v}``; a later pair of the same name wins."""
    argv = [f"{name}={json.dumps(value)}" for name, value in pairs]
    expected = {name.replace("-", "_"): value for name, value in pairs}
    assert parse_hyperparameters(argv) == expected


@PROPS
@given(st.lists(st.text(max_size=30), max_size=4))
@example(["x=" + "1" * 5000])  # beyond Python's 4300-digit int limit: was a bare ValueError
@example(["x=" + "[" * 100_000])  # nested too deep: was a RecursionError
@example(["x=NaN"])  # read as a float; the model checks its value
@example(["x=1e999"])  # overflows to inf, likewise
@example(["x=[500"])
@example(["=3"])
@example(['x="\\ud800"'])  # a lone surrogate: cannot be stored in the run's UTF-8 config
def test_hyperparameters_accept_or_refuse_with_input_error(argv):
    try:
        out = parse_hyperparameters(argv)
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(out, dict) and len(out) <= len(argv)
    for value in out.values():  # whatever was accepted can be written to the run's JSON / TOML as text
        json.dumps(value, ensure_ascii=False).encode("utf-8")


@PROPS
@given(st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=10))
@example("00")  # looks like a number but is no JSON: refused, not silently the string "00"
def test_a_bare_word_is_a_string_and_a_bad_number_an_error(word):
    """``act=relu`` is the string "relu"; ``x=0.5`` the number; ``x=00`` (looks like JSON, is not) an
    InputError."""
    try:
        expected = json.loads(word)
    except ValueError:
        expected = word
    try:
        got = parse_hyperparameters([f"act={word}"])
    except InputError:
        assert word[0].isdigit()
        return
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got["act"])
    else:
        assert got == {"act": expected}


# ---------------------------------------------------------------------- (b) --order
grids = st.sampled_from([(1,), (5,), (2, 3), (1, 3, 3), (3, 2, 2), (2, 2, 2, 2)])


@PROPS
@given(grids.flatmap(lambda grid: st.tuples(st.just(grid), st.permutations(range(math.prod(grid))))))
def test_every_permutation_is_accepted(grid_perm):
    grid, perm = grid_perm
    order = make_ordering(_order_arg(json.dumps(list(perm))), grid)
    assert order.dtype == torch.long and order.tolist() == list(perm)


@PROPS
@given(grids, st.lists(st.integers(-3, 40) | st.booleans(), max_size=20))
@example((2, 3), [0, 1, 2, 3, 4, True])  # a boolean among integers used to read as 1
@example((5,), [0, 1, 2, 3, 3])
def test_every_non_permutation_is_refused(grid, values):
    g = math.prod(grid)
    is_perm = not any(isinstance(v, bool) for v in values) and sorted(values) == list(range(g))
    assume(not is_perm)
    with pytest.raises(InputError):
        make_ordering(_order_arg(json.dumps(values)), grid)


@PROPS
@given(grids, json_values)
def test_any_json_order_is_a_permutation_or_an_input_error(grid, value):
    try:
        order = make_ordering(_order_arg(json.dumps(value)) if isinstance(value, list) else value, grid)
    except InputError:
        return
    assert sorted(order.tolist()) == list(range(math.prod(grid)))


@PROPS
@given(st.text(max_size=25))
@example("[" * 100_000)
@example("[" + "1" * 5000 + "]")
@example("random:99999999999999999999999")
@example("random:3_0")
def test_any_order_text_is_a_permutation_or_an_input_error(text):
    try:
        order = make_ordering(_order_arg(text), (2, 3))
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert sorted(order.tolist()) == list(range(6))


@PROPS
@given(grids, st.integers(-(2**63), 2**64 - 1))
def test_random_seed_gives_a_seeded_permutation(grid, seed):
    order = make_ordering(f"random:{seed}", grid)
    assert sorted(order.tolist()) == list(range(math.prod(grid)))
    assert torch.equal(order, make_ordering(f"random:{seed}", grid))  # the same seed, the same order


@PROPS
@given(st.integers(2**64, 2**80) | st.integers(-(2**80), -(2**63) - 1))
def test_random_seed_out_of_range_is_refused(seed):
    with pytest.raises(InputError, match="seed"):
        make_ordering(f"random:{seed}", (4,))


# ---------------------------------------------------------------------- (c) K inferred from the values
_int_dtypes = st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint16])
_shapes = hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4)


@functools.lru_cache(maxsize=32)
def _small_model(shape: tuple[int, ...], k: int):
    """A small model of K values (MADE, two hidden units) whose validate checks the data against K."""
    return chainrule.create_model("made", shape, k, hidden_sizes=[2])


@PROPS
@given(_int_dtypes.flatmap(lambda dt: hnp.arrays(dt, _shapes, elements=st.integers(0, 300 if dt != np.uint8 else 255))))
def test_inferred_k_exceeds_every_value_and_the_model_accepts_the_data(x):
    summary, (out,) = summarize_values([x], "x")
    k = summary.num_values
    assert k is not None and k >= 2 and k > int(x.max())
    assert out.dtype == np.int64 and np.array_equal(out, x)
    if int(x.max()) <= 1 and not (x.dtype == np.uint8 and x.ndim >= 3 and int(x.max()) == 0):
        assert k == 2  # 0/1 data are binary ...
    elif x.dtype == np.uint8 and x.ndim >= 3:
        assert k == 256  # ... other 8-bit images get the dtype's range, whatever the largest value
    model = _small_model(tuple(x.shape[1:]), k)
    v, _ = model.validate(torch.from_numpy(out))
    assert torch.equal(v.cpu(), torch.from_numpy(out))
    # the same values as floats: discrete too, with a K the model accepts them under
    fsummary, (fout,) = summarize_values([x.astype(np.float32)], "x")
    assert fsummary.num_values is not None and fsummary.num_values > int(x.max()) and np.array_equal(fout, x)


@PROPS
@given(hnp.arrays(np.int64, _shapes, elements=st.integers(0, 50)), st.integers(2, 80))
def test_a_given_k_is_accepted_when_it_exceeds_every_value(x, k):
    high = int(x.max())
    if k > high:
        summary, _ = summarize_values([x], "x", num_values=k)
        assert summary.num_values == k and summary.kind == "given"
    else:
        with pytest.raises(ValueRangeError) as info:
            summarize_values([x], "x", num_values=k)
        assert info.value.value == high and info.value.num_values == k and f"holds the value {high}" in str(info.value)


@PROPS
@given(hnp.arrays(np.float64, _shapes, elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_floats_are_discrete_exactly_when_they_are_integers(x):
    try:
        summary, (out,) = summarize_values([x], "x")
    except DataError as exc:  # integers with a negative one: discrete data are 0..K-1
        assert np.array_equal(x, np.rint(x)) and x.min() < 0 and "negative" in str(exc)
        return
    if summary.num_values is None:
        assert not np.array_equal(x, np.rint(x)) or x.min() < 0
        assert out.dtype == np.float32
    else:
        assert np.array_equal(out, np.rint(x)) and summary.num_values > out.max()


@PROPS
@given(hnp.arrays(np.float32, _shapes, elements=st.floats(0, 1, width=32) | st.sampled_from([np.nan, np.inf, -np.inf])))
def test_nan_and_inf_are_refused(x):
    if np.isfinite(x).all():
        summarize_values([x], "x")
    else:
        with pytest.raises(DataError, match="NaN") as info:
            summarize_values([x], "x")
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- (d) compression round trip
@functools.lru_cache(maxsize=None)
def _coder(name: str, h: int, w: int, k: int):
    """A tiny model with random (non-trivial) weights; the same one for every example of a shape."""
    hp = {"made": {"hidden_sizes": [8]}, "nade": {"hidden_size": 4}, "fvsbn": {}}[name]
    torch.manual_seed(h * 100 + w * 10 + k)
    model = chainrule.create_model(name, (1, h, w), k, **hp)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


_coded = st.tuples(st.sampled_from(["made", "nade", "fvsbn"]), st.integers(1, 3), st.integers(1, 3),
                   st.integers(1, 3), st.sampled_from([2, 3, 5])).flatmap(
    lambda t: st.tuples(st.just(t), hnp.arrays(np.int64, (t[1], 1, t[2], t[3]), elements=st.integers(0, t[4] - 1))))


@FEW
@given(_coded)
def test_compression_round_trip_is_exact(case):
    (name, _, h, w, k), x = case
    model = _coder(name, h, w, k)
    data = compress(model, x)
    out = decompress(model, data)
    assert out.dtype == torch.long and torch.equal(out, torch.from_numpy(x))


@FEW
@given(_coded, st.binary(min_size=1, max_size=16), st.data())
def test_damaged_compressed_data_is_an_input_error(case, extra, draw):
    (name, _, h, w, k), x = case
    model = _coder(name, h, w, k)
    data = compress(model, x)
    with pytest.raises(InputError):
        decompress(model, data + extra)  # bytes appended
    cut = draw.draw(st.integers(0, len(data) - 1), label="truncated to")
    with pytest.raises(InputError):
        decompress(model, data[:cut])  # truncated anywhere
