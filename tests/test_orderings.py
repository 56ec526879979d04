from __future__ import annotations

import pytest
import torch

from chainrule.errors import InputError
from chainrule.orderings import inverse, make_ordering


def test_named_orderings():
    assert make_ordering("raster", (4,)).tolist() == [0, 1, 2, 3]
    assert make_ordering("reversed", (4,)).tolist() == [3, 2, 1, 0]
    r1, r2 = make_ordering("random:7", (10,)), make_ordering("random:7", (10,))
    assert torch.equal(r1, r2) and sorted(r1.tolist()) == list(range(10))
    assert not torch.equal(make_ordering("random:8", (10,)), r1)
    # snake over a 2x3 image: row 0 left to right, row 1 right to left
    assert make_ordering("snake", (1, 2, 3)).tolist() == [0, 1, 2, 5, 4, 3]
    # RGB: the three channels of a pixel come together
    assert make_ordering("snake", (3, 1, 2)).tolist() == [0, 2, 4, 1, 3, 5]
    assert make_ordering([2, 0, 1], (3,)).tolist() == [2, 0, 1]


def test_inverse():
    o = make_ordering("random:1", (9,))
    assert torch.equal(o[inverse(o)], torch.arange(9))


@pytest.mark.parametrize("bad", [[0, 1], [0, 0, 1], [1, 2, 3], [[0, 1, 2]], "diagonal", "random:x", [0.0, 1.0, 2.0]])
def test_bad_orderings(bad):
    with pytest.raises(InputError):
        make_ordering(bad, (3,))
