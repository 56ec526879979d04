"""Lossless compression with any discrete chainrule model: arithmetic (range) coding of the model's
own conditionals, ``p(x) = prod_j p(x_j | x_<j, c)``, so an example costs about ``-log2 p(x | c)``
bits (plus the coder's ~32 bits of flush per file and the 24-bit quantization of the tables).

How the stream is made
----------------------
- The tables are :func:`chainrule.inference.coding.frequency_tables`: integer frequencies
  ``(n, K)`` (every symbol >= 1, rows summing to ``2**24``), computed the same way at encoding and
  decoding time, whatever the batch size or thread count. Nothing else of the model is used.
- The coder is ``constriction``'s :class:`~constriction.stream.queue.RangeEncoder` /
  ``RangeDecoder`` (a *queue*: symbols are decoded in the order they were encoded) with the model
  family ``constriction.stream.model.Categorical(perfect=False)``, parameterized per symbol.
- **Exact quantization.** constriction takes float probabilities and re-quantizes them to 24 bits
  (``LazyContiguousCategoricalEntropyModel::from_floating_point_probabilities_fast``, constriction
  0.4 / 0.5): with ``P_k = f_k / 2**24`` and cumulative sums ``S_k`` it computes
  ``cdf_k = floor(S_k * (2**24 - K) / sum(P)) + k`` (``cdf_K = 2**24``), the same formula in the
  encoder and the decoder. We pass the tables as **float64** ``f / 2**24``: every ``P_k``, every
  partial sum ``S_k`` (a multiple of ``2**-24`` not above 1), their total (exactly 1.0) and every
  product ``S_k * (2**24 - K)`` (below ``2**48``) is exact in float64, so the 24-bit model is an
  exact integer function of our integer table — no float rounding anywhere, on any platform.
  (float32 would not do: the products would round; measured, a float32 stream differs.) The cost
  over coding ``f / 2**24`` directly is below ``2 K / 2**24`` bits per symbol.
- **Why 24 bits.** Every symbol's frequency is at least 1, so a table of ``2**b`` reserves at least
  ``K / 2**b`` of the mass for values the model deems impossible. At b = 16 (format version 1)
  that is 0.4% for K = 256 and cost 8-bit MNIST 0.24% over the ideal code length (BENCHMARKS.md
  §5); at b = 24 it is 0.0015%. Version-1 files (16-bit tables) are still read.
- **One stream per file**: the examples are coded in chunks of at most ``chunk`` examples (stored
  in the header; by default equal chunks of at most ``max(CHUNK_EXAMPLES, R)``, so the model's
  incremental state stays small: :func:`coding_layout`); inside a chunk variable by variable in the order the generator yields them (the model's
  order; inside a group its variables one at a time), the chunk's examples in index order for each
  variable.
- **Blocks.** The tables are computed on blocks of exactly ``block_rows`` examples (the last one
  padded; :mod:`chainrule.inference.coding`), recorded in the metadata since version 3: the
  decoder must use the encoder's. :func:`compress` cuts a chunk into equal blocks of at most R
  rows, R the architecture's ``coding_block_rows`` (128; NADE and MADE, whose state is small:
  4096); 128 rows code 3-5x faster than the 16 of versions 1 and 2 (BENCHMARKS.md §5).

Container format (version 5; all integers little-endian)
--------------------------------------------------------
====== ======== ==========================================================================
offset bytes    field
====== ======== ==========================================================================
0      4        magic ``b"CRZ1"``
4      2        format version, uint16 (= 5; 4: as 5, NADE/MADE coded by their dense step; 3: as 4, MADE/causalconv coded by the full pass; 2: no ``block_rows``, blocks of 16; 1: as 2, 16-bit tables)
6      1        content kind, uint8: 0 = array of model values, 1 = text (tokens of a file)
7      1        context kind, uint8: 0 = none, 1 = class labels, 2 = context tensor
8      32       model fingerprint: SHA-256 of the model's JSON config and weights
                (:func:`model_fingerprint`)
40     8        number of examples N, uint64 (text: the number of windows)
48     4        num_values K, uint32
52     4        examples per chunk, uint32 (see above)
56     1        rank R of the event shape, uint8
57     4*R      event shape, uint32 each
a      4        length M of the metadata, uint32
a+4    M        metadata: a UTF-8 JSON object. Arrays: ``dtype`` (the NumPy dtype string of the
                input, restored by :func:`decompress_file`), ``single`` (the input was one
                example without a batch axis). Text: ``tokens`` (the true token count),
                ``tokenizer`` (its kind), ``tokenizer_sha256``. Always: ``block_rows`` (the
                rows of every block of the tables, see above; version >= 3), ``member`` (the
                ensemble member coded with, or null) and the ``chainrule`` / ``torch`` /
                ``constriction`` versions of the compressor (for error messages only).
b      4        length L of the context, uint32 (0 when there is none)
b+4    L        context: a NumPy ``.npy`` file (no pickle): labels ``(N,)`` int64, or the
                context tensor ``(N, *context_shape)`` in the dtype it was given
c      32       content SHA-256: arrays — of the values as int64 ``(N, *shape)``, C order;
                text — of the original file's bytes. Checked after decoding.
c+32   8        payload length P in bytes, uint64 (a multiple of 4)
c+40   4        CRC-32 (zlib) of the payload, uint32
c+44   4        CRC-32 (zlib) of bytes 0 .. c+44 (the header above)
c+48   P        payload: the range coder's 32-bit words, uint32 each
====== ======== ==========================================================================

The file ends with the payload (trailing bytes are an error). Decoding checks, before it decodes
anything: the magic and version, the header's CRC-32, that the file is not truncated, that the
model's fingerprint matches (:class:`~chainrule.errors.InputError` "this file was compressed with a
different model" otherwise) and the payload's CRC-32; after decoding, the content SHA-256 — it
catches what the CRCs cannot: a payload decoded with tables that differ from the encoder's (another
torch or chainrule version) decodes to something else, which is refused, never returned.

Inputs and outputs (:func:`compress_file` / :func:`decompress_file`)
--------------------------------------------------------------------
- ``.npy`` arrays ``(N, *shape)`` or one example ``shape``; decompressed to ``.npy`` with the
  input's dtype and shape.
- image files or a folder of images (:func:`chainrule.apps.completion.read_images`: 8-bit
  intensities mapped to the model's K values — that mapping is lossy unless K = 256, so what is
  compressed is the model's values); decompressed to ``.npy``, or to PNG when the output ends with
  ``.png`` (one file; several: ``OUTPUT-000.png``, ``OUTPUT-001.png``, ...; values mapped back to
  0..255).
- a text file, with a sequence model ``shape=(T,)`` and its tokenizer: the file is cut into
  windows of T tokens, each coded on its own (no context across windows); the last window is
  padded with the model's most probable token at each padded position (padding is coded, costs
  little and is stripped after decoding: the header holds the true token count). A byte-level
  tokenizer codes the file's bytes (any file round-trips); another tokenizer must reproduce the
  file (``decode(encode(s)) == s``), else the file is refused. Decompressed to the exact bytes.
- already loaded values (a tensor), e.g. from a dataset (the command line does that).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chainrule.contract import ARModel
from chainrule._version import __version__
from chainrule.apps.completion import is_image_path, read_images
from chainrule.errors import InputError
from chainrule.inference.coding import BLOCK_ROWS, frequency_tables
from chainrule.io.outputs import check_output, output_file

MAGIC = b"CRZ1"
FORMAT_VERSION = 5
#: Bits of the frequency tables of each format version this chainrule reads. Version 4 is version 3
#: coded with the cached steps MADE and causalconv gained then (their older files decode by the full
#: pass they were coded with: ``coding_step_since``); version 5 is version 4 coded with the sparse
#: steps of NADE and MADE (their version-4 files decode by the dense step: ``coding_state``).
TABLE_BITS = {1: 16, 2: 24, 3: 24, 4: 24, 5: 24}
#: Rows per block of the tables in versions 1 and 2 (version 3 records its own).
OLD_BLOCK_ROWS = 16
#: Bits of the integer frequency tables this chainrule writes (rows sum to ``2**PRECISION``).
PRECISION = TABLE_BITS[FORMAT_VERSION]
#: Examples per chunk of the stream by default (bounds the model's incremental state).
CHUNK_EXAMPLES = 1024
CONTENT_ARRAY, CONTENT_TEXT = 0, 1
CONTEXT_NONE, CONTEXT_LABELS, CONTEXT_TENSOR = 0, 1, 2

#: Sane limits of a header's fields (a file beyond them is corrupted or forged).
MAX_RANK = 32
MAX_NUM_VALUES = 1 << 24  # a 24-bit table must give every value a frequency >= 1
#: Bits a range coder's payload may hold fewer than the information it decodes to (its final state).
PAYLOAD_SLACK_BITS = 256

_FIXED = struct.Struct("<4sHBB32sQIIB")  # magic .. rank (57 bytes)
_TAIL = struct.Struct("<32sQI")  # content SHA-256, payload length, payload CRC-32


# ---------------------------------------------------------------------- the model's identity
def model_fingerprint(model: ARModel) -> bytes:
    """SHA-256 (32 bytes) of a model's JSON config and weights: the config as canonical JSON (sorted
    keys), then every tensor of ``state_dict`` in sorted name order as name, dtype, shape and raw
    bytes (each length-prefixed). Independent of the device, of the chainrule version and of the
    checkpoint's ``extra``; equal for a model and the same model saved and loaded."""
    h = hashlib.sha256(b"chainrule-model-fingerprint-v1\0")

    def put(b: bytes) -> None:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    put(json.dumps(model.config, sort_keys=True, separators=(",", ":"), default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        put(f"{name}|{t.dtype}|{list(t.shape)}".encode())
        put(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


# ---------------------------------------------------------------------- header
@dataclass
class Header:
    """The parsed header of a compressed file (see the module docstring for the layout)."""

    content_kind: int
    context_kind: int
    fingerprint: bytes
    num_examples: int
    num_values: int
    chunk: int
    shape: tuple[int, ...]
    meta: dict[str, Any]
    context: np.ndarray | None
    content_sha256: bytes
    payload_length: int
    payload_crc32: int
    header_length: int = 0
    version: int = FORMAT_VERSION

    def pack(self) -> bytes:
        ctx = b""
        if self.context is not None:
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(self.context), allow_pickle=False)
            ctx = buf.getvalue()
        meta = json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode()
        out = _FIXED.pack(MAGIC, self.version, self.content_kind, self.context_kind, self.fingerprint,
                          self.num_examples, self.num_values, self.chunk, len(self.shape))
        out += struct.pack(f"<{len(self.shape)}I", *self.shape)
        out += struct.pack("<I", len(meta)) + meta + struct.pack("<I", len(ctx)) + ctx
        out += _TAIL.pack(self.content_sha256, self.payload_length, self.payload_crc32)
        return out + struct.pack("<I", zlib.crc32(out))


class _Reader:
    """Bounds-checked reads from a byte string: a short file is 'truncated', never an IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise InputError(f"the compressed file is truncated or corrupted: it ends inside the header ({what}; "
                             f"{len(self.data)} bytes)")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


def read_header(data: bytes) -> tuple[Header, bytes]:
    """Parse and check a compressed file's header (magic, version, CRC-32, lengths); returns the
    header and the payload. Raises :class:`InputError` on anything wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"compressed data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    r = _Reader(data)
    if data[:4] != MAGIC:
        raise InputError(f"not a chainrule compressed file (expected the magic bytes {MAGIC!r}, got {data[:4]!r})")
    magic, version, content, context, fp, n, k, chunk, rank = _FIXED.unpack(r.take(_FIXED.size, "fixed fields"))
    if version not in TABLE_BITS:
        raise InputError(f"compressed file format version {version}; this chainrule reads versions "
                         f"{', '.join(map(str, TABLE_BITS))}" + (" (upgrade chainrule)" if version > FORMAT_VERSION else ""))
    if rank > MAX_RANK:
        raise InputError(f"the compressed file is corrupted: an event shape of rank {rank} (at most {MAX_RANK})")
    shape = struct.unpack(f"<{rank}I", r.take(4 * rank, "event shape"))
    (m,) = struct.unpack("<I", r.take(4, "metadata length"))
    meta_raw = r.take(m, "metadata")
    (lc,) = struct.unpack("<I", r.take(4, "context length"))
    ctx_raw = r.take(lc, "context")
    sha, plen, pcrc = _TAIL.unpack(r.take(_TAIL.size, "checksums and payload length"))
    end = r.pos
    (crc,) = struct.unpack("<I", r.take(4, "header CRC-32"))
    if zlib.crc32(data[:end]) != crc:
        raise InputError("the compressed file is corrupted: its header fails the CRC-32 check")
    if content not in (CONTENT_ARRAY, CONTENT_TEXT) or context not in (CONTEXT_NONE, CONTEXT_LABELS, CONTEXT_TENSOR):
        raise InputError(f"the compressed file has an unknown content kind {content} or context kind {context}")
    try:
        meta = json.loads(meta_raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"the compressed file's header cannot be read ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"the compressed file is corrupted: its metadata is a JSON {type(meta).__name__}, "
                         "not an object")
    ctx = None
    if lc:
        from chainrule.data.formats import npy_header

        # the context's .npy header is checked against its bytes before numpy allocates what it declares
        ctx_shape, ctx_dtype = npy_header(io.BytesIO(ctx_raw), lc, "the compressed file's context", InputError)
        if ctx_dtype.kind not in "biuf" or not ctx_shape or ctx_shape[0] != n:
            raise InputError(f"the compressed file is corrupted: its context is {ctx_dtype} of shape {ctx_shape} "
                             f"(expected numbers, one row per example of the {n})")
        try:
            ctx = np.load(io.BytesIO(ctx_raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"the compressed file's header cannot be read ({exc})") from None
    payload = data[r.pos:]
    if len(payload) != plen:
        what = "truncated" if len(payload) < plen else "followed by extra bytes"
        raise InputError(f"the compressed file is {what}: the header announces a payload of {plen} bytes, "
                         f"{len(payload)} follow it")
    if plen % 4:
        raise InputError(f"the compressed file is corrupted: a payload of {plen} bytes is not a whole number of 32-bit words")
    _check_claims(n, k, shape, plen, TABLE_BITS[version])
    head = Header(content, context, fp, n, k, chunk, tuple(shape), meta, ctx, sha, plen, pcrc, r.pos, version)
    return head, payload


def _min_bits(k: int, bits: int) -> float:
    """The fewest bits one symbol of K values can cost with ``bits``-bit tables: every value has a
    frequency of at least 1, so the likeliest has at most ``2**bits - (K - 1)``."""
    return -math.log2(1 - (k - 1) / (1 << bits)) if k >= 2 else 0.0


def _check_claims(n: int, k: int, shape: Sequence[int], plen: int, bits: int) -> None:
    """The header's counts checked against the payload's size and this machine's memory, before
    anything is allocated or decoded: a file of a few hundred bytes that claims millions of
    examples is refused at once (never a gigabyte allocation or an hour of decoding)."""
    from chainrule.data.formats import memory_bytes

    if not 1 <= k <= MAX_NUM_VALUES:
        raise InputError(f"the compressed file is corrupted: K={k} values (expected 1..{MAX_NUM_VALUES})")
    d = math.prod(shape)
    symbols = n * d
    if symbols and _min_bits(k, bits) * symbols > 8 * plen + PAYLOAD_SLACK_BITS:
        raise InputError(f"the compressed file is corrupted or forged: it claims {n} examples of {d} values, which "
                         f"cannot fit in a payload of {plen} bytes")
    memory = memory_bytes()
    if memory is not None and symbols * 8 > memory:
        raise InputError(f"the compressed file claims {n} examples of {d} values ({symbols * 8 / 1e9:.3g} GB "
                         f"decoded), more than this machine's memory ({memory / 1e9:.3g} GB)")


def _check_model(head: Header, model: ARModel) -> None:
    """The file must have been made by this very model: checked before anything is decoded."""
    fp = model_fingerprint(model)
    if fp != head.fingerprint:
        raise InputError(f"this file was compressed with a different model (hash {head.fingerprint.hex()[:16]}...); "
                         f"this model's hash is {fp.hex()[:16]}... (weights + config). Decompress with the run it "
                         "was compressed with")
    if tuple(head.shape) != tuple(model.shape) or head.num_values != model.num_values:  # only a forged hash gets here
        raise InputError(f"the file holds events of shape {head.shape} with K={head.num_values}; the model's are "
                         f"{tuple(model.shape)}, K={model.num_values}")
    if head.chunk < 1:
        raise InputError("the compressed file is corrupted: chunk size 0")


def coding_block_rows(model: ARModel) -> int:
    """Rows per block of the tables :func:`compress` aims at for ``model``: the architecture's
    ``coding_block_rows``, or :data:`~chainrule.inference.coding.BLOCK_ROWS`."""
    return int(getattr(model.base_model, "coding_block_rows", BLOCK_ROWS))


def coding_layout(model: ARModel, n: int, chunk: int | None = None) -> tuple[int, int]:
    """Examples per chunk and rows per block for coding ``n`` examples with ``model``.

    ``chunk`` None: at most ``max(CHUNK_EXAMPLES, R)`` (R: :func:`coding_block_rows`), the ``n``
    examples cut into equal chunks; blocks: at most R rows, a full chunk cut into equal blocks. So
    the padding of the last block stays small (10,000 digits with R = 4096: 3 chunks of 3,334, not
    4096 + 4096 + a block of 1808 padded to 4096)."""
    rows = coding_block_rows(model)
    if chunk is None:
        chunk = max(CHUNK_EXAMPLES, rows)
        if n:
            chunk = math.ceil(n / math.ceil(n / chunk))
    if not n:
        return chunk, 1
    size = min(chunk, n)
    return chunk, math.ceil(size / math.ceil(size / rows))


def _block_rows(head: Header) -> int:
    """The rows per block the file's tables were computed with (module docstring, "Blocks")."""
    if head.version < 3:
        return OLD_BLOCK_ROWS
    b = head.meta.get("block_rows")
    if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= max(head.chunk, 1):
        raise InputError(f"the compressed file is corrupted: block_rows {b!r} (expected an integer in 1..{head.chunk})")
    return b


# ---------------------------------------------------------------------- the coder
def _family() -> Any:
    import constriction

    # perfect=False: the lazy 'fast' quantization, the exact integer function of our tables (module docstring)
    return constriction.stream.model.Categorical(perfect=False)


#: Table entries buffered before the encoder is called (bounds the buffer at 8 bytes each: 16 MB).
_ENCODE_BATCH = 1 << 21


def _probabilities(freq: torch.Tensor, bits: int) -> np.ndarray:
    """Integer tables ``(n, K)`` as the float64 probabilities ``f / 2**bits`` (exact), C-contiguous."""
    return np.ascontiguousarray(freq.cpu().numpy().astype(np.float64) / float(1 << bits))


def _encode(model: ARModel, x: torch.Tensor, ctx: torch.Tensor | None, member: int | None, chunk: int,
            block: int, free: torch.Tensor | None = None, progress: bool = False) -> tuple[bytes, torch.Tensor, float]:
    """Range-code ``x`` ``(N, D)`` (long) into one stream. ``free`` ``(N, D)`` bool marks positions
    whose value the encoder may choose (padding): it takes the most probable symbol there.
    Returns the payload, the values coded ``(N, D)`` and their table cost in bits. ``progress``:
    a bar over the variables coded."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    family = _family()
    x = x.clone()
    bits = 0.0
    # the coder is fed whole blocks of steps at once (one call per ~_ENCODE_BATCH table entries):
    # the same symbols in the same order as one call per variable, so the same bits
    symbols: list[torch.Tensor] = []
    tables: list[torch.Tensor] = []
    held = 0

    def flush() -> None:
        nonlocal held, bits
        if symbols:  # converted to the coder's types once per batch, not once per variable
            sym = torch.cat(symbols).numpy().astype(np.int32)
            p = _probabilities(torch.cat(tables), PRECISION)
            enc.encode(sym, family, p)
            bits -= float(np.log2(p[np.arange(len(sym)), sym]).sum())  # the table cost (p = f / 2**PRECISION exactly)
            symbols.clear()
            tables.clear()
            held = 0

    bar = _bar(len(x), chunk, model.dim, "compressing", progress)
    for a in range(0, len(x), chunk):
        b = min(a + chunk, len(x))
        gen = frequency_tables(model, b - a, None if ctx is None else ctx[a:b], PRECISION, member=member,
                               block_rows=block, version=FORMAT_VERSION)
        xt = x[a:b].t().contiguous()  # (D, n): a variable's values are contiguous, not a strided column
        ft = None if free is None else free[a:b].t()
        j, freq = next(gen)
        while True:
            freq = freq.cpu()
            if ft is not None and bool(ft[j].any()):
                pick = ft[j]
                xt[j][pick] = freq[pick].argmax(1)
            vals = xt[j]
            symbols.append(vals)
            tables.append(freq)
            held += freq.numel()
            if held >= _ENCODE_BATCH:
                flush()
            bar.update(1)
            try:
                j, freq = gen.send(vals)
            except StopIteration:
                break
        if ft is not None:
            x[a:b] = xt.t()  # the padding chosen
    flush()
    bar.close()
    words = enc.get_compressed()
    return words.astype("<u4").tobytes(), x, bits


def _bar(n: int, chunk: int, dim: int, desc: str, progress: bool) -> Any:
    """A progress bar over the variables coded: ``dim`` per chunk of ``chunk`` examples (one table each)."""
    from tqdm.auto import tqdm

    return tqdm(total=math.ceil(n / chunk) * dim, desc=desc, unit="var", disable=not progress, leave=False)


def _decode(model: ARModel, payload: bytes, n: int, ctx: torch.Tensor | None, member: int | None, chunk: int,
            block: int, bits: int = PRECISION, progress: bool = False, full_pass: bool = False,
            version: int | None = None) -> torch.Tensor:
    """Decode ``n`` examples ``(n, D)`` long from a payload, in the order :func:`_encode` wrote them
    with ``bits``-bit tables (:data:`TABLE_BITS` of the file's format ``version``) on blocks of
    ``block`` rows."""
    import constriction

    if n == 0:
        return torch.zeros(n, model.dim, dtype=torch.long)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
    except Exception as exc:  # constriction raises plain ValueError / RuntimeError on bad data
        raise InputError(f"the compressed payload is corrupted ({exc})") from None
    family = _family()
    # A genuine stream decodes to at most its own length in information (plus the coder's final
    # state); a forged one (a header claiming more examples than were coded) decodes noise past its
    # end, whose information soon exceeds it: refused then, not after decoding (and allocating)
    # everything it claims.
    budget = 8.0 * len(payload) + PAYLOAD_SLACK_BITS
    info = 0.0  # -log2 p of the symbols decoded so far
    chunks = []  # allocated chunk by chunk, as they decode
    bar = _bar(n, chunk, model.dim, "decompressing", progress)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        out = torch.zeros(model.dim, b - a, dtype=torch.long)  # (D, n): a variable's values written contiguously
        rows = np.arange(b - a)
        gen = frequency_tables(model, b - a, None if ctx is None else ctx[a:b], bits, member=member,
                               block_rows=block, full_pass=full_pass, version=version)
        j, freq = next(gen)
        while True:
            probs = _probabilities(freq, bits)
            try:
                decoded = dec.decode(family, probs)
            except Exception as exc:
                raise InputError(f"the compressed payload is corrupted: decoding failed ({exc})") from None
            vals = torch.from_numpy(decoded.astype(np.int64))
            out[j] = vals
            info -= float(np.log2(probs[rows, decoded]).sum())
            if info > budget:
                raise InputError(f"the compressed file is corrupted or forged: its {len(payload)}-byte payload "
                                 f"decodes to more information ({info / 8:.0f} bytes) than it holds (the header "
                                 f"claims {n} examples)")
            bar.update(1)
            try:
                j, freq = gen.send(vals)
            except StopIteration:
                break
        chunks.append(out.t())
    bar.close()
    return torch.cat(chunks)


def _content_hash_values(x: torch.Tensor) -> bytes:
    return hashlib.sha256(x.detach().cpu().long().contiguous().numpy().astype("<i8").tobytes()).digest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        cv = version("constriction")
    except PackageNotFoundError:  # pragma: no cover
        cv = "?"
    return {"chainrule": __version__, "torch": torch.__version__, "constriction": cv}


def _context_header(model: ARModel, context: Any, n: int) -> tuple[int, np.ndarray | None, torch.Tensor | None]:
    """The context checked for ``n`` examples, as stored in the header and as given to the model."""
    if n == 0:  # nothing is coded: no context to keep
        return CONTEXT_NONE, None, None
    c = model.normalize_context(context, n)
    if c is None:
        return CONTEXT_NONE, None, None
    c = c.detach().cpu()
    return (CONTEXT_LABELS if model.num_classes else CONTEXT_TENSOR), c.numpy(), c


def _header_context(head: Header, model: ARModel) -> torch.Tensor | None:
    if head.context is None:
        if model.conditional and head.num_examples:
            raise InputError("the compressed file holds no context but the model is conditional")
        return None
    return torch.from_numpy(np.array(head.context))


@dataclass
class _Coded:
    data: bytes
    header: Header
    values: torch.Tensor  # (N, D) the values coded (text: with the padding chosen)
    table_bits: float  # sum of -log2(f / 2^PRECISION) of the coded symbols
    context: torch.Tensor | None


def _check_member(model: ARModel, member: Any) -> None:
    """``member`` (the ensemble member to code with) is None, or a member of an ensemble."""
    if member is None:
        return
    members = getattr(model, "num_members", 1)
    if members == 1:
        raise InputError(f"member {member}: {model.name} is a single model, not an ensemble (give no member)")
    if not isinstance(member, int) or isinstance(member, bool) or not 0 <= member < members:
        raise InputError(f"member must be an integer in 0..{members - 1} (the ensemble's members), got {member!r}")


def _compress_values(model: ARModel, x: torch.Tensor, context: Any, member: int | None, content_kind: int,
                     meta: dict[str, Any], content_sha: bytes | None = None, free: torch.Tensor | None = None,
                     chunk: int | None = None, progress: bool = False) -> _Coded:
    if not model.head.discrete:
        raise InputError(f"{model.name}: compression needs a discrete model (num_values=K); this one is real-valued")
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise InputError(f"chunk must be a positive integer, got {chunk!r}")
    _check_member(model, member)
    flat = x.reshape(len(x), model.dim).cpu().long()
    n = len(flat)
    kind, ctx_np, ctx = _context_header(model, context, n)
    chunk, block = coding_layout(model, n, chunk)
    if n:
        payload, coded, bits = _encode(model, flat, ctx, member, chunk, block, free, progress)
    else:
        payload, coded, bits = b"", flat, 0.0
    head = Header(content_kind, kind, model_fingerprint(model), n, int(model.num_values), chunk,
                  tuple(model.shape), {**meta, "block_rows": block, "member": member, **_versions()}, ctx_np,
                  content_sha if content_sha is not None else _content_hash_values(coded), len(payload),
                  zlib.crc32(payload), version=FORMAT_VERSION)
    return _Coded(head.pack() + payload, head, coded, bits, ctx)


def _decompress_values(model: ARModel, data: bytes, progress: bool = False) -> tuple[Header, torch.Tensor, torch.Tensor | None]:
    """Header checks (model first), then the decoded values ``(N, *shape)`` long and the context."""
    head, payload = read_header(data)
    _check_model(head, model)
    try:
        _check_member(model, head.meta.get("member"))
    except InputError as exc:
        raise InputError(f"the compressed file is corrupted: its {exc}") from None
    block = _block_rows(head)
    if zlib.crc32(payload) != head.payload_crc32:
        raise InputError("the compressed file is corrupted: its payload fails the CRC-32 check")
    ctx = _header_context(head, model)
    full_pass = head.version < getattr(model.base_model, "coding_step_since", 1)  # coded before the cache
    values = _decode(model, payload, head.num_examples, ctx, head.meta.get("member"), head.chunk,
                     block, TABLE_BITS[head.version], progress, full_pass, head.version)
    return head, values.reshape(head.num_examples, *model.shape), ctx


def _mismatch(head: Header) -> InputError:
    v = head.meta
    return InputError("the decompressed content fails its SHA-256 check: the file is corrupted (or was made by "
                      f"chainrule {v.get('chainrule', '?')} / torch {v.get('torch', '?')}, whose tables may differ "
                      f"from this chainrule {__version__} / torch {torch.__version__})")


# ---------------------------------------------------------------------- the API: arrays
def compress(model: ARModel, x: Any, context: Any = None, *, member: int | None = None,
             chunk: int | None = None) -> bytes:
    """Compress ``x`` ``(N, *shape)`` (or one example ``shape``) of values in 0..K-1 into a
    self-describing byte string (module docstring: the layout).

    ``context``: the class labels ``(N,)`` (or one int) / context tensor of a conditional model,
    stored in the header. ``member``: the member to code with when the model is an ensemble.
    """
    xv, batch = model.validate(x)
    meta = {"dtype": _dtype_str(x), "single": len(batch) == 0}
    return _compress_values(model, xv, context, member, CONTENT_ARRAY, meta, chunk=chunk).data


def decompress(model: ARModel, data: bytes, context: Any = None) -> torch.Tensor:
    """Decode bytes from :func:`compress` with the same model: ``(N, *shape)`` long (on the CPU).

    The context is read from the header; a ``context`` given here must equal it. Raises
    :class:`InputError` for another model's file (before decoding), a truncated or corrupted file,
    or a text file (use :func:`decompress_text`).
    """
    head, values, ctx = _decompress_values(model, data)
    if head.content_kind != CONTENT_ARRAY:
        raise InputError("this file holds text: decompress it with decompress_text (or decompress_file)")
    if _content_hash_values(values) != head.content_sha256:
        raise _mismatch(head)
    if context is not None and head.num_examples:
        given = model.normalize_context(context, head.num_examples).cpu()
        if ctx is None or given.shape != ctx.shape or not torch.equal(given.to(ctx.dtype), ctx):
            raise InputError("the context given differs from the one stored in the file (which is the one used)")
    return values


# ---------------------------------------------------------------------- the API: text
def _tokenizer_sha(tokenizer: Any) -> str:
    return hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()


def _text_model(model: ARModel, tokenizer: Any) -> int:
    if tokenizer is None:
        raise InputError(f"{model.name}: text needs a model trained on text (a tokenizer in its checkpoint)")
    if len(model.shape) != 1:
        raise InputError(f"text needs a sequence model of shape (T,); this one has shape {tuple(model.shape)}")
    if model.conditional:
        raise InputError("text compression takes an unconditional sequence model")
    return model.shape[0]


def _tokens(tokenizer: Any, raw: bytes, k: int) -> list[int]:
    """Token ids of a file's bytes; refuses a tokenizer that cannot give the file back."""
    if tokenizer.kind == "byte":
        ids = list(raw)  # the bytes themselves: any file round-trips
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"the file is not UTF-8 text (byte {exc.start}); only a byte-level model "
                             "(--level byte) compresses arbitrary bytes") from None
        ids = tokenizer.encode(text)
        if tokenizer.decode(ids, skip_special=False) != text:
            raise InputError(f"this model's {tokenizer.kind} tokenizer does not give the text back "
                             "(decode(encode(text)) != text, e.g. characters outside its vocabulary or "
                             "normalized whitespace): it cannot compress it losslessly")
    if ids and max(ids) >= k:
        raise InputError(f"the tokenizer gives ids up to {max(ids)}, beyond the model's K={k} values")
    return ids


def _code_text(model: ARModel, raw: bytes, tokenizer: Any, member: int | None, progress: bool = False) -> tuple[_Coded, int]:
    """Tokenize, cut into windows of T tokens (the last padded: free positions) and code; returns
    the coded file and the true token count."""
    t = _text_model(model, tokenizer)
    ids = _tokens(tokenizer, raw, model.num_values)
    n = math.ceil(len(ids) / t)
    x = torch.zeros(n * t, dtype=torch.long)
    x[:len(ids)] = torch.tensor(ids, dtype=torch.long)
    free = torch.arange(n * t) >= len(ids)
    meta = {"tokens": len(ids), "tokenizer": tokenizer.kind, "tokenizer_sha256": _tokenizer_sha(tokenizer)}
    coded = _compress_values(model, x.reshape(n, t), None, member, CONTENT_TEXT, meta,
                             hashlib.sha256(raw).digest(), free.reshape(n, t), progress=progress)
    return coded, len(ids)


def compress_text(model: ARModel, text: bytes | str, tokenizer: Any, *, member: int | None = None) -> bytes:
    """Compress a text (the bytes of a file, or a ``str``, taken as UTF-8) with a sequence model
    ``shape=(T,)`` trained on text and its ``tokenizer``: windows of T tokens, the last one padded
    with the model's most probable tokens (module docstring)."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return _code_text(model, raw, tokenizer, member)[0].data


def decompress_text(model: ARModel, data: bytes, tokenizer: Any) -> bytes:
    """The exact bytes given to :func:`compress_text` (same model, same tokenizer)."""
    _text_model(model, tokenizer)
    head, values, _ = _decompress_values(model, data)
    return _text_of(head, values, tokenizer)


def _text_of(head: Header, values: torch.Tensor, tokenizer: Any) -> bytes:
    if head.content_kind != CONTENT_TEXT:
        raise InputError("this file holds an array, not text: use decompress (or decompress_file)")
    if tokenizer is None:
        raise InputError("this file holds text: decompressing it needs the model's tokenizer (a run trained on text)")
    if head.meta.get("tokenizer_sha256") != _tokenizer_sha(tokenizer):
        raise InputError(f"this file was tokenized with another tokenizer ({head.meta.get('tokenizer')}) than the "
                         "model's; decompress with the run it was compressed with")
    count = head.meta.get("tokens")
    if not isinstance(count, int) or not 0 <= count <= values.numel():
        raise InputError("the compressed file is corrupted: bad token count")
    ids = values.reshape(-1)[:count].tolist()
    raw = bytes(ids) if tokenizer.kind == "byte" else tokenizer.decode(ids, skip_special=False).encode("utf-8")
    if hashlib.sha256(raw).digest() != head.content_sha256:
        raise _mismatch(head)
    return raw


# ---------------------------------------------------------------------- files
@dataclass
class CompressionReport:
    """What :func:`compress_file` did: sizes in bytes, rates in bits per dimension (per coded value)."""

    output: Path
    source: str
    kind: str  # "array" or "text"
    num_examples: int
    dims: int  # values coded (N * D; text: windows * T, padding included)
    original_bytes: int
    original_what: str  # how original_bytes was measured
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    table_bits: float  # sum of -log2(f / 2^24) over the coded values (the ideal under the quantized tables)
    model_bits: float  # sum of -log2 p(x) from model.log_prob (the ideal code length)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_dim(self) -> float:
        return 8 * self.payload_bytes / max(self.dims, 1)

    @property
    def file_bits_per_dim(self) -> float:
        return 8 * self.file_bytes / max(self.dims, 1)

    @property
    def model_bits_per_dim(self) -> float:
        return self.model_bits / max(self.dims, 1)

    def lines(self) -> list[str]:
        """The report as lines: rates per dimension for arrays; for text per token of the file
        (``bits/char``, ``bits/byte``: the bits over the file's own tokens, ``extra["tokens"]``, the
        last window's padding costing what it costs), the unit text is compared in."""
        ratio = self.original_bytes / self.file_bytes if self.file_bytes else float("nan")
        over = 8 * self.payload_bytes - self.model_bits
        source = self.source if len(self.source) <= 100 else self.source[:97] + "..."
        unit, per = "dim", max(self.dims, 1)
        if self.kind == "text" and self.extra.get("tokens"):
            unit, per = self.extra.get("unit") or "token", self.extra["tokens"]
        return [
            f"{self.kind}: {self.num_examples} {'window(s)' if self.kind == 'text' else 'example(s)'} from {source}; "
            f"{self.dims} values coded",
            f"original: {self.original_bytes} bytes ({self.original_what})",
            f"compressed: {self.file_bytes} bytes = header {self.header_bytes} + payload {self.payload_bytes} "
            f"(ratio {ratio:.2f}) -> {self.output}",
            f"achieved: {8 * self.payload_bytes / per:.4f} bits/{unit} (payload), "
            f"{8 * self.file_bytes / per:.4f} bits/{unit} (whole file)",
            f"model -log2 p(x): {self.model_bits / per:.4f} bits/{unit} (the ideal code length, {self.model_bits:.1f} bits); "
            f"payload - ideal = {over:+.1f} bits; 24-bit tables: {self.table_bits / per:.4f} bits/{unit}",
        ]


def _dtype_str(x: Any, k: int | None = None) -> str:
    """The NumPy dtype string of an input (restored by :func:`decompress_file`). Values chainrule
    read itself (images, a dataset: ``k`` given, a tensor of int64 values) are recorded as the
    smallest unsigned type that holds K values (uint8 for binary or 8-bit images), not int64."""
    if isinstance(x, np.ndarray):
        return x.dtype.str
    if k is not None and isinstance(x, torch.Tensor) and x.dtype == torch.long:
        return smallest_dtype(k).str
    if isinstance(x, torch.Tensor) and x.dtype != torch.bfloat16:
        return torch.empty(0, dtype=x.dtype).numpy().dtype.str
    return "<i8"


def smallest_dtype(k: int) -> np.dtype:
    """The smallest unsigned NumPy integer type holding the values 0..K-1."""
    for t in (np.uint8, np.uint16, np.uint32):
        if k - 1 <= np.iinfo(t).max:
            return np.dtype(t)
    return np.dtype(np.int64)


def _stored_dtype(meta: dict[str, Any], k: int) -> np.dtype:
    """The dtype an array file records (int64 for files without one), checked: a boolean, integer or
    floating type that holds every value 0..K-1 exactly (a ``.npy`` of floats holding integers
    comes back as it was; a forged header's object / string / too-narrow types are refused, never
    written)."""
    name = meta.get("dtype", "<i8")
    try:
        dtype = np.dtype(name) if isinstance(name, str) and len(name) <= 8 else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.hasobject:
        raise InputError(f"the compressed file is corrupted: its dtype {str(name)[:40]!r} is not a boolean, integer or "
                         "floating NumPy type")
    if dtype.kind == "f":  # integers up to 2**(mantissa bits + 1) are exact
        high = 2 ** (np.finfo(dtype).nmant + 1)
    else:
        high = 1 if dtype.kind == "b" else int(np.iinfo(dtype).max)
    if k - 1 > high:
        raise InputError(f"the compressed file is corrupted: its dtype {dtype} cannot hold its K={k} values")
    return dtype


def _model_bits(model: ARModel, x: torch.Tensor, ctx: torch.Tensor | None, member: int | None, batch: int = 256) -> float:
    """Sum of -log2 p(x | c) over examples ``x`` ``(N, *shape)``, from the model's log_prob."""
    total = 0.0
    opts = {} if member is None or getattr(model, "num_members", 1) == 1 else {"member": member}
    with torch.inference_mode():
        for a in range(0, len(x), batch):
            c = None if ctx is None else ctx[a:a + batch].to(model.device)
            total += float(model.log_prob(x[a:a + batch].to(model.device), c, **opts).double().sum())
    return -total / math.log(2)


def read_array_input(model: ARModel, path: str | Path) -> tuple[torch.Tensor | np.ndarray, str]:
    """An input file or folder as values: a ``.npy`` array, image file(s) or a folder of images.
    Returns the array (as read, for its dtype) and a description."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and is_image_path(f))
        if not files:
            raise InputError(f"{p} is a folder without image files")
        return read_images(files, model.shape, model.num_values), f"{len(files)} image file(s) in {p}"
    if not p.is_file():
        raise InputError(f"{p} does not exist")
    if is_image_path(p):
        return read_images([p], model.shape, model.num_values), str(p)
    if p.suffix.lower() == ".npy":
        from chainrule.data import read_npy  # never unpickles; one-line errors

        return read_npy(p, InputError), str(p)
    raise InputError(f"{p}: not a .npy array or an image (and this model has no tokenizer, so not text)")


def compress_file(model: ARModel, source: str | Path | torch.Tensor | np.ndarray, output: str | Path,
                  context: Any = None, tokenizer: Any = None, *, member: int | None = None,
                  description: str | None = None, overwrite: bool = True, progress: bool = False) -> CompressionReport:
    """Compress ``source`` — a ``.npy`` file, image file(s) / a folder of images, a text file (with
    a text model's ``tokenizer``) or values already loaded — into ``output``; returns the report.

    Original size: text — the input file's bytes; arrays — ``N * D * ceil(log2 K) / 8`` (the values
    packed at ``ceil(log2 K)`` bits each), with the input file's size in the description.

    ``output`` follows :mod:`chainrule.io.outputs`: never the input itself, never a directory or
    inside a checkpoint, written atomically; an existing file is replaced only with ``overwrite``
    (the command line's ``--force``).
    """
    output = check_output(output, force=overwrite, inputs=[source] if isinstance(source, (str, Path)) else [],
                          option="OUTPUT")
    k = model.num_values
    _check_member(model, member)
    if k is None:
        raise InputError(f"{model.name}: compression needs a discrete model (num_values=K); this one is real-valued")
    is_text = (tokenizer is not None and isinstance(source, (str, Path)) and Path(source).is_file()
               and not is_image_path(source) and Path(source).suffix.lower() != ".npy")
    if is_text:
        raw = Path(source).read_bytes()
        coded, count = _code_text(model, raw, tokenizer, member, progress)
        original, what, kind = len(raw), f"the input file; {count} {tokenizer.kind} tokens", "text"
        src = description or str(source)
    else:
        if isinstance(source, (str, Path)):
            arr, src = read_array_input(model, source)
            file_size = Path(source).stat().st_size if Path(source).is_file() else None
        else:
            arr, src, file_size = source, "values given", None
        src = description or src
        xv, batch = model.validate(arr)
        meta = {"dtype": _dtype_str(arr, k), "single": len(batch) == 0}
        coded = _compress_values(model, xv, context, member, CONTENT_ARRAY, meta, progress=progress)
        original = math.ceil(xv.numel() * math.ceil(math.log2(k)) / 8)
        what = f"{xv.numel()} values x ceil(log2 {k}) = {math.ceil(math.log2(k))} bits"
        if file_size is not None:
            what += f"; the input file is {file_size} bytes"
        kind = "array"
    head = coded.header
    x_coded = coded.values.reshape(head.num_examples, *model.shape)
    model_bits = _model_bits(model, x_coded, coded.context, member) if head.num_examples else 0.0
    with output_file(output, force=overwrite) as tmp:
        tmp.write_bytes(coded.data)
    extra: dict[str, Any] = {}
    if is_text:  # the report's rates per token of the file (bits/char)
        from chainrule.inference.likelihood import token_unit

        extra = {"tokens": count, "unit": token_unit(tokenizer)}
    return CompressionReport(output, src, kind, head.num_examples, int(x_coded.numel()), original, what,
                             len(coded.data), len(coded.data) - head.payload_length,
                             head.payload_length, coded.table_bits, model_bits, extra)


def decompress_file(model: ARModel, source: str | Path, output: str | Path, tokenizer: Any = None, *,
                    overwrite: bool = True, progress: bool = False) -> list[Path]:
    """Decompress the file ``source`` with ``model`` into ``output``: the text's exact bytes; an
    array as ``.npy`` (the input's dtype and shape) or, for an image model and an output ending in
    ``.png``, PNG file(s). Returns the paths written.

    Every output follows :mod:`chainrule.io.outputs` (checked before anything is decoded): never the
    input, a directory or inside a checkpoint; an existing file is replaced only with ``overwrite``."""
    source, output = Path(source), Path(output)
    check_output(output, force=overwrite, inputs=[source], option="OUTPUT")  # before reading: costs nothing
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {source} ({exc})") from None
    head, payload = read_header(data)
    _check_model(head, model)
    png = head.content_kind != CONTENT_TEXT and output.suffix.lower() == ".png"
    if head.content_kind == CONTENT_TEXT:
        outputs = [output]
    elif png:
        _png_shape(model)
        outputs = _png_paths(output, head.num_examples)
    else:
        dtype = _stored_dtype(head.meta, model.num_values)
        if output.suffix.lower() != ".npy":
            output = output.with_name(output.name + ".npy")
        outputs = [output]
    for p in outputs:
        check_output(p, force=overwrite, inputs=[source], option="OUTPUT")
    head, values, ctx = _decompress_values(model, data, progress)
    if head.content_kind == CONTENT_TEXT:
        raw = _text_of(head, values, tokenizer)
        with output_file(output, force=overwrite) as tmp:
            tmp.write_bytes(raw)
        return [output]
    if _content_hash_values(values) != head.content_sha256:
        raise _mismatch(head)
    if png:
        return _write_pngs(values, outputs, model, overwrite)
    a = values.numpy().astype(dtype)
    if head.meta.get("single") and len(a) == 1:
        a = a[0]
    with output_file(output, force=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, a, allow_pickle=False)
    return [output]


def _png_shape(model: ARModel) -> tuple[int, ...]:
    shape = tuple(model.shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise InputError(f"PNG output needs an image model (shape (1 or 3, H, W)); this one has shape {shape}: "
                         "write a .npy instead")
    return shape


def _png_paths(output: Path, n: int) -> list[Path]:
    """``output`` for one image; ``OUTPUT-000.png``, ``OUTPUT-001.png``, ... for several."""
    return [output] if n == 1 else [output.with_name(f"{output.stem}-{i:03d}.png") for i in range(n)]


def _write_pngs(values: torch.Tensor, paths: list[Path], model: ARModel, overwrite: bool = True) -> list[Path]:
    """Images ``(N, C, H, W)`` in 0..K-1 as 8-bit PNGs (one per example) at ``paths``."""
    from PIL import Image

    shape, k = _png_shape(model), model.num_values
    v = values.numpy().astype(np.float64)
    v = v if k == 256 else v * 255.0 / (k - 1)
    img = np.rint(v).clip(0, 255).astype(np.uint8)
    for a, p in zip(img, paths):
        pic = Image.fromarray(a[0] if shape[0] == 1 else a.transpose(1, 2, 0))
        with output_file(p, force=overwrite) as tmp:
            pic.save(tmp, format="PNG")
    return paths


__all__: Sequence[str] = (
    "CHUNK_EXAMPLES", "CompressionReport", "FORMAT_VERSION", "Header", "MAGIC", "coding_block_rows", "coding_layout",
    "compress", "compress_file",
    "compress_text", "decompress", "decompress_file", "decompress_text", "model_fingerprint", "read_array_input",
    "read_header",
)
