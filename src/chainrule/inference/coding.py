"""The determinism path for entropy coding: the integer frequency table of every conditional,
computed the same way when encoding (values from data) and decoding (values decoded one at a time).

An arithmetic or range coder decodes correctly only if the decoder meets, bit for bit, the tables
the encoder used. Neural networks do not promise that: the teacher-forced pass and the
incremental step round differently, and so does the same step at batch 1 and batch 64, or with 1
and 2 threads (measured: ~1% of 16-bit tables differed). :func:`frequency_tables` removes every
such difference by construction:

- encoding and decoding both run the **incremental step** (never the teacher-forced pass), in the
  model's order, one variable at a time (inside a group through the head's conditionals);
- examples are processed in blocks of exactly ``block_rows`` rows (the last block padded), so every
  matrix product has the same shape whatever the number of examples; encoder and decoder must
  pass the same ``block_rows`` (a compressed file records it). Larger blocks amortize the
  per-step overhead: 128 rows code 3-5x faster than 16 (BENCHMARKS.md §5);
- torch runs with **one thread** while a table is computed (restored afterwards);
- probabilities become integer frequencies row by row in float64
  (:func:`chainrule.distributions.quantize_logits`: every symbol >= 1, rows sum to 2**precision).

It is a generator: it yields ``(j, table)`` — the flat index j of the next variable and its table
``(n, K)`` int64 — and receives the ``n`` values of that variable by ``send``::

    tables = frequency_tables(model, n)
    j, freq = next(tables)
    while True:
        values = x[:, j]                      # encoding: the data; decoding: what the coder decodes
        try:
            j, freq = tables.send(values)
        except StopIteration:
            break
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.distributions import quantize_logits
from chainrule.errors import InputError

#: Rows per block by default: every step runs on exactly this many rows.
BLOCK_ROWS = 128


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's CPU kernels on one thread inside the block (its result cannot depend on the
    user's thread count), then restore the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def frequency_tables(model: ARModel, n: int, context: Any = None, precision: int = 16, member: int | None = None,
                     order: Any = None, block_rows: int = BLOCK_ROWS, full_pass: bool = False,
                     version: int | None = None, **options: Any) -> Generator[tuple[int, torch.Tensor], torch.Tensor, None]:
    """Yield ``(variable index, frequencies (n, K) int64)`` for every variable of ``n`` examples in
    the model's order, receiving each variable's ``n`` values by ``send`` (see the module docstring).

    Works for every discrete model; an ensemble needs ``member=k`` (its mixture's conditionals
    under different orders have no closed form). The tables depend on ``block_rows`` (the rows of
    every step, the last block padded): decode with the ``block_rows`` you encoded with.
    ``full_pass``: step with the teacher-forced pass instead of the architecture's cache
    (:meth:`~chainrule.models.base.AutoregressiveModel.full_pass_step`; slower, and rounded
    differently): for streams coded before the architecture had its cached step. ``version``: the
    compressed-file format whose tables to compute, for an architecture whose cached step changed
    its rounding since (:meth:`~chainrule.models.base.AutoregressiveModel.coding_state`); None:
    the current step.
    """
    if not model.head.discrete:
        raise InputError(f"{model.name}: entropy coding needs a discrete model (num_values=K); this one is real-valued")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise InputError(f"block_rows must be a positive integer, got {block_rows!r}")
    members = getattr(model, "num_members", 1)
    if members > 1 and member is None:
        raise InputError("coding with an ensemble needs one member: pass member=k")
    call = {"order": order, **options} if members == 1 else {"member": member, "order": order, **options}
    model.eval()
    with torch.inference_mode():
        ctx = model.normalize_context(context, n)
        blocks = []
        for start in range(0, n, block_rows):
            rows = min(block_rows, n - start)
            c = None
            if ctx is not None:  # pad the block's context with copies of its first row
                c = ctx[start:start + rows]
                c = torch.cat([c, c[:1].expand(block_rows - rows, *c.shape[1:])]) if rows < block_rows else c
            with single_thread():
                if full_pass:
                    state = model.init_full_pass_state(block_rows, c, **call)
                else:
                    state = model.init_state(block_rows, c, **call)
                    if version is not None:
                        state = model.base_model.coding_state(state, version)
                blocks.append([start, rows, state])
        order_list = model.resolve_order(**call).tolist()
        index = model.groups.index.tolist()
        s = model.group_size
        device = model.device  # looked up once: the property walks the parameters
        step = model.full_pass_step if full_pass else model.step
        last_group = None
        for i, g in enumerate(order_list):
            dists, partial = [], torch.zeros(n, s, dtype=torch.long, device=device)
            with single_thread():
                for blk in blocks:
                    start, rows, state = blk
                    prev = None
                    if i:
                        prev = _padded(last_group, start, rows, block_rows)
                    params, blk[2] = step(state, i, prev)
                    dists.append(model.head(params))
            for j in range(s):
                with single_thread():
                    # the head runs on each block's fixed shape; the float64 quantization is row by
                    # row (nothing in it depends on the batch), so the blocks share one call
                    logits = [dist.variable_logits(None if j == 0 else _padded(partial, start, rows, block_rows), j)[:rows]
                              for (start, rows, _), dist in zip(blocks, dists)]
                    table = quantize_logits(logits[0] if len(logits) == 1 else torch.cat(logits), precision)
                values = yield index[g][j], table
                values = _check_values(values, n, model.num_values)
                partial[:, j] = values.to(partial.device)
            last_group = partial


def _padded(values: torch.Tensor, start: int, rows: int, block_rows: int) -> torch.Tensor:
    """Rows ``start:start+rows`` of ``values`` ``(n, S)``, zero-padded to ``block_rows`` rows."""
    if rows == block_rows:
        return values[start:start + rows]
    out = values.new_zeros(block_rows, values.shape[1])
    out[:rows] = values[start:start + rows]
    return out


def _check_values(values: Any, n: int, k: int) -> torch.Tensor:
    if values is None:
        raise InputError("frequency_tables: send the n values of the variable just yielded (got None)")
    v = torch.as_tensor(values).reshape(-1)
    if v.numel() != n or v.is_floating_point() or v.dtype == torch.bool:
        raise InputError(f"frequency_tables: expected {n} integer values, got shape {tuple(v.shape)} of dtype {v.dtype}")
    if n:
        low, high = torch.aminmax(v)  # one pass over the values
    if n and (int(low) < 0 or int(high) >= k):
        raise InputError(f"frequency_tables: values must lie in 0..{k - 1}")
    return v.long()


def encoding_tables(model: ARModel, x: torch.Tensor, context: Any = None, precision: int = 16,
                    **call: Any) -> tuple[list[int], torch.Tensor]:
    """Run :func:`frequency_tables` over data ``x`` ``(n, *shape)``: returns the variable indices
    in coding order and the tables ``(D, n, K)`` the encoder meets."""
    x, _ = model.validate(x)
    flat = x.reshape(x.shape[0], -1)
    gen = frequency_tables(model, x.shape[0], context, precision, **call)
    idx, out = [], []
    j, freq = next(gen)
    while True:
        idx.append(j)
        out.append(freq)
        try:
            j, freq = gen.send(flat[:, j])
        except StopIteration:
            break
    return idx, torch.stack(out)
