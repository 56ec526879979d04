"""Colour image data: PNG folders (RGB and grey), (N, 3, H, W) arrays, and CIFAR-10 read from a
tiny fake copy of the official python batches (no real files, no network)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chainrule import data
from chainrule.cli.main import main as cli_main
from chainrule.data import CIFAR10_CLASS_NAMES, load_dataset
from chainrule.data.formats import _parse_cifar_batch, _parse_cifar_meta
from chainrule.errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
FAKE_PER_BATCH = {**{f"data_batch_{i}": 3 for i in range(1, 6)}, "test_batch": 4}  # 15 train, 4 test
FAKE_VAL_SIZE = 5  # stands for CIFAR10_VAL_SIZE: train 10, val 5


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAINRULE_DATA", raising=False)


def _md5(raw: bytes) -> str:
    return "md5:" + hashlib.md5(raw).hexdigest()


# --- a Python 2 pickle writer -----------------------------------------------------------------
# The real batches were written by Python 2's cPickle, protocol 2: Python 2 str as BINSTRING
# opcodes (bytes under encoding="bytes") and numpy arrays as numpy.core.multiarray._reconstruct.
# Python 3's pickle cannot write that (its bytes go through _codecs.encode, its numpy arrays name
# numpy._core), so the fake files are written opcode by opcode, as the real ones are.


def _py2_pickle(obj: object) -> bytes:
    def str2(s: bytes) -> bytes:  # a Python 2 str
        return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<I", len(s)) + s

    def save(o: object) -> bytes:
        if isinstance(o, bool) or o is None:
            raise TypeError(o)
        if isinstance(o, int):
            if 0 <= o < 256:
                return b"K" + bytes([o])
            if 0 <= o < 65536:
                return b"M" + struct.pack("<H", o)
            return b"J" + struct.pack("<i", o)
        if isinstance(o, bytes):
            return str2(o)
        if isinstance(o, list):
            return b"](" + b"".join(save(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(save(k) + save(v) for k, v in o.items()) + b"u"
        if isinstance(o, np.ndarray):
            assert o.dtype == np.uint8 and o.flags.c_contiguous
            shape = b"(" + b"".join(save(int(d)) for d in o.shape) + b"t"
            dtype = (
                b"cnumpy\ndtype\n" + str2(b"u1") + b"K\x00K\x01\x87R"
                + b"(K\x03" + str2(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            )
            return (
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + str2(b"b") + b"\x87R"
                + b"(K\x01" + shape + dtype + b"\x89" + str2(o.tobytes()) + b"tb"
            )
        raise TypeError(type(o))

    return b"\x80\x02" + save(obj) + b"."


def _fake_batches(seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """``{batch name: (images uint8 (n, 3, 32, 32), labels)}`` of the fake CIFAR-10."""
    rng = np.random.default_rng(seed)
    return {
        name: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).tolist())
        for name, n in FAKE_PER_BATCH.items()
    }


def _batch_pickle(images: np.ndarray, labels: list[int], name: str) -> bytes:
    n = len(images)
    return _py2_pickle({
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": images.reshape(n, 3072),  # 1024 red, 1024 green, 1024 blue per row
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    })


def _meta_pickle(names: tuple[str, ...] = CIFAR10_CLASS_NAMES) -> bytes:
    return _py2_pickle({b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in names], b"num_vis": 3072})


def _cifar_files(batches: dict, names: tuple[str, ...] = CIFAR10_CLASS_NAMES) -> dict[str, bytes]:
    files = {name: _batch_pickle(x, y, name) for name, (x, y) in batches.items()}
    files["batches.meta"] = _meta_pickle(names)
    return files


def _tar_gz(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return out.getvalue()


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """tmp_path/cifar10/cifar-10-python.tar.gz of the fake batches, its md5 in CHECKSUMS."""
    batches = _fake_batches()
    archive = _tar_gz(_cifar_files(batches))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.setitem(data.CHECKSUMS, "cifar10/cifar-10-python.tar.gz", _md5(archive))
    monkeypatch.setattr(data.registry, "CIFAR10_VAL_SIZE", FAKE_VAL_SIZE)
    return tmp_path, batches


def _expected(batches: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    full = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    full_y = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
    x, y = torch.from_numpy(full.astype(np.int64)), torch.from_numpy(full_y.astype(np.int64))
    test_x, test_y = batches["test_batch"]
    v = FAKE_VAL_SIZE
    return {
        "train": (x[:-v], y[:-v]),
        "val": (x[-v:], y[-v:]),
        "test": (torch.from_numpy(test_x.astype(np.int64)), torch.tensor(test_y)),
    }


# --- CIFAR-10 ---------------------------------------------------------------------------------


def test_fake_batch_is_a_genuine_python2_style_pickle() -> None:
    # The writer above must produce what the ordinary unpickler reads (trusted here: our own bytes).
    images, labels = _fake_batches()["data_batch_1"]
    batch = pickle.loads(_batch_pickle(images, labels, "b1"), encoding="bytes")
    assert np.array_equal(batch[b"data"], images.reshape(3, 3072)) and batch[b"labels"] == labels


def test_cifar10_round_trip_from_the_archive(fake_cifar: tuple[Path, dict]) -> None:
    root, batches = fake_cifar
    ds = load_dataset("cifar10", root)
    assert ds.shape == (3, 32, 32) and ds.num_values == 256 and ds.is_image
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 5, 4)
    assert ds.num_classes == 10 and ds.class_names == CIFAR10_CLASS_NAMES
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
    for split, (x, y) in _expected(batches).items():
        got_x, got_y = ds.split(split)
        assert got_x.dtype == torch.uint8 and torch.equal(got_x.long(), x.long()), split  # 8 bits a value
        assert torch.equal(got_y, y), split
    # Channel layout: the first 1024 values of a row are the red 32x32 image, row-major.
    row = batches["data_batch_1"][0].reshape(3, 3072)[0]
    assert torch.equal(ds.train[0, 0].long(), torch.from_numpy(row[:1024].reshape(32, 32).astype(np.int64)))
    assert torch.equal(ds.train[0, 2].long(), torch.from_numpy(row[2048:].reshape(32, 32).astype(np.int64)))


def test_cifar10_extracted_folder_with_and_without_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _fake_batches(seed=1)
    names = tuple(f"class{i}" for i in range(10))  # not the real names: they must come from batches.meta
    folder = tmp_path / "cifar-10-batches-py"  # directly in the data dir, as torchvision leaves it
    folder.mkdir()
    for name, raw in _cifar_files(batches, names).items():
        (folder / name).write_bytes(raw)
        monkeypatch.setitem(data.CHECKSUMS, f"cifar10/cifar-10-batches-py/{name}", _md5(raw))
    monkeypatch.setattr(data.registry, "CIFAR10_VAL_SIZE", FAKE_VAL_SIZE)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.class_names == names
    expected = _expected(batches)
    assert torch.equal(ds.test, expected["test"][0]) and torch.equal(ds.val_labels, expected["val"][1])
    (folder / "batches.meta").unlink()  # the folder can do without it: the known names
    assert load_dataset("cifar10", tmp_path).class_names == CIFAR10_CLASS_NAMES
    (folder / "data_batch_1").write_bytes(b"corrupt")  # every batch file is checked by md5
    with pytest.raises(DataError, match=r"md5 is .*delete it and download again"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_archive_checksum_is_md5(fake_cifar: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.CHECKSUMS["cifar10/cifar-10-python.tar.gz"].startswith("md5:")
    monkeypatch.setitem(data.CHECKSUMS, "cifar10/cifar-10-python.tar.gz", "md5:" + "0" * 32)
    with pytest.raises(DataError, match="md5 is [0-9a-f]{32}, expected " + "0" * 32):
        load_dataset("cifar10", fake_cifar[0])


def test_published_cifar10_md5() -> None:
    # the official page's md5 of the archive (https://www.cs.toronto.edu/~kriz/cifar.html)
    assert data.CHECKSUMS["cifar10/cifar-10-python.tar.gz"] == "md5:c58f30108f718f92721af3b95e74349a"
    assert data.MIRRORS["cifar10"][0] + "cifar-10-python.tar.gz" == CIFAR_URL
    assert data.CIFAR10_VAL_SIZE == 5000


def test_cifar10_missing_files_say_where_and_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network used without download=True")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10", tmp_path)
    message = str(excinfo.value)
    assert CIFAR_URL in message and "cifar-10-python.tar.gz" in message and "cifar-10-batches-py" in message
    assert str(tmp_path / "cifar10") in message and "--data-dir" in message and "CHAINRULE_DATA" in message
    (tmp_path / "cifar-10-batches-py").mkdir()  # an incomplete extraction is named
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError, match="lacks data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_download_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _tar_gz(_cifar_files(_fake_batches()))
    monkeypatch.setitem(data.CHECKSUMS, "cifar10/cifar-10-python.tar.gz", _md5(archive))
    monkeypatch.setattr(data.registry, "CIFAR10_VAL_SIZE", FAKE_VAL_SIZE)
    urls = []

    class Response(io.BytesIO):
        def __enter__(self) -> Response:
            return self

    def fake_urlopen(url: str, timeout: float) -> Response:
        urls.append(url)
        return Response(archive)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("cifar10", tmp_path, download=True)
    assert urls == [CIFAR_URL] and len(ds.test) == 4
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == archive


def test_cifar10_is_listed_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert "cifar10" in data.list_datasets()
    assert cli_main(["datasets"]) == 0
    assert any(line.startswith("cifar10 ") for line in capsys.readouterr().out.splitlines())


def test_python3_protocol2_batches_parse_too() -> None:
    # Re-pickled by Python 3 (numpy._core names, bytes via _codecs.encode): the same arrays.
    images, labels = _fake_batches()["test_batch"]
    raw = pickle.dumps({b"data": images.reshape(4, 3072), b"labels": labels}, protocol=2)
    x, y = _parse_cifar_batch(raw, "py3")
    assert np.array_equal(x, images) and y.tolist() == labels
    assert _parse_cifar_meta(pickle.dumps({"label_names": list("abcdefghij")}, protocol=2), "m") == tuple("abcdefghij")


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def test_restricted_unpickler_refuses_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(f"touch {marker}"), b"labels": [0]}, protocol=2)
    assert b"system" in evil  # the pickle does name os.system (posix.system)
    with pytest.raises(DataError, match=r"refused to load global (posix|nt|os)\.system"):
        _parse_cifar_batch(evil, "evil")
    assert not marker.exists()
    with pytest.raises(DataError, match=r"refused to load global builtins\.eval"):
        _parse_cifar_batch(pickle.dumps(_EvalReduce()), "evil")
    object_array = pickle.dumps({b"data": np.array([1, None], dtype=object), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match="only integer arrays"):
        _parse_cifar_batch(object_array, "evil")

    # The same refusal through load_dataset, the checksum matching the malicious file.
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in BATCHES:
        (folder / name).write_bytes(evil)
        monkeypatch.setitem(data.CHECKSUMS, f"cifar10/cifar-10-batches-py/{name}", _md5(evil))
    with pytest.raises(DataError, match="data_batch_1: not a valid CIFAR python batch"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


class _EvalReduce:
    def __reduce__(self) -> tuple:
        return eval, ("1 + 1",)


def test_bad_batches_are_data_errors() -> None:
    images, labels = _fake_batches()["test_batch"]
    with pytest.raises(DataError, match="4 labels for 3 images"):
        _parse_cifar_batch(_py2_pickle({b"data": images[:3].reshape(3, 3072), b"labels": labels}), "b")
    with pytest.raises(DataError, match="labels range over 0..10"):
        _parse_cifar_batch(_py2_pickle({b"data": images.reshape(4, 3072), b"labels": [0, 1, 2, 10]}), "b")
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        _parse_cifar_batch(_py2_pickle({b"data": images.reshape(4, 3, 1024), b"labels": labels}), "b")
    with pytest.raises(DataError, match="not a valid CIFAR python batch"):
        _parse_cifar_batch(_batch_pickle(images, labels, "b")[:-100], "b")  # truncated


# --- PNG folders ------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def test_png_folder_rgb_and_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)  # (N, H, W, C) as PIL holds them
    grey = rng.integers(0, 256, (10, 4, 6), dtype=np.uint8)
    for i in range(10):
        _png(tmp_path / "rgb" / f"{i:02d}.png", rgb[i])
        _png(tmp_path / "grey" / f"{i:02d}.png", grey[i])
    ds = load_dataset(str(tmp_path / "rgb"))
    assert ds.shape == (3, 4, 6) and ds.num_values == 256 and ds.is_image and ds.train_labels is None
    got = torch.cat([ds.train, ds.val, ds.test])
    want = torch.from_numpy(rgb.transpose(0, 3, 1, 2).astype(np.int64))
    # the split permutes the files; as a set, every image comes back exactly, as (C, H, W)
    assert sorted(map(tuple, got.flatten(1).tolist())) == sorted(map(tuple, want.flatten(1).tolist()))
    g = load_dataset(tmp_path / "grey")
    assert g.shape == (1, 4, 6) and g.num_values == 256
    assert sorted(torch.cat([g.train, g.val, g.test])[:, 0, 0, 0].tolist()) == sorted(grey[:, 0, 0].tolist())


def test_png_rgba_and_palette_become_rgb(tmp_path: Path) -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, np.uint8)], axis=2)
    for i in range(5):
        _png(tmp_path / "rgba" / f"{i}.png", rgba)
        _png(tmp_path / "pal" / f"{i}.png", rgb, mode="P")
    ds = load_dataset(tmp_path / "rgba")
    assert ds.shape == (3, 2, 3)  # alpha dropped
    assert torch.equal(ds.test[0], torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.int64)))
    assert load_dataset(tmp_path / "pal").shape == (3, 2, 3)


def test_png_class_subfolders(tmp_path: Path) -> None:
    for name, value, n in (("dog", 200, 6), ("cat", 50, 4)):  # dog written first: order is by name
        for i in range(n):
            _png(tmp_path / name / f"{i}.png", np.full((3, 3, 3), value, np.uint8))
    ds = load_dataset(tmp_path)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2 and ds.shape == (3, 3, 3)
    x = torch.cat([ds.train, ds.val, ds.test])
    y = torch.cat([ds.train_labels, ds.val_labels, ds.test_labels])
    assert torch.equal(x[:, 0, 0, 0], torch.where(y == 0, 50, 200))  # every label matches its image
    assert torch.bincount(y).tolist() == [4, 6]


def test_png_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .png files"):
        load_dataset(tmp_path)
    _png(tmp_path / "a.png", np.zeros((5, 7, 3), np.uint8))
    _png(tmp_path / "b.png", np.zeros((6, 7, 3), np.uint8))
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path)
    message = str(excinfo.value)
    assert "b.png" in message and "a.png" in message and "3x6x7" in message and "3x5x7" in message


# --- arrays -----------------------------------------------------------------------------------


def test_npy_rgb_images(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", x)
    ds = load_dataset(tmp_path / "rgb.npy")
    assert ds.shape == (3, 4, 5) and ds.num_values == 256 and ds.is_image
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 2, 2)
    np.save(tmp_path / "int.npy", (x % 10).astype(np.int64))
    small = load_dataset(tmp_path / "int.npy")
    assert small.shape == (3, 4, 5) and small.num_values == 10  # integers: K = max + 1, as before


def test_npy_channels_last_is_transposed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "chw.npy", x)
    np.save(tmp_path / "hwc.npy", x.transpose(0, 2, 3, 1))  # (N, H, W, 3)
    with caplog.at_level(logging.WARNING, logger="chainrule.data"):
        hwc = load_dataset(tmp_path / "hwc.npy")
    assert "channels-last" in caplog.text
    chw = load_dataset(tmp_path / "chw.npy")
    assert hwc.shape == (3, 4, 5) and hwc.is_image
    assert torch.equal(hwc.train, chw.train) and torch.equal(hwc.test, chw.test)  # same split, same pixels
