"""Runs of latent models (:mod:`chainrule.latent`): training a VQ-VAE run and caching its codes
(:mod:`chainrule.apps.vqvae`, re-exported here),
``compose`` (a VQ-VAE run + a prior run -> a latent run), and what the commands do with a latent
run: the bound, samples, the two-part code, completion and the inspection figure.

A VQ-VAE run (``chainrule train vqvae --dataset mnist --out runs/vq``) holds what every run holds
(``best/``, ``last/``, ``log.csv`` with the reconstruction NLL and the codebook usage per epoch,
``curve.png``, ``results.json``), ``reconstructions.png`` (test images above their
reconstructions) and ``codes/``: the code grids of the train, val and test splits, computed once
when training ends — the dataset ``latents:runs/vq`` of the prior's run.

The latent run (``chainrule compose runs/vq runs/prior --out runs/latent``) holds ``best/`` (one
``model.safetensors`` with both models' tensors and a ``config.json`` with both configs, so it
stands alone), ``results.json`` (the test split's bound and its two terms), ``samples.png`` and
``reconstructions.png``.

The two-part code (:func:`compress` / :func:`decompress`)
---------------------------------------------------------
Part 1 codes the encoder's grids z* with the prior (the ordinary range coder and frequency tables
of :mod:`chainrule.apps.compression`); part 2 codes the pixels under the decoder's p(x | z*),
every pixel's table computed from z* alone (known to the decoder once part 1 is decoded), on
blocks of exactly ``block_rows`` grids in one thread, so encoder and decoder meet the same tables
bit for bit. Its length is -log2 p(z*) - log2 p(x | z*) bits (the bound) plus the coder's
overhead (~32 bits of flush per part and the 24-bit quantization of the tables).

Container (all integers little-endian): magic ``b"CRZL"``, version uint16 (= 1), the latent
model's fingerprint (32 bytes, :func:`~chainrule.apps.compression.model_fingerprint`), metadata
length uint32 + UTF-8 JSON (N, shape, dtype, single, block_rows, chunk, versions), context length
uint32 + ``.npy`` (class labels, or empty), content SHA-256 (32; of the values as int64), the two
payload lengths (uint64 each), their CRC-32s (uint32 each), the CRC-32 of all of the above, then
the two payloads.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from chainrule.apps.compression import (
    FORMAT_VERSION as CODE_FORMAT_VERSION,
    PRECISION,
    TABLE_BITS,
    _decode,
    _encode,
    _family,
    _probabilities,
    _versions,
    coding_block_rows,
    model_fingerprint,
    read_array_input,
)
from chainrule.apps.pipeline import save_samples
from chainrule.apps.rundir import RunReplacement, check_run_dir, checkpoint_dir
from chainrule.apps.vqvae import (  # noqa: F401 - re-exported: the VQ-VAE run's pieces
    check_data_fits_vqvae,
    check_vqvae_hyperparameters,
    codebook_usage,
    fit_vqvae_run,
    reconstructions_figure,
    write_codes,
)
from chainrule.data import LATENTS_PREFIX, Dataset
from chainrule.distributions import quantize_logits
from chainrule.errors import DataError, InputError
from chainrule.inference.coding import single_thread
from chainrule.inference.sampling import default_generator
from chainrule.io.checkpoint import atomic_write, read_config
from chainrule.io.outputs import check_output, output_file
from chainrule.latent import VQVAE, LatentModel, is_latent_checkpoint
from chainrule.latent import load as load_latent
from chainrule.models import load as load_model
from chainrule.training import TrainConfig

MAGIC = b"CRZL"
FORMAT_VERSION = 1
_TAIL = struct.Struct("<32sQQII")


# ---------------------------------------------------------------------- training a VQ-VAE run
def train_vqvae_run(ds: Dataset, out: str | Path, hyperparameters: dict[str, Any] | None = None,
                    config: TrainConfig | None = None, extra: dict[str, Any] | None = None, progress: bool = True,
                    resume: bool = False, device: str | torch.device | None = None,
                    report: Callable[[str], None] = print, force: bool = False) -> dict[str, Any]:
    """Train a VQ-VAE on ``ds`` into the run directory ``out``: the run pipeline
    (:func:`chainrule.apps.pipeline.train_run`, which checks the run once) with the model
    ``"vqvae"``; see :func:`fit_vqvae_run` for what it writes. Returns the summary."""
    from chainrule.apps.pipeline import TrainSpec, train_run

    return train_run(TrainSpec(model="vqvae", dataset=ds, out=out, hyperparameters=dict(hyperparameters or {}),
                               config=config or TrainConfig(), extra=dict(extra or {}), progress=progress,
                               resume=resume, device=device, report=report, force=force))


# ---------------------------------------------------------------------- compose
def compose(vq_run: str | Path, prior_run: str | Path, out: str | Path, force: bool = False,
            report: Callable[[str], None] = print, eval_batch_size: int = 256) -> dict[str, Any]:
    """Write the latent run ``out``: the VQ-VAE of ``vq_run`` under the prior of ``prior_run``
    (which must model that VQ-VAE's codes); evaluates the bound on the test split and draws samples."""
    vq_dir, prior_dir, out = checkpoint_dir(vq_run), checkpoint_dir(prior_run), Path(out)
    if is_latent_checkpoint(vq_dir) != "vqvae":
        raise InputError(f"{vq_run} is not a VQ-VAE run (train one with `chainrule train vqvae --dataset ...`)")
    if is_latent_checkpoint(prior_dir) is not None:
        raise InputError(f"{prior_run} is not a prior run: give the run of a chainrule model trained on "
                         f"--dataset {LATENTS_PREFIX}{vq_run}")
    check_run_dir(out, force=force)
    vq = load_latent(vq_dir)
    prior = load_model(prior_dir)
    model = LatentModel(vq, prior)  # checks the shapes and K
    vq_cfg, prior_cfg = read_config(vq_dir), read_config(prior_dir)
    trained_on = str(prior_cfg.get("extra", {}).get("dataset", ""))
    if trained_on.startswith(LATENTS_PREFIX) and Path(trained_on[len(LATENTS_PREFIX):]).resolve() != \
            Path(vq_run).resolve():
        report(f"warning: the prior was trained on {trained_on}, not on {LATENTS_PREFIX}{vq_run}")
    ve = vq_cfg.get("extra", {})
    conditional = bool(prior_cfg.get("extra", {}).get("conditional")) and model.conditional
    extra = {k: ve.get(k) for k in ("dataset", "binarize", "dequantize", "data_seed", "data_dir", "data_num_values",
                                    "class_names")}
    extra.update(vqvae_run=str(Path(vq_run).resolve()), prior_run=str(Path(prior_run).resolve()),
                 conditional=conditional, composed=True)
    # a previous run (--force) is moved aside and removed once the new checkpoint is written
    replacement = RunReplacement(out, force, created=not out.exists())
    replacement.begin(report)
    with replacement.writing():
        model.save(out / "best", extra)
    from chainrule.apps.pipeline import dataset_of

    ds = dataset_of(out / "best")
    test, labels = ds.split("test")
    terms = bound_of(model, test, labels if conditional else None, eval_batch_size)
    for line in describe_bound("test", terms):
        report(line)
    samples = model.sample(64, _labels(model, 64) if conditional else None, generator=default_generator(model.vqvae, 0))
    save_samples(samples, out / "samples.png", model.num_values, True)
    reconstructions_figure(vq, test, out / "reconstructions.png")
    summary = {"model": "latent", "dataset": ds.name, "vqvae_run": extra["vqvae_run"], "prior_run": extra["prior_run"],
               "prior": prior_cfg.get("model"), "parameters": model.num_parameters(), "conditional": conditional,
               "test_bound": terms}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    report(f"wrote {out / 'best'}, {out / 'results.json'}, {out / 'samples.png'}, {out / 'reconstructions.png'}")
    return summary


def _labels(model: LatentModel, n: int) -> torch.Tensor | None:
    return torch.arange(n) % model.num_classes if model.num_classes else None


# ---------------------------------------------------------------------- the bound
def bound_of(model: LatentModel, x: Any, context: Any = None, batch_size: int = 256) -> dict[str, Any]:
    """The upper bound -log p(z*) - log p(x | z*) on -log p(x) over ``x`` ``(N, C, H, W)``: its mean
    and its two terms, nats per example and bits/dim, and the test codes' usage."""
    prior_nll, recon_nll = model.bound_terms(x, context, batch_size)
    bound = prior_nll + recon_nll
    bits = model.dim * math.log(2)
    return {"nll_upper_bound_nats": float(bound.mean()), "bits_per_dim_upper_bound": float(bound.mean()) / bits,
            "prior_nll_nats": float(prior_nll.mean()), "prior_bits_per_dim": float(prior_nll.mean()) / bits,
            "reconstruction_nll_nats": float(recon_nll.mean()), "reconstruction_bits_per_dim": float(recon_nll.mean()) / bits,
            "num_examples": len(bound), "dim": model.dim, "is_upper_bound": True}


def describe_bound(split: str, t: dict[str, Any]) -> list[str]:
    """The lines a person reads: the bound first, labelled as one, then its two terms."""
    return [f"{split}: NLL upper bound (-log p(z*) - log p(x|z*) >= -log p(x); not the exact NLL): "
            f"{t['nll_upper_bound_nats']:.4f} nats/example | {t['bits_per_dim_upper_bound']:.4f} bits/dim | "
            f"{t['num_examples']} examples",
            f"{split}:   codes under the prior -log p(z*): {t['prior_nll_nats']:.4f} nats/example "
            f"({t['prior_bits_per_dim']:.4f} bits/dim) + pixels given the codes -log p(x|z*): "
            f"{t['reconstruction_nll_nats']:.4f} nats/example ({t['reconstruction_bits_per_dim']:.4f} bits/dim)"]


# ---------------------------------------------------------------------- the two-part code
def _pixel_tables(vq: VQVAE, z: torch.Tensor, partial: torch.Tensor, channel: int) -> torch.Tensor:
    """The integer tables ``(B, H*W, K)`` of channel ``channel`` of every pixel given the codes
    ``(B, h, w)`` (a whole block) and the pixels' channels before it (``partial`` ``(B, H*W, C)``)."""
    with single_thread(), torch.inference_mode():
        dist = vq.decoder_distribution(z)
        return quantize_logits(dist.variable_logits(partial, channel), PRECISION)


def _code_pixels(vq: VQVAE, z: torch.Tensor, x: torch.Tensor | None, block: int, coder: Any) -> torch.Tensor:
    """Encode (``x`` given, ``coder`` a RangeEncoder) or decode (``x`` None, a RangeDecoder) the
    pixels of every example given its codes ``z`` ``(N, h, w)``, block by block (each block padded
    to ``block`` grids with copies of its first), channel by channel. Returns the pixels ``(N, H*W, C)``."""
    n, c = len(z), vq.shape[0]
    groups = vq.shape[1] * vq.shape[2]
    family = _family()
    out = torch.zeros(n, groups, c, dtype=torch.long)
    for a in range(0, n, block):
        rows = min(block, n - a)
        zb = z[a:a + rows]
        if rows < block:
            zb = torch.cat([zb, zb[:1].expand(block - rows, *zb.shape[1:])])
        partial = torch.zeros(block, groups, c, dtype=torch.long, device=vq.device)
        for s in range(c):
            freq = _pixel_tables(vq, zb.to(vq.device), partial, s)[:rows].reshape(rows * groups, -1).cpu()
            probs = _probabilities(freq, PRECISION)
            if x is not None:
                vals = x[a:a + rows, :, s].reshape(-1)
                coder.encode(vals.numpy().astype(np.int32), family, probs)
            else:
                try:
                    vals = torch.from_numpy(coder.decode(family, probs).astype(np.int64))
                except Exception as exc:  # constriction raises plain ValueError / RuntimeError on bad data
                    raise InputError(f"the compressed payload is corrupted: decoding failed ({exc})") from None
            out[a:a + rows, :, s] = vals.reshape(rows, groups)
            partial[:rows, :, s] = out[a:a + rows, :, s].to(partial.device)
    return out


def compress(model: LatentModel, x: Any, context: Any = None, *, block_rows: int = 64,
             chunk: int = 1024, dtype: str = "<i8", single: bool = False) -> tuple[bytes, dict[str, float]]:
    """The two-part code of images ``x`` ``(N, C, H, W)``; returns the file's bytes and the sizes
    (``code_bits``, ``pixel_bits``: the payloads; ``ideal_code_bits``, ``ideal_pixel_bits``: the
    bound's two terms in bits under the model's unquantized probabilities)."""
    import constriction

    vq, prior = model.vqvae, model.prior
    xv, _ = vq.validate(x)
    n = len(xv)
    if n == 0:
        raise InputError("nothing to compress: 0 examples")
    ctx = prior.normalize_context(context, n) if model.conditional else None
    if context is not None and not model.conditional:
        raise InputError("this latent model is unconditional: it takes no class labels")
    with torch.inference_mode():
        z = torch.cat([vq.encode(xv[a:a + 256]) for a in range(0, n, 256)]).cpu()
    block = max(1, min(block_rows, n))
    code_rows = max(1, min(coding_block_rows(prior), chunk, n))  # the prior's own block size (the file records it)
    code_payload, _, code_table_bits = _encode(prior, z.reshape(n, -1), None if ctx is None else ctx.cpu(), None,
                                               chunk, code_rows)
    enc = constriction.stream.queue.RangeEncoder()
    _code_pixels(vq, z, vq.pixel_groups(xv).cpu(), block, enc)
    pixel_payload = enc.get_compressed().astype("<u4").tobytes()
    ctx_raw = b""
    if ctx is not None:
        buf = io.BytesIO()
        np.save(buf, ctx.cpu().numpy(), allow_pickle=False)
        ctx_raw = buf.getvalue()
    meta = {"n": n, "shape": list(vq.shape), "dtype": dtype, "single": single, "block_rows": block, "chunk": chunk,
            "code_block_rows": code_rows, "code_format": CODE_FORMAT_VERSION, **_versions()}
    meta_raw = json.dumps(meta, sort_keys=True).encode()
    sha = hashlib.sha256(xv.cpu().long().contiguous().numpy().astype("<i8").tobytes()).digest()
    head = MAGIC + struct.pack("<H", FORMAT_VERSION) + model_fingerprint(model)
    head += struct.pack("<I", len(meta_raw)) + meta_raw + struct.pack("<I", len(ctx_raw)) + ctx_raw
    head += _TAIL.pack(sha, len(code_payload), len(pixel_payload), zlib.crc32(code_payload), zlib.crc32(pixel_payload))
    head += struct.pack("<I", zlib.crc32(head))
    prior_nll, recon_nll = model.bound_terms(xv, ctx)
    sizes = {"header_bytes": len(head), "code_bits": 8 * len(code_payload), "pixel_bits": 8 * len(pixel_payload),
             "ideal_code_bits": float(prior_nll.sum()) / math.log(2),
             "ideal_pixel_bits": float(recon_nll.sum()) / math.log(2), "num_examples": n, "dim": vq.dim}
    return head + code_payload + pixel_payload, sizes


def decompress(model: LatentModel, data: bytes) -> tuple[torch.Tensor, dict[str, Any]]:
    """Decode a two-part code written by :func:`compress` with the same latent model: the images
    ``(N, C, H, W)`` long (checked against the stored SHA-256) and the metadata."""
    import constriction

    data = bytes(data)
    if data[:4] != MAGIC:
        raise InputError(f"not a two-part code of a latent model (expected the magic bytes {MAGIC!r}, got {data[:4]!r})")
    try:
        pos = 4
        (version,) = struct.unpack_from("<H", data, pos)
        pos += 2
        fp = data[pos:pos + 32]
        pos += 32
        (m,) = struct.unpack_from("<I", data, pos)
        meta = json.loads(data[pos + 4:pos + 4 + m].decode())
        pos += 4 + m
        (lc,) = struct.unpack_from("<I", data, pos)
        ctx_raw = data[pos + 4:pos + 4 + lc]
        pos += 4 + lc
        sha, lcode, lpix, crc_code, crc_pix = _TAIL.unpack_from(data, pos)
        pos += _TAIL.size
        (crc,) = struct.unpack_from("<I", data, pos)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the compressed file is truncated or corrupted: its header cannot be read ({exc})") from None
    if version != FORMAT_VERSION:
        raise InputError(f"two-part code version {version}; this chainrule reads version {FORMAT_VERSION}")
    if zlib.crc32(data[:pos]) != crc:
        raise InputError("the compressed file is corrupted: its header fails the CRC-32 check")
    if fp != model_fingerprint(model):
        raise InputError("this file was compressed with a different latent model (weights + config); decompress it "
                         "with the run it was compressed with")
    pos += 4
    code_payload, pixel_payload = data[pos:pos + lcode], data[pos + lcode:pos + lcode + lpix]
    if len(data) != pos + lcode + lpix:
        raise InputError("the compressed file is truncated or followed by extra bytes")
    if zlib.crc32(code_payload) != crc_code or zlib.crc32(pixel_payload) != crc_pix:
        raise InputError("the compressed file is corrupted: a payload fails its CRC-32 check")
    n = int(meta["n"])
    ctx = torch.from_numpy(np.load(io.BytesIO(ctx_raw), allow_pickle=False)) if lc else None
    vq = model.vqvae
    # the codes' tables as the compressed-file format they were coded in (files without the key: 4)
    code_format = meta.get("code_format", 4)
    if code_format not in TABLE_BITS or isinstance(code_format, bool):
        raise InputError(f"the compressed file is corrupted: code format {str(code_format)[:20]!r} (this chainrule reads "
                         f"{', '.join(map(str, TABLE_BITS))})")
    full_pass = code_format < getattr(model.prior.base_model, "coding_step_since", 1)
    z = _decode(model.prior, code_payload, n, ctx, None, int(meta["chunk"]), int(meta["code_block_rows"]),
                TABLE_BITS[code_format], full_pass=full_pass, version=code_format)
    z = z.reshape(n, *vq.grid)
    words = np.frombuffer(pixel_payload, dtype="<u4").astype(np.uint32)
    dec = constriction.stream.queue.RangeDecoder(words)
    g = _code_pixels(vq, z, None, int(meta["block_rows"]), dec)
    x = vq.images_of_groups(g)
    if hashlib.sha256(x.contiguous().numpy().astype("<i8").tobytes()).digest() != sha:
        raise InputError("the decompressed content fails its SHA-256 check: the file is corrupted (or was made by "
                         "another chainrule / torch version, whose tables may differ)")
    return x, meta


def compress_file(model: LatentModel, source: Any, output: str | Path, context: Any = None,
                  description: str | None = None, *, overwrite: bool = True) -> list[str]:
    """Compress a ``.npy`` / image file(s) / values already loaded into ``output``; returns the report
    lines. ``output`` follows :mod:`chainrule.io.outputs` (checked before any work): never an input,
    a directory or inside a checkpoint; an existing file is replaced only with ``overwrite``."""
    output = Path(output)
    check_output(output, force=overwrite, inputs=[source] if isinstance(source, (str, Path)) else [], option="OUTPUT")
    if isinstance(source, (str, Path)):
        arr, src = read_array_input(model, source)
    else:
        arr, src = source, "values given"
    src = description or src
    dtype = arr.dtype.str if isinstance(arr, np.ndarray) else "<i8"
    xt = torch.as_tensor(np.asarray(arr)) if isinstance(arr, np.ndarray) else torch.as_tensor(arr)
    single = xt.dim() == len(model.shape)
    if single:
        xt = xt[None]
    data, s = compress(model, xt, context, dtype=dtype, single=single)
    with output_file(output, force=overwrite) as tmp:
        tmp.write_bytes(data)
    dims = s["num_examples"] * s["dim"]
    ideal = s["ideal_code_bits"] + s["ideal_pixel_bits"]
    payload = s["code_bits"] + s["pixel_bits"]
    k = model.num_values
    original = math.ceil(dims * math.ceil(math.log2(k)) / 8)
    return [f"array: {s['num_examples']} example(s) from {src}; {dims} values coded as a two-part code "
            "(codes with the prior, then pixels given the codes with the decoder)",
            f"original: {original} bytes ({dims} values x ceil(log2 {k}) bits)",
            f"compressed: {len(data)} bytes = header {s['header_bytes']} + codes {s['code_bits'] // 8} + pixels "
            f"{s['pixel_bits'] // 8} (ratio {original / len(data):.2f}) -> {output}",
            f"achieved: {payload / dims:.4f} bits/dim (payload), {8 * len(data) / dims:.4f} bits/dim (whole file)",
            f"the bound -log2 p(z*) - log2 p(x|z*): {ideal / dims:.4f} bits/dim ({ideal:.1f} bits: codes "
            f"{s['ideal_code_bits']:.1f} + pixels {s['ideal_pixel_bits']:.1f}); payload - bound = {payload - ideal:+.1f} bits"]


def decompress_file(model: LatentModel, source: str | Path, output: str | Path, *,
                    overwrite: bool = True) -> list[Path]:
    """Decode ``source`` into ``output``: ``.npy`` (the input's dtype and shape) or PNG file(s), by the
    output policy of :func:`chainrule.apps.compression.decompress_file` (checked before decoding)."""
    from chainrule.apps.compression import _png_paths, _stored_dtype, _write_pngs

    source, output = Path(source), Path(output)
    png = output.suffix.lower() == ".png"
    if not png and output.suffix.lower() != ".npy":
        output = output.with_name(output.name + ".npy")
    check_output(output, force=overwrite, inputs=[source], option="OUTPUT")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {source} ({exc})") from None
    x, meta = decompress(model, data)
    if png:
        paths = _png_paths(output, len(x))
        for p in paths:
            check_output(p, force=overwrite, inputs=[source], option="OUTPUT")
        return _write_pngs(x, paths, model, overwrite)
    a = x.numpy().astype(_stored_dtype(meta, model.num_values))  # a forged dtype is refused, never written
    if meta.get("single") and len(a) == 1:
        a = a[0]
    with output_file(output, force=overwrite) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, a, allow_pickle=False)
    return [output]


