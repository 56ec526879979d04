"""How the values of the user's files are read (issue 12, "data read wrongly without a word"): K
inferred from the values present and said in one line, ``--num-values K`` / ``num_values=K``,
real-valued data only for models that take them, K read from the run by eval / score / compress,
and every malformed file a one-line error naming it. Each case through the API loader and the
command line (``chainrule.cli.main`` in-process, as the other CLI tests do)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import chainrule
from chainrule.apps.pipeline import check_data_fits_model
from chainrule.cli import main
from chainrule.data import ValueRangeError, load_dataset, summarize_values
from chainrule.errors import ChainruleError, DataError, InputError
from chainrule.io.checkpoint import read_config

N = 40  # examples per file: 32 / 4 / 4 after the fixed 80/10/10 split


def _pixels(seed: int = 0, n: int = N, shape: tuple[int, ...] = (1, 4, 4)) -> np.ndarray:
    """8-bit intensities 0..255 with both ends present."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)
    x.reshape(n, -1)[0, :2] = (0, 255)
    return x


def _save(path: Path, x: np.ndarray) -> Path:
    np.save(path, x)
    return path


def _train(capsys, data: Path, out: Path, *extra: str, model: str = "fvsbn") -> tuple[int, str, str]:
    """``chainrule train MODEL --dataset DATA`` for one epoch: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["train", model, "--dataset", str(data), "--epochs", "1", "--out", str(out), "--no-progress",
                 "--num-samples", "4", "--threads", "1", *extra])
    got = capsys.readouterr()
    return code, got.out, got.err


def _one_line_error(err: str) -> str:
    err = err.strip()
    assert err.startswith("chainrule: error: ") and "\n" not in err, err
    return err


# ---------------------------------------------------------------------- the three reported cases
def test_float_pixels_0_255_are_discrete_k256(tmp_path, capsys):
    """A float32 .npy of MNIST-like pixel values 0.0..255.0: discrete with K=256, not a Gaussian."""
    path = _save(tmp_path / "f.npy", _pixels().astype(np.float32))
    ds = load_dataset(path)
    assert ds.num_values == 256 and ds.train.dtype == torch.uint8
    assert ds.values.kind == "8-bit" and ds.values.integral_floats
    line = ds.values.line()
    assert line == ("data: float32 images, values 0..255, all integers -> discrete, K=256 (8-bit pixels); "
                    "override with --num-values K, or pass --dequantize if they are continuous")
    code, out, _ = _train(capsys, path, tmp_path / "run")
    assert code == 0 and line in out.splitlines() and "num_values 256" in out
    assert read_config(tmp_path / "run" / "best")["num_values"] == 256


def test_float_pixels_without_a_white_pixel_still_get_k256(tmp_path):
    """The 8-bit rule does not depend on the largest value seen (a split without 255 keeps K)."""
    x = np.minimum(_pixels().astype(np.float32), 250)
    assert load_dataset(_save(tmp_path / "f.npy", x)).num_values == 256
    flat = load_dataset(_save(tmp_path / "flat.npy", x.reshape(N, -1)))  # not images: the largest value + 1
    assert flat.num_values == 251 and flat.values.kind == "max+1"


def test_uint8_zero_one_images_are_binary(tmp_path, capsys):
    """A uint8 array of 0/1 values: K=2 (it was K=256: NLL 52.0 where K=2 gives 9.9)."""
    path = _save(tmp_path / "b.npy", (_pixels() > 127).astype(np.uint8))
    ds = load_dataset(path)
    assert ds.num_values == 2 and ds.values.kind == "binary"
    line = "data: uint8 values {0, 1} -> K=2 (binary); override with --num-values K"
    assert ds.values.line() == line
    code, out, _ = _train(capsys, path, tmp_path / "run")
    assert code == 0 and line in out.splitlines()
    assert read_config(tmp_path / "run" / "best")["num_values"] == 2


def test_float_data_for_fvsbn_is_refused_as_by_the_api(tmp_path, capsys):
    """Continuous floats given to fvsbn on the command line: an error, not a Gaussian FVSBN."""
    x = np.random.default_rng(0).normal(size=(N, 6)).astype(np.float32)
    path = _save(tmp_path / "g.npy", x)
    ds = load_dataset(path)
    assert ds.num_values is None and ds.values.kind == "real"
    # the API: a binary fvsbn (its class default, num_values=2) refuses the floats
    model = chainrule.create_model("fvsbn", ds.shape, 2)
    with pytest.raises(InputError, match="non-integer floats"):
        model.log_prob(ds.train)
    with pytest.raises(InputError, match=r"fvsbn is a discrete model by default \(num_values=2\)"):
        check_data_fits_model("fvsbn", ds)
    code, out, err = _train(capsys, path, tmp_path / "run")
    msg = _one_line_error(err)
    assert code == 2 and "fvsbn" in msg and "float32 values in [" in msg and "--num-values real" in msg and "rnade" in msg
    assert "data: float32 values in [" in out and "-> real-valued (K=None)" in out
    assert not (tmp_path / "run").exists()  # refused before anything is written
    # asked for explicitly, it is the Gaussian variant, as create_model("fvsbn", shape, None)
    code, out, _ = _train(capsys, path, tmp_path / "run", "--num-values", "real")
    assert code == 0 and read_config(tmp_path / "run" / "best")["num_values"] is None
    # a model that takes real values by default needs nothing
    code, _, _ = _train(capsys, path, tmp_path / "rnade", "-p", "hidden_size=4", model="rnade")
    assert code == 0


# ---------------------------------------------------------------------- the other rules
@pytest.mark.parametrize("x, k, kind", [
    (np.ones((N, 3), bool), 2, "binary"),
    (np.arange(N * 3).reshape(N, 3) % 17, 17, "max+1"),          # int64 0..16: K = 17
    (np.arange(N * 3).reshape(N, 3) % 2 * 1.0, 2, "binary"),      # float 0.0/1.0
    (_pixels() // 8, 256, "8-bit"),                               # uint8 images: the dtype's range
    ((_pixels() // 8).astype(np.int64), 32, "max+1"),             # 5-bit images in int64: 0..31
    (np.zeros((N, 1, 2, 2), np.int64), 2, "binary"),              # constant: still two values
    (np.full((N, 2), 70000, np.int64), 70001, "max+1"),           # many values: said in the line
])
def test_integer_rules(tmp_path, x, k, kind):
    ds = load_dataset(_save(tmp_path / "x.npy", x))
    assert ds.num_values == k and ds.values.kind == kind and f"K={k}" in ds.values.line()
    if k > 2**16:
        assert "is this really categorical data?" in ds.values.line()


def test_float_rounding_error_is_rounded_and_said(tmp_path):
    x = _pixels().astype(np.float32)
    f = np.float32
    # normalized the torchvision way and back, in float32: integers up to a few ulps
    noisy = (((x / f(255) - f(0.1307)) / f(0.3081)) * f(0.3081) + f(0.1307)) * f(255)
    assert not np.array_equal(noisy, np.rint(noisy))
    ds = load_dataset(_save(tmp_path / "x.npy", noisy))
    assert ds.num_values == 256 and ds.values.rounded > 0 and "float rounding" in ds.values.line()
    got = torch.cat([ds.train, ds.val, ds.test]).flatten().sort().values
    assert torch.equal(got, torch.from_numpy(np.sort(x.reshape(-1)).astype(np.int64)))  # rounded back exactly
    # near one integer only (tiny-scale continuous data): not rounded to a constant
    tiny = np.random.default_rng(0).normal(0, 1e-8, (N, 3))
    assert load_dataset(_save(tmp_path / "tiny.npy", tiny)).num_values is None


def test_grey_intensities_in_0_1(tmp_path, capsys):
    """Floats in [0, 1] that are not integers: real-valued, said to be intensities; --binarize
    threshold (x >= 0.5) or dynamic (Bernoulli(x)) makes them binary; image models need it."""
    x = _pixels().astype(np.float32) / 255
    path = _save(tmp_path / "grey.npy", x)
    ds = load_dataset(path)
    assert ds.num_values is None and ds.values.kind == "intensities"
    assert "read as grey intensities; --binarize threshold (x >= 0.5) or dynamic" in ds.values.line()
    thr = load_dataset(path, binarize="threshold")
    assert thr.num_values == 2 and set(thr.train.unique().tolist()) <= {0, 1}
    assert thr.values.line().endswith("then binarized (x >= 0.5) -> K=2")
    dyn = load_dataset(path, binarize="dynamic")
    assert dyn.num_values == 2 and dyn.train_transform is not None and dyn.train.dtype == torch.float32
    batch = dyn.train_transform(dyn.train[:8], torch.Generator().manual_seed(0))
    assert batch.dtype == torch.long and set(batch.unique().tolist()) <= {0, 1}
    code, _, err = _train(capsys, path, tmp_path / "p", "-p", "channels=4", "-p", "num_layers=1", model="pixelcnn")
    msg = _one_line_error(err)
    assert code == 2 and "pixelcnn models discrete data only" in msg and "--binarize threshold" in msg and "rnade" in msg
    code, out, _ = _train(capsys, path, tmp_path / "run", "--binarize", "threshold")
    assert code == 0 and "then binarized (x >= 0.5) -> K=2" in out
    code, out, _ = _train(capsys, path, tmp_path / "dyn", "--binarize", "dynamic")
    assert code == 0 and "dynamically binarized (Bernoulli(x) per batch)" in out
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "dyn"), "--split", "train", "--no-progress"]) == 0  # drawn once, seed 0


def test_binarize_refusals_say_why(tmp_path):
    with pytest.raises(DataError, match="binary already"):
        load_dataset(_save(tmp_path / "b.npy", np.ones((N, 3), np.uint8)), binarize="threshold")
    with pytest.raises(DataError, match="--num-values 256"):
        load_dataset(_save(tmp_path / "k.npy", np.arange(N * 3).reshape(N, 3) % 200), binarize="threshold")
    with pytest.raises(DataError, match=r"real values outside \[0, 1\]"):
        load_dataset(_save(tmp_path / "g.npy", np.linspace(-2, 2, N * 3).reshape(N, 3)), binarize="dynamic")


def test_discrete_data_for_a_real_valued_model(tmp_path, capsys):
    path = _save(tmp_path / "b.npy", (_pixels() > 127).astype(np.uint8))
    code, _, err = _train(capsys, path, tmp_path / "r", model="rnade")
    assert code == 2 and "rnade models real values only" in _one_line_error(err) and "--dequantize" in err
    code, _, err = _train(capsys, path, tmp_path / "f", "--num-values", "real")
    assert code == 2 and "--dequantize" in _one_line_error(err)
    code, out, _ = _train(capsys, path, tmp_path / "dq", "-p", "hidden_size=4", "--dequantize", model="rnade")
    assert code == 0 and "then dequantized ((x + u) / 2) -> real-valued" in out


# ---------------------------------------------------------------------- --num-values K
def test_num_values_override(tmp_path, capsys):
    x = np.arange(N * 3).reshape(N, 3) % 4  # values 0..3
    path = _save(tmp_path / "x.npy", x)
    assert load_dataset(path).num_values == 4
    ds = load_dataset(path, num_values=10)  # larger: allowed
    assert ds.num_values == 10 and ds.values.line() == "data: int64 values 0..3 -> K=10 (--num-values 10)"
    with pytest.raises(ValueRangeError, match="holds the value 3, but num_values=3") as info:
        load_dataset(path, num_values=3)
    assert info.value.value == 3 and "\n" not in str(info.value)
    with pytest.raises(DataError, match="integer >= 2"):
        load_dataset(path, num_values=1)
    with pytest.raises(ValueRangeError, match="is for discrete data"):
        load_dataset(_save(tmp_path / "g.npy", np.linspace(0, 3, N * 3).reshape(N, 3)), num_values=4)
    # registered datasets too: digits has 17 levels
    assert load_dataset("digits", num_values=256).num_values == 256
    with pytest.raises(ValueRangeError, match="holds the value 16"):
        load_dataset("digits", num_values=16)
    # the command line
    code, out, _ = _train(capsys, path, tmp_path / "run", "--num-values", "6")
    assert code == 0 and "-> K=6 (--num-values 6)" in out
    config = read_config(tmp_path / "run" / "best")
    assert config["num_values"] == 6 and config["extra"]["data_num_values"] == 6
    code, _, err = _train(capsys, path, tmp_path / "small", "--num-values", "3")
    assert code == 2 and "holds the value 3" in _one_line_error(err) and not (tmp_path / "small").exists()
    for bad in ("1", "abc", "2.5"):
        code, _, err = _train(capsys, path, tmp_path / "bad", "--num-values", bad)
        assert code == 2 and "--num-values must be an integer K >= 2" in _one_line_error(err)


def test_num_values_in_a_config_file(tmp_path, capsys):
    path = _save(tmp_path / "x.npy", np.arange(N * 3).reshape(N, 3) % 4)
    (tmp_path / "run.toml").write_text(f'model = "fvsbn"\ndataset = "{path}"\nnum-values = 8\nepochs = 1\n')
    capsys.readouterr()
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"), "--no-progress",
                 "--num-samples", "4"]) == 0
    assert read_config(tmp_path / "run" / "best")["num_values"] == 8
    assert "num-values = 8" in (tmp_path / "run" / "config.toml").read_text()


# ---------------------------------------------------------------------- K from the run
@pytest.fixture
def binary_run(tmp_path, capsys) -> Path:
    path = _save(tmp_path / "b.npy", (_pixels() > 127).astype(np.uint8))
    code, _, _ = _train(capsys, path, tmp_path / "run")
    assert code == 0
    return tmp_path / "run"


def test_eval_reads_k_from_the_run_and_refuses_larger_values(binary_run, tmp_path, capsys):
    # 0/1 data given as int64 images with a 2: the run's K=2 is applied, and the 2 is named
    other = (_pixels(1) > 127).astype(np.int64)
    other[0, 0, 0, 0] = 2
    path = _save(tmp_path / "other.npy", other)
    capsys.readouterr()
    assert main(["eval", str(binary_run), "--dataset", str(path), "--no-progress"]) == 2
    msg = _one_line_error(capsys.readouterr().err)
    assert "holds the value 2" in msg and "K=2" in msg and str(binary_run) in msg
    # real-valued data for a discrete run, and data of another shape
    _save(tmp_path / "grey.npy", _pixels(2).astype(np.float32) / 255)
    assert main(["eval", str(binary_run), "--dataset", str(tmp_path / "grey.npy"), "--no-progress"]) == 2
    assert "real-valued" in _one_line_error(capsys.readouterr().err)
    _save(tmp_path / "wide.npy", (_pixels(3, shape=(1, 4, 5)) > 127).astype(np.uint8))
    assert main(["eval", str(binary_run), "--dataset", str(tmp_path / "wide.npy"), "--no-progress"]) == 2
    assert "shape (1, 4, 5)" in _one_line_error(capsys.readouterr().err)
    # 0/1 data of another dtype fit: the run's K, whatever K they would infer alone
    _save(tmp_path / "float01.npy", (_pixels(4) > 127).astype(np.float64))
    assert main(["eval", str(binary_run), "--dataset", str(tmp_path / "float01.npy"), "--no-progress"]) == 0


def test_runs_written_before_data_num_values_read_k_from_the_model(binary_run, tmp_path, capsys):
    """Old runs do not record ``data_num_values``: the model's K is used, not one inferred anew."""
    for sub in ("best", "last"):
        cfg_path = binary_run / sub / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["extra"].pop("data_num_values")
        cfg_path.write_text(json.dumps(cfg))
    other = (_pixels(1) > 127).astype(np.int64) * 3  # values {0, 3}
    _save(tmp_path / "other.npy", other)
    capsys.readouterr()
    assert main(["eval", str(binary_run), "--dataset", str(tmp_path / "other.npy"), "--no-progress"]) == 2
    assert "holds the value 3" in _one_line_error(capsys.readouterr().err)


