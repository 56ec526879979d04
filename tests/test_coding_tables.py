"""The determinism path for entropy coding: the integer frequency tables an encoder meets (values
from data) equal those a decoder meets (values decoded one at a time), bit for bit, whatever the
batch size and the number of threads — for every registered discrete model."""

from __future__ import annotations

import math

import pytest
import torch

import chainrule
from chainrule.errors import InputError
from chainrule.inference.coding import encoding_tables, frequency_tables
from chainrule.models.registry import get_model_class
from test_registry import TINY, make

DISCRETE = [n for n in chainrule.list_models() if get_model_class(n).supports_discrete]
SPACES = [((12,), 5), ((3, 2, 2), 4)]
BLOCK = 5  # rows per block in these tests (compression's default, 128, would only make them slower)


def decode_tables(model, x: torch.Tensor, context=None, **call) -> list[torch.Tensor]:
    """Walk the generator as a decoder does: the value of each variable is 'decoded' from the table
    just met (here: looked up, then checked to be codable), one example at a time."""
    tables = []
    for i in range(len(x)):
        gen = frequency_tables(model, 1, None if context is None else context[i:i + 1], **call)
        j, freq = next(gen)
        seen = []
        flat = x[i].reshape(-1)
        while True:
            assert freq.shape == (1, model.num_values) and int(freq.min()) >= 1 and int(freq.sum()) == 1 << 16
            seen.append(freq[0])
            try:
                j, freq = gen.send(flat[j:j + 1])
            except StopIteration:
                break
        tables.append(torch.stack(seen))
    return tables


@pytest.mark.parametrize("shape,num_values", SPACES)
@pytest.mark.parametrize("name", DISCRETE)
def test_encoder_and_decoder_meet_the_same_tables(name, shape, num_values):
    if name == "histogram":  # a full table: keep the space small
        shape, num_values = shape[:1] if len(shape) == 1 else (1, 2, 3), 3
        shape = (6,) if len(shape) == 1 else shape
    model = make(name, shape, num_values, seed=3)
    shape = model.shape  # image models read a vector space as a (1, 1, D) image
    n = 2 * BLOCK + 3  # three blocks, the last one padded
    x = torch.randint(num_values, (n, *shape), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _, enc = encoding_tables(model, x, block_rows=BLOCK)  # (D, n, K), batch n, 2 threads asked for
        torch.set_num_threads(1)
        dec = decode_tables(model, x, block_rows=BLOCK)  # batch 1, 1 thread
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # the path restores the thread count
    for i in range(n):
        assert torch.equal(enc[:, i], dec[i]), f"{name}: example {i}: tables differ between encoding and decoding"
    # the tables are the model's conditionals: they code x at its log-likelihood, up to quantization
    idx, _ = encoding_tables(model, x, block_rows=BLOCK)
    flat = x.reshape(n, -1)
    bits = -(torch.stack([enc[k, torch.arange(n), flat[:, j]] for k, j in enumerate(idx)], 1).double() / (1 << 16)).log2()
    nll_bits = -model.log_prob_per_variable(x).detach().double()[:, idx] / math.log(2)  # (n, D), in coding order
    # where p >= 2^-10 the quantization (every symbol >= 1/2^16) costs almost nothing; below it
    # the floor of 16 bits per symbol caps the code length (random weights make such values common)
    likely = nll_bits < 10
    assert int(likely.sum()) >= 20  # enough values to compare
    assert torch.allclose(bits[likely], nll_bits[likely], rtol=2e-3, atol=0.02)
    assert (bits <= 16 + 1e-9).all()


def test_grouped_and_conditional_models_code_variable_by_variable():
    model = make("made", (3, 2, 2), 4, group_shape="pixel", num_classes=3)
    x = torch.randint(4, (7, 3, 2, 2))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    idx, enc = encoding_tables(model, x, y, block_rows=BLOCK)
    assert sorted(idx) == list(range(12)) and idx[:3] == [0, 4, 8]  # pixel 0's R, G, B first
    dec = decode_tables(model, x, y, block_rows=BLOCK)
    assert all(torch.equal(enc[:, i], dec[i]) for i in range(7))


def test_coding_refuses_what_it_cannot_code():
    with pytest.raises(InputError, match="discrete"):
        next(frequency_tables(chainrule.create_model("nade", (3,), None, **TINY["nade"]), 2))
    ens = chainrule.create_model("nade", (3,), 2, hidden_size=4, num_orders=2)
    with pytest.raises(InputError, match="member"):
        next(frequency_tables(ens, 2))
    for bad in (0, 2.0, True):
        with pytest.raises(InputError, match="block_rows must be a positive integer"):
            next(frequency_tables(chainrule.create_model("fvsbn", (3,), 2), 2, block_rows=bad))
    gen = frequency_tables(chainrule.create_model("fvsbn", (3,), 2), 2)
    next(gen)
    with pytest.raises(InputError, match="0..1"):
        gen.send(torch.tensor([0, 2]))