# ---------------------------------------------------------------------- completion and inspection
def complete(model: LatentModel, x: torch.Tensor, mask: torch.Tensor, num: int = 4, context: Any = None,
             generator: torch.Generator | None = None, temperature: float = 1.0) -> tuple[torch.Tensor, str]:
    """Complete images ``(N, C, H, W)`` whose observed pixels ``mask`` (same shape, or the event
    shape) are the top rows: the code rows whose pixels are all observed are encoded (from the
    observed pixels alone, the rest set to 0) and kept as the prior's prompt, the other codes are
    drawn from the prior, the decoder draws the pixels, and the observed pixels are kept as given.
    Returns ``(N * num, C, H, W)`` and a line saying what was conditioned on. Other masks: an
    InputError saying what a latent model cannot do."""
    vq = model.vqvae
    x, _ = vq.validate(x)
    m = torch.as_tensor(mask).bool()
    if m.shape == vq.shape:
        m = m.expand(len(x), *vq.shape)
    if tuple(m.shape) != tuple(x.shape):
        raise InputError(f"the mask must have the event shape {vq.shape} or one per input {tuple(x.shape)}")
    rows = m.all(1).all(2)  # (N, H): fully observed pixel rows
    f = vq.shape[1] // vq.grid[0]
    prefixes = set()
    for i in range(len(x)):
        r = int(rows[i].long().cumprod(0).sum())  # leading fully observed rows
        if not torch.equal(m[i], _top_rows(vq.shape, r)):
            raise InputError("a latent model completes masks that observe whole rows from the top (e.g. --mask "
                             "top-half): the prior reads codes in raster order, so observed pixels can only fix a "
                             "prefix of the code grid; scattered or lower observed pixels cannot condition it")
        prefixes.add(r // f)
    if len(prefixes) != 1:
        raise InputError("give the same top-rows mask for every input")
    code_rows = prefixes.pop()
    if code_rows == 0:
        raise InputError(f"the mask observes fewer than {f} full rows: no code row of the latent grid is observed, "
                         "so nothing can condition the prior (observe more rows from the top)")
    with torch.no_grad():
        z = vq.encode(x * m)  # hidden pixels set to 0: the codes never see them
        prompt = z[:, :code_rows].reshape(len(x), -1)
        prompt = prompt.repeat_interleave(num, 0)
        ctx = None if context is None else torch.as_tensor(context).reshape(-1).repeat_interleave(num, 0)
        zs = model.prior.sample(len(prompt), ctx, generator=generator, prompt=prompt, temperature=temperature)
        out = vq.decode(zs[:, 0], "sample", generator)
        keep = m.repeat_interleave(num, 0)
        out = torch.where(keep, x.repeat_interleave(num, 0), out)
    note = (f"latent completion: the first {code_rows} of {vq.grid[0]} code rows (pixel rows 0..{code_rows * f - 1}, "
            "encoded from the observed pixels) are the prior's prompt; the other codes are drawn from the prior and "
            "the pixels from the decoder; observed pixels are kept as given")
    return out, note


def _top_rows(shape: tuple[int, ...], r: int) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[:, :r] = True
    return m


def inspect_figure(model: VQVAE | LatentModel, x: torch.Tensor, out: Path, title: str = "",
                   context: Any = None) -> Path:
    """A PNG for one image ``(C, H, W)``: the image, its reconstruction (decoder mean), its code map
    (the code index of every cell), the per-pixel -log2 p(x | z*) and the terms of the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vq = model.vqvae if isinstance(model, LatentModel) else model
    xv, _ = vq.validate(x[None] if x.dim() == 3 else x)
    with torch.no_grad():
        z = vq.encode(xv)
        rec = vq.decode(z, "mean")
        per = -vq.decoder_distribution(z).log_prob_per_variable(vq.pixel_groups(xv)).sum(-1) / math.log(2)
        prior_nll = -model.prior.log_prob(z[:, None], context).sum() if isinstance(model, LatentModel) else None
    h, w = vq.shape[1:]
    recon_bits = float(per.sum())
    lines = [f"-log2 p(x|z*) = {recon_bits:.1f} bits"]
    if isinstance(model, LatentModel):
        prior_bits = float(prior_nll) / math.log(2)
        lines.insert(0, f"-log2 p(z*) = {prior_bits:.1f} bits")
        lines.append(f"bound: {prior_bits + recon_bits:.1f} bits = {(prior_bits + recon_bits) / vq.dim:.4f} bits/dim "
                     "(>= -log2 p(x))")
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))

    def show(ax: Any, img: torch.Tensor, what: str, **kw: Any) -> None:
        a = img.cpu().float()
        a = (a[0] if a.shape[0] == 1 else a.permute(1, 2, 0) / (vq.num_values - 1)).numpy()
        im = ax.imshow(a, **kw)
        ax.set_title(what, fontsize=9)
        ax.axis("off")
        return im

    show(axes[0], xv[0], "input", cmap="gray", vmin=0, vmax=vq.num_values - 1)
    show(axes[1], rec[0], "reconstruction (decoder mean)", cmap="gray", vmin=0, vmax=vq.num_values - 1)
    im = axes[2].imshow(z[0].cpu().numpy(), cmap="tab20", vmin=0, vmax=vq.codebook_size - 1)
    for (i, j), v in np.ndenumerate(z[0].cpu().numpy()):
        if vq.grid[0] * vq.grid[1] <= 64:
            axes[2].text(j, i, str(v), ha="center", va="center", fontsize=7)
    axes[2].set_title(f"code map {vq.grid[0]}x{vq.grid[1]} (K={vq.codebook_size})", fontsize=9)
    axes[2].axis("off")
    im = axes[3].imshow(per[0].reshape(h, w).cpu().numpy(), cmap="magma")
    axes[3].set_title("-log2 p(x_i | z*) per pixel (bits)", fontsize=9)
    axes[3].axis("off")
    fig.colorbar(im, ax=axes[3], fraction=0.046)
    fig.suptitle((title + "\n" if title else "") + " | ".join(lines), fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return out


def load_run_model(run: str | Path, device: str = "cpu") -> tuple[Path, VQVAE | LatentModel]:
    """The checkpoint directory and model of a VQ-VAE or latent run."""
    ckpt = checkpoint_dir(run)
    if is_latent_checkpoint(ckpt) is None:
        raise DataError(f"{run} is not a VQ-VAE or latent run")
    return ckpt, load_latent(ckpt, device)