def test_score_and_compress_read_k_from_the_run(binary_run, tmp_path, capsys):
    x = (_pixels(5, n=6) > 127).astype(np.int64)
    x[0, 0, 0, 0] = 7
    _save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["score", str(binary_run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "s.csv")]) == 2
    assert "0..1" in _one_line_error(capsys.readouterr().err)
    assert main(["compress", str(binary_run), str(tmp_path / "x.npy"), str(tmp_path / "x.crz")]) == 2
    assert "0..1" in _one_line_error(capsys.readouterr().err)
    x[0, 0, 0, 0] = 1  # in range: compressed and back, exactly
    _save(tmp_path / "ok.npy", x.astype(np.float32))  # floats holding integers are accepted, as by validate
    assert main(["compress", str(binary_run), str(tmp_path / "ok.npy"), str(tmp_path / "ok.crz")]) == 0
    assert main(["decompress", str(binary_run), str(tmp_path / "ok.crz"), str(tmp_path / "back.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "back.npy"), x)


def test_commands_reading_npy_inputs_never_unpickle(binary_run, tmp_path, capsys):
    """score / compress / complete take .npy inputs directly: the same refusals as the loader."""
    marker = tmp_path / "UNPICKLED"
    np.save(tmp_path / "obj.npy", np.array([_Marker(str(marker))] * 4, dtype=object), allow_pickle=True)
    (tmp_path / "empty.npy").write_bytes(b"")
    for src, expect in (("obj.npy", "never loaded"), ("empty.npy", "empty (0 bytes)")):
        path = str(tmp_path / src)
        for argv in (["score", str(binary_run), path, "--out", str(tmp_path / "s.csv")],
                     ["compress", str(binary_run), path, str(tmp_path / "x.crz")],
                     ["complete", str(binary_run), "--input", path, "--mask", "top-half"],
                     ["complete", str(binary_run), "--input", str(tmp_path / "b.npy"), "--mask", path]):
            capsys.readouterr()
            assert main(argv) == 2, argv
            msg = _one_line_error(capsys.readouterr().err)
            assert expect in msg and src in msg and "allow_pickle" not in msg, (argv, msg)
    assert not marker.exists()


# ---------------------------------------------------------------------- malformed files
class _Marker:
    """Unpickling this creates a file: proof that a pickle was (never) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must say)."""
    marker = str(tmp / "UNPICKLED")
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, x: np.ndarray | None, expect: str, raw: bytes | None = None, **kw) -> None:
        path = tmp / name
        if raw is not None:
            path.write_bytes(raw)
        elif name.endswith(".npz"):
            np.savez(path, **kw)
        else:
            np.save(path, x, allow_pickle=True)
        files[name] = (path, expect)

    add("empty.npy", None, "empty (0 bytes)", raw=b"")
    add("zero.npy", np.zeros((0, 4)), "empty")
    add("scalar.npy", np.array(3.0), "0-d array")
    add("nan.npy", np.array([[0.5, np.nan]] * N), "NaN")
    add("inf.npy", np.array([[0.5, np.inf]] * N), "infinite")
    add("negative.npy", -np.ones((N, 2), np.int64), "negative")
    add("strings.npy", np.array(["a", "b"] * N), "dtype <U1")
    add("complex.npy", np.ones((N, 2), complex), "dtype complex128")
    add("struct.npy", np.zeros(N, dtype=[("a", "i4"), ("b", "f4")]), "expected numbers")
    add("object.npy", np.array([_Marker(marker)] * N, dtype=object), "never loaded")
    add("pickle.npy", None, "never loaded", raw=pickle.dumps([_Marker(marker)] * N))
    add("text.npy", None, "never loaded", raw=b"1,2,3\n4,5,6\n")
    whole = (tmp / "whole.npy")
    np.save(whole, np.ones((N, 3)))
    add("truncated.npy", None, "the file is truncated", raw=whole.read_bytes()[:-7])
    add("object.npz", None, "never loaded", train=np.array([_Marker(marker)] * N, dtype=object))
    np.savez(tmp / "good.npz", train=np.ones((N, 3)))
    add("truncated.npz", None, "cannot read", raw=(tmp / "good.npz").read_bytes()[:100])
    add("no_train.npz", None, "expected key 'train'", a=np.ones((N, 2)), b=np.ones((N, 2)))
    add("npz_named.npy", None, "rename it to .npz", raw=(tmp / "good.npz").read_bytes())
    add("too_few.npy", np.ones((2, 3)), "too few")
    (tmp / "empty_folder").mkdir()
    files["empty_folder"] = (tmp / "empty_folder", "no .png files")
    return files


def test_malformed_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, (path, expect) in _bad_files(bad).items():
        with pytest.raises(ChainruleError) as info:
            load_dataset(path)
        msg = str(info.value)
        assert expect in msg and path.name in msg and "\n" not in msg, (name, msg)
        assert "allow_pickle" not in msg  # never the advice to unpickle
    assert not (bad / "UNPICKLED").exists()
    with pytest.raises(ChainruleError, match="no file or folder of that name"):
        load_dataset(tmp_path / "missing.npy")


def test_malformed_files_on_the_command_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, (path, expect) in _bad_files(bad).items():
        code, _, err = _train(capsys, path, tmp_path / "run")
        msg = _one_line_error(err)
        assert code == 2 and expect in msg and path.name in msg, (name, msg)
    assert not (bad / "UNPICKLED").exists() and not (tmp_path / "run").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, capsys):
    path = _save(tmp_path / "x.npy", np.ones((N, 3)))
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="Permission denied"):
            load_dataset(path)
        code, _, err = _train(capsys, path, tmp_path / "run")
        assert code == 2 and "Permission denied" in _one_line_error(err)
    finally:
        path.chmod(0o600)


def test_summarize_values_directly():
    """The rules as a function of arrays (the API behind the loader)."""
    summary, (a,) = summarize_values([np.array([[0, 1], [1, 1]], np.uint8)], "x")
    assert summary.num_values == 2 and a.dtype == np.int64
    summary, (a,) = summarize_values([np.array([[0.0, 2.0]])], "x")
    assert summary.num_values == 3 and summary.integral_floats
    summary, (a,) = summarize_values([np.array([[0.25, 0.5]])], "x")
    assert summary.num_values is None and summary.kind == "intensities" and a.dtype == np.float32
    with pytest.raises(DataError, match=r"values -1\.\.2 include negative ones"):
        summarize_values([np.array([[-1.0, 2.0]])], "x")  # integral floats: discrete, so not negative
