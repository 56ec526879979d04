"""Issue 20, "Nothing lost": every bad input, fault and crafted file is refused before it costs data.

One test (or a parametrized group) per case of the issue: the output policy of every command that
writes a file (``--force``, never an input or a checkpoint, never a directory, atomic, the umask's
mode), the run directory's lock, ``--force`` that keeps the old run until the new one has a
checkpoint, every state the ``last/`` write protocol can leave, faults of the file system, crafted
``.crz`` / ``.npy`` / ``.npz`` files, bounds of every count, and the silent wrong results (stored
orders, NaN weights, a negative step, ``features(layer=)``, meta tensors)."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import chainrule
from chainrule.cli import main
from chainrule.errors import CheckpointError, DataError, InputError
from test_hardening import _toy_npy  # the same tiny binary data as the hardening tests


def _train(data, out, *extra, model="fvsbn"):
    return main(["train", model, "--dataset", str(data), "--epochs", "1", "--out", str(out), "--no-progress",
                 "--num-samples", "4", "--no-tensorboard", *extra])


def _error(capsys) -> str:
    # what a terminal shows: a progress bar erased by carriage returns before the error is gone
    err = capsys.readouterr().err.strip().split("\r")[-1]
    assert err.startswith("chainrule: error: ") and "\n" not in err, err
    return err


def _snapshot(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("image")
    run = root / "run"
    data = _toy_npy(root / "img.npy", image=True)
    assert _train(data, run) == 0
    return run, data


# ====================================================================== the output policy
def test_compress_never_writes_over_the_checkpoint_or_its_input(image_run, tmp_path, capsys):
    run, data = image_run
    x = tmp_path / "x.npy"
    np.save(x, np.load(data)[:3])
    before = _snapshot(run)
    assert main(["compress", str(run), str(x), str(run / "best" / "model.safetensors")]) == 2
    assert "inside the checkpoint directory" in _error(capsys)
    assert main(["compress", str(run), str(x), str(run / "best" / "model.safetensors"), "--force"]) == 2
    assert "inside the checkpoint directory" in _error(capsys)
    assert main(["compress", str(run), str(x), str(x), "--force"]) == 2  # its own input, even with --force
    assert "is the input" in _error(capsys)
    assert main(["compress", str(run), str(x), str(tmp_path / "." / "x.npy")]) == 2  # another spelling of it
    assert "is the input" in _error(capsys)
    assert _snapshot(run) == before and np.load(x).shape == (3, 1, 2, 2)


@pytest.mark.parametrize("command", ["compress", "decompress", "sample", "score", "complete", "report"])
def test_existing_output_refused_unless_force(image_run, tmp_path, capsys, command):
    run, data = image_run
    x = tmp_path / "x.npy"
    np.save(x, np.load(data)[:3])
    crz = tmp_path / "x.crz"
    if command == "decompress":
        assert main(["compress", str(run), str(x), str(crz)]) == 0
    out = tmp_path / {"compress": "o.crz", "decompress": "o.npy", "sample": "o.png", "score": "o.csv",
                      "complete": "o.png", "report": "o.html"}[command]
    argv = {"compress": ["compress", str(run), str(x), str(out)],
            "decompress": ["decompress", str(run), str(crz), str(out)],
            "sample": ["sample", str(run), "-n", "4", "--out", str(out)],
            "score": ["score", str(run), str(x), "--out", str(out)],
            "complete": ["complete", str(run), "--input", str(x), "--mask", "top-half", "--num", "2", "--out", str(out)],
            "report": ["report", str(run), "--out", str(out)]}[command]
    out.write_bytes(b"the user's own file")
    capsys.readouterr()
    assert main(argv) == 2
    err = _error(capsys)
    assert "already exists" in err and "--force" in err
    assert out.read_bytes() == b"the user's own file"
    assert main(argv + ["--force"]) == 0
    assert out.read_bytes() != b"the user's own file"
    # a directory as the output: refused, nothing written beside it
    d = tmp_path / f"adir{out.suffix}"
    d.mkdir()
    argv_dir = [str(d) if a == str(out) else a for a in argv]
    capsys.readouterr()
    assert main(argv_dir + ["--force"]) == 2
    assert "is a directory" in _error(capsys)
    assert list(d.iterdir()) == [] and not (tmp_path / f"adir{out.suffix}.npy").exists()
    # no temporary file is left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_outputs_get_the_umask_mode(image_run, tmp_path):
    """Files chainrule writes get the mode ``open`` would give (0644 under umask 022), not mkstemp's 0600."""
    run, data = image_run
    old = os.umask(0o022)
    try:
        assert main(["compress", str(run), str(data), str(tmp_path / "x.crz")]) == 0
        assert main(["decompress", str(run), str(tmp_path / "x.crz"), str(tmp_path / "y.npy")]) == 0
        chainrule.load(run / "best").save(tmp_path / "ckpt")
    finally:
        os.umask(old)
    for p in (tmp_path / "x.crz", tmp_path / "y.npy", tmp_path / "ckpt" / "model.safetensors",
              tmp_path / "ckpt" / "config.json", run / "best" / "model.safetensors", run / "last" / "trainer_state.json"):
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_decompress_writes_the_original_dtype(image_run, tmp_path):
    """Values chainrule read itself (a tensor, images, a dataset) decompress to the smallest type that
    holds K values (uint8 for binary images), a .npy input to its own dtype; old files (int64) still decode."""
    from chainrule.apps.compression import compress, compress_file, decompress_file

    run, data = image_run
    model = chainrule.load(run / "best")
    x = torch.from_numpy(np.load(data)[:5])
    compress_file(model, x, tmp_path / "t.crz")
    (path,) = decompress_file(model, tmp_path / "t.crz", tmp_path / "t.npy")
    y = np.load(path)
    assert y.dtype == np.uint8 and np.array_equal(y, x.numpy())
    np.save(tmp_path / "b.npy", x.numpy().astype(bool))
    compress_file(model, tmp_path / "b.npy", tmp_path / "b.crz")
    assert np.load(decompress_file(model, tmp_path / "b.crz", tmp_path / "b_out.npy")[0]).dtype == np.bool_
    (tmp_path / "old.crz").write_bytes(compress(model, x))  # the API's int64 stream, as every old file
    assert np.load(decompress_file(model, tmp_path / "old.crz", tmp_path / "old.npy")[0]).dtype == np.int64


# ====================================================================== train: lock, --force, recovery
def test_a_second_train_in_the_same_directory_is_refused_naming_the_pid(tmp_path, capsys):
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from chainrule.io.lock import RunLock\n"
        "lock = RunLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(60)"),
        os.path.dirname(os.path.dirname(chainrule.__file__)), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(data, run) == 2
        err = _error(capsys)
        assert f"PID {holder.pid}" in err and "in use" in err
        assert not (run / "log.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file is stale and taken over
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    assert _train(data, run) == 0
    assert not (run / ".lock").exists()  # released on exit


def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, capsys):
    """--lr 1e308 makes the loss NaN at once: the old run must still be there, whole."""
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert _train(data, run, "--force", "--lr", "1e308") == 1
    assert "loss became nan" in _error(capsys)
    assert _snapshot(run) == before
    # a --force run killed before its first checkpoint (its .replaced/ left): the next run restores the old one
    from chainrule.apps.pipeline import run_files

    (run / ".replaced").mkdir()
    for path in run_files(run):  # what a --force run moves aside first
        path.rename(run / ".replaced" / path.name)
    (run / "log.csv").write_text("epoch\n")  # the killed run's own trace
    assert _train(data, run) == 2  # the old run is back, so a plain run is refused again
    assert "already holds a run" in _error(capsys)
    assert _snapshot(run) == before


def test_vqvae_force_keeps_the_old_run_and_its_codes_until_the_new_one_has_a_checkpoint(tmp_path, capsys):
    """The VQ-VAE run replaces a previous one as every other run does: moved aside, codes/ too, and
    put back when the new run fails before its first checkpoint (--lr 1e308: NaN at once)."""
    run = tmp_path / "vq"
    argv = ["train", "vqvae", "--dataset", "digits", "--out", str(run), "-p", "codebook_size=8", "-p", "code_dim=4",
            "-p", "channels=8", "-p", "downsample=1", "-p", "num_res_blocks=0", "--epochs", "1", "--no-progress",
            "--no-tensorboard", "--threads", "1"]
    assert main(argv) == 0
    before = _snapshot(run)
    assert "codes/train.npy" in before and "reconstructions.png" in before
    capsys.readouterr()
    assert main([*argv, "--force", "--lr", "1e308"]) == 1
    assert "nan" in _error(capsys)
    assert _snapshot(run) == before and not (run / ".replaced").exists()
    assert main([*argv, "--force", "--seed", "1"]) == 0
    after = _snapshot(run)
    assert set(after) == set(before) and after["best/model.safetensors"] != before["best/model.safetensors"]
    assert not (run / ".replaced").exists()


def test_disk_full_during_the_first_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch):
    import chainrule.io.checkpoint as ckpt

    data = _toy_npy(tmp_path / "toy.npy")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_file", full)
    assert _train(data, tmp_path / "fresh") == 1
    err = _error(capsys)
    assert "No space left on device" in err and "ENOSPC" in err
    assert not (tmp_path / "fresh").exists()  # no empty best/, no 0-byte log.csv
    monkeypatch.undo()
    run = tmp_path / "run"
    assert _train(data, run) == 0
    before = _snapshot(run)
    monkeypatch.setattr(ckpt, "save_file", full)
    capsys.readouterr()
    assert _train(data, run, "--force") == 1
    assert "No space left" in _error(capsys)
    assert _snapshot(run) == before


def test_read_only_output_is_one_line_and_leaves_nothing(image_run, tmp_path, capsys, monkeypatch):
    run, data = image_run

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    monkeypatch.setattr(os, "link", read_only)
    assert main(["compress", str(run), str(data), str(tmp_path / "x.crz")]) == 2
    err = _error(capsys)
    assert "Read-only file system" in err and "x.crz" in err
    assert list(tmp_path.iterdir()) == []


def _resume_result(run, data):
    assert _train(data, run, "--resume", "--epochs", "2") == 0
    assert (run / "last").is_dir() and not (run / "last.tmp").exists() and not (run / "last.old").exists()
    return load_file(str(run / "last" / "model.safetensors"))


@pytest.mark.parametrize("state", ["only-tmp", "old-and-tmp", "old-and-partial-tmp", "last-and-partial-tmp",
                                   "last-tmp-and-old", "last-and-old"])
def test_every_state_of_the_checkpoint_write_is_recovered(tmp_path, capsys, state):
    """_save_last writes last.tmp/, renames last/ -> last.old/, last.tmp/ -> last/, removes last.old/:
    a kill anywhere leaves one of these states; each resumes to the same result as the intact run."""
    data = _toy_npy(tmp_path / "toy.npy")
    ref = tmp_path / "ref"
    assert _train(data, ref) == 0
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    last, tmp, old = run / "last", run / "last.tmp", run / "last.old"
    if state == "only-tmp":  # killed between the renames, resumed from last.old and killed again
        last.rename(tmp)
    elif state == "old-and-tmp":  # killed between the two renames
        last.rename(old)
        shutil.copytree(old, tmp)
    elif state == "old-and-partial-tmp":
        last.rename(old)
        tmp.mkdir()
        shutil.copy(old / "model.safetensors", tmp)
    elif state == "last-and-partial-tmp":  # killed while writing last.tmp
        tmp.mkdir()
        shutil.copy(last / "config.json", tmp)
    elif state == "last-tmp-and-old":
        shutil.copytree(last, tmp)
        shutil.copytree(last, old)
    else:  # killed before last.old/ was removed
        shutil.copytree(last, old)
    expected = _resume_result(ref, data)
    got = _resume_result(run, data)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_a_run_killed_before_its_first_checkpoint_is_started_again(tmp_path, capsys):
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("")  # all a run killed in its first epoch leaves
    assert _train(data, run, "--resume") == 0
    assert "starting it again" in capsys.readouterr().out
    assert (run / "best").is_dir()
    assert _train(data, tmp_path / "nothing", "--resume") == 2  # no run at all: still nothing to resume
    assert "nothing to resume" in _error(capsys)


def test_negative_step_in_trainer_state_is_refused(tmp_path, capsys):
    data = _toy_npy(tmp_path / "toy.npy")
    run = tmp_path / "run"
    assert _train(data, run) == 0
    path = run / "last" / "trainer_state.json"
    state = json.loads(path.read_text())
    state["step"] = -5
    path.write_text(json.dumps(state))
    capsys.readouterr()
    assert _train(data, run, "--resume", "--epochs", "2") == 2
    assert "step -5 is not an integer >= 0" in _error(capsys)


# ====================================================================== crafted files
@pytest.fixture(scope="module")
def crz(image_run, tmp_path_factory):
    from chainrule.apps.compression import compress

    run, data = image_run
    model = chainrule.load(run / "best")
    return model, compress(model, torch.from_numpy(np.load(data)[:3]))


def _forged(data, **changes):
    from chainrule.apps.compression import read_header

    head, payload = read_header(data)
    return dataclasses.replace(head, **changes).pack() + payload  # valid CRCs, the model's own hash


@pytest.mark.parametrize("changes, message", [
    ({"num_examples": 4_000_000}, "corrupted or forged"),
    ({"num_examples": 2 ** 60}, "corrupted or forged"),
    ({"meta": ["not", "an", "object"]}, "not an object"),
    ({"num_values": 0}, "K=0"),
])
def test_forged_crz_headers_are_refused_before_allocating(crz, changes, message):
    from chainrule.apps.compression import decompress

    model, data = crz
    t = time.perf_counter()
    with pytest.raises(InputError, match=message):
        decompress(model, _forged(data, **changes))
    assert time.perf_counter() - t < 5  # refused from the header, not after decoding millions of examples


@pytest.mark.parametrize("dtype", ["|O", "<U3", "|b1x", True, "|i1x", "<i8" * 10])  # a float .npy input is legitimate
def test_forged_crz_dtypes_are_refused(crz, tmp_path, dtype):
    from chainrule.apps.compression import decompress_file, read_header

    model, data = crz
    meta = {**read_header(data)[0].meta, "dtype": dtype}
    (tmp_path / "f.crz").write_bytes(_forged(data, meta=meta))
    with pytest.raises(InputError, match="dtype"):
        decompress_file(model, tmp_path / "f.crz", tmp_path / "f.npy")
    assert not (tmp_path / "f.npy").exists()


def test_a_forged_example_count_is_caught_while_decoding(crz):
    """A header claiming a few more examples than were coded: noise is decoded past the real stream,
    whose information soon exceeds the payload (refused, never returned)."""
    from chainrule.apps.compression import decompress

    model, data = crz
    with pytest.raises(InputError, match="corrupted"):
        decompress(model, _forged(data, num_examples=3000))


def test_forged_context_npy_header_is_refused(crz):
    from chainrule.apps.compression import MAGIC, _FIXED, _TAIL, read_header

    model, data = crz
    head, payload = read_header(data)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10 ** 11,)})
    ctx = buf.getvalue()
    meta = json.dumps(head.meta).encode()
    out = _FIXED.pack(MAGIC, head.version, 0, 1, head.fingerprint, head.num_examples, head.num_values, head.chunk,
                      len(head.shape))
    out += np.array(head.shape, "<u4").tobytes() + len(meta).to_bytes(4, "little") + meta
    out += len(ctx).to_bytes(4, "little") + ctx + _TAIL.pack(head.content_sha256, head.payload_length,
                                                             head.payload_crc32)
    out += zlib.crc32(out).to_bytes(4, "little")
    with pytest.raises(InputError, match="declares"):
        read_header(out + payload)


def test_npy_and_npz_headers_are_checked_against_the_file_size(tmp_path, capsys):
    from chainrule.data import read_npy

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    (tmp_path / "big.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    with pytest.raises(DataError, match="declares 8 TB"):
        read_npy(tmp_path / "big.npy")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (8 * 10 ** 9,)})
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("train.npy", buf.getvalue() + b"\0" * 64)
    assert main(["train", "fvsbn", "--dataset", str(tmp_path / "big.npz"), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    assert "declares 64 GB" in _error(capsys)
    assert not (tmp_path / "r").exists()


# ====================================================================== bounds
@pytest.mark.parametrize("argv, message", [
    (["sample", "RUN", "-n", "1000000000000"], "-n must be an integer >= 1 and <= 100,000"),
    (["sample", "RUN", "--seed", str(10 ** 30)], "--seed must be an integer >= 0 and <= 2**63-1"),
    (["sample", "RUN", "--temperature", "nan"], "--temperature must be a finite number"),
    (["generate", "RUN", "--beam", "100000000"], "--beam must be an integer >= 1 and <= 4,096"),
    (["generate", "RUN", "--length-penalty", "nan"], "--length-penalty must be a finite number"),
    (["score", "RUN", "x.npy", "--num-maps", "-1"], "--num-maps must be an integer >= 1"),
    (["train", "fvsbn", "--dataset", "DATA", "--num-samples", "0"], "--num-samples must be an integer >= 1"),
    (["train", "fvsbn", "--dataset", "DATA", "--num-samples", "-1"], "--num-samples must be an integer >= 1"),
    (["train", "made", "--dataset", "DATA", "-p", "seed=abc"], "seed must be an integer in 0..2**63-1"),
    (["train", "made", "--dataset", "DATA", "-p", "hidden_sizes=[100000000000]"], "beyond any model"),
    (["train", "lstm", "--dataset", "DATA", "-p", "hidden_size=4000000"], "more than this machine's memory"),
    (["compress", "RUN", "DATA", "OUT", "--member", "5"], "not an ensemble"),
])
def test_counts_seeds_and_sizes_are_bounded_before_any_work(image_run, tmp_path, capsys, argv, message):
    run, data = image_run
    argv = [{"RUN": str(run), "DATA": str(data), "OUT": str(tmp_path / "o.crz")}.get(a, a) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "o.crz").exists()


def test_api_bounds():
    model = chainrule.create_model("fvsbn", (6,), 2)
    with pytest.raises(InputError, match="draw them in batches"):
        model.sample(10 ** 12)
    with pytest.raises(InputError, match="beam width"):
        model.beam_search(10 ** 9)
    with pytest.raises(InputError, match="histogram: the space has 256\\^784 = 1.15e\\+1888"):
        chainrule.create_model("histogram", (1, 28, 28), 256)
    with pytest.raises(InputError, match="order must be an integer n in 1..32"):
        from chainrule.lm.ngram import NgramLM

        NgramLM(1_000_000)


def test_data_values_beyond_any_k_are_refused(tmp_path, capsys):
    np.save(tmp_path / "huge.npy", np.array([[0, 1], [2 ** 62, 3]] * 10, dtype=np.int64))
    assert main(["train", "fvsbn", "--dataset", str(tmp_path / "huge.npy"), "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    assert "at most 16,777,216" in _error(capsys)


def test_a_config_json_with_absurd_sizes_is_refused(image_run, tmp_path):
    run, _ = image_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "best", ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"], cfg["hyperparameters"] = "made", {"hidden_sizes": [10 ** 11]}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="beyond any model"):
        chainrule.load(ckpt)


def test_ngram_order_beyond_sanity(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a b c\nb c d\n" * 50)
    t = time.perf_counter()
    assert main(["ngram", "fit", str(tmp_path / "t.txt"), "--order", "1000000", "--out", str(tmp_path / "m")]) == 2
    assert "order must be an integer n in 1..32" in _error(capsys)
    assert time.perf_counter() - t < 5


# ====================================================================== silent wrong results
@pytest.mark.parametrize("damage", ["zeros", "out-of-range"])
def test_stored_orders_must_be_permutations(image_run, tmp_path, capsys, damage):
    run, _ = image_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "best", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    order = state["order"].clone()
    if damage == "zeros":
        order.zero_()
    else:
        order[0] = 10 ** 6
    state["order"] = order
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not a permutation"):
        chainrule.load(ckpt)
    assert main(["eval", str(ckpt)]) == 2
    assert "not a permutation" in _error(capsys)


def test_nan_weights_fail_loudly(image_run, tmp_path, capsys):
    run, _ = image_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run / "best", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(ckpt / "model.safetensors"))
    assert main(["eval", str(ckpt)]) == 2
    assert "NaN" in _error(capsys)


@pytest.mark.parametrize("name, hp, layers", [("nade", {}, 1), ("lstm", {"num_layers": 3}, 3), ("gru", {}, 2),
                                              ("wavenet", {}, None)])
def test_features_take_a_layer(name, hp, layers):
    model = chainrule.create_model(name, (1, 4, 4), 2, **hp).eval()
    x = torch.randint(0, 2, (3, 1, 4, 4))
    top = model.features(x)
    first, last = model.features(x, layer=[0, -1])
    assert torch.allclose(last, top, atol=1e-6) and first.shape == top.shape
    assert torch.allclose(model.features(x, layer=0), first, atol=1e-6)
    if layers is not None:
        with pytest.raises(InputError, match="layer must be an integer"):
            model.features(x, layer=layers)


def test_rnn_intermediate_layer_is_the_stack_computed_layer_by_layer():
    """Layer 0 of a 2-layer LSTM is what a 1-layer LSTM with the stack's first weights computes."""
    model = chainrule.create_model("lstm", (5,), 3, num_layers=2, hidden_size=8, embedding_size=4).eval()
    x = torch.randint(0, 3, (2, 5))
    one = chainrule.create_model("lstm", (5,), 3, num_layers=1, hidden_size=8, embedding_size=4).eval()
    one.load_state_dict({k: v for k, v in model.state_dict().items() if "_l1" not in k}, strict=False)
    assert torch.allclose(model.features(x, layer=0), one.features(x), atol=1e-6)


def test_log_prob_of_a_meta_tensor_is_a_clear_error():
    model = chainrule.create_model("fvsbn", (6,), 2)
    with pytest.raises(InputError, match="meta device"):
        model.log_prob(torch.zeros(2, 6, dtype=torch.long, device="meta"))


def test_a_forged_ngram_archive_is_refused_before_allocating(tmp_path):
    from chainrule.lm.ngram import NgramLM

    path = NgramLM(2).fit([["a", "b"], ["b", "a"]] * 3).save(tmp_path / "m")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10 ** 12,)})
    with zipfile.ZipFile(path / "ngram.npz", "a") as z:
        z.writestr("keys_9.npy", buf.getvalue())
    with pytest.raises(DataError, match="declares 8 TB"):
        NgramLM.load(path)


def test_an_absurd_event_shape_is_refused_before_building():
    with pytest.raises(InputError, match="more variables than any model"):
        chainrule.create_model("fvsbn", (10 ** 9,), 2)


@pytest.mark.parametrize("exc, said, code", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"), "out of memory", 1),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "x.csv"), "cannot access x.csv: Read-only file system (EROFS)", 1),
    (TypeError("something unforeseen"), "internal error: TypeError: something unforeseen", 1),
])
def test_the_command_line_never_shows_a_bare_traceback(monkeypatch, capsys, exc, said, code):
    """What slips past every check still ends as one line on stderr and a non-zero exit."""
    import importlib

    cli = importlib.import_module("chainrule.cli.main")

    def boom():
        raise exc

    monkeypatch.setattr(cli, "dataset_info", boom)  # what `chainrule datasets` calls
    assert cli.main(["datasets"]) == code
    err = capsys.readouterr().err.strip()
    assert said in err and "\n" not in err and "Traceback" not in err


def test_a_failed_train_background_keeps_the_previous_background(image_run, tmp_path, capsys, monkeypatch):
    import chainrule.apps.anomaly as anomaly

    run, data = image_run
    argv = ["score", str(run), str(data), "--out", str(tmp_path / "s.csv"), "--force", "--score", "likelihood-ratio",
            "--train-background", "0.2", "--background-epochs", "1", "--background-steps-per-epoch", "2",
            "--no-progress"]
    assert main(argv) == 0
    before = _snapshot(run / "background")
    assert before

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(anomaly, "train_background", full)
    capsys.readouterr()
    assert main(argv) == 1
    assert "No space left" in _error(capsys)
    assert _snapshot(run / "background") == before


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    """`chainrule generate ... | head -c 20`: when the pipe's reader is gone the command stops quietly
    (exit 141, as one killed by SIGPIPE), with no error line and no traceback."""
    import subprocess
    import sys

    from test_text_runs import text_run

    ckpt, _ = text_run(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "chainrule", "generate", str(ckpt), "--max-new-tokens", "20000",
                          "--sliding-window", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(p.stdout.read(20)) == 20
    p.stdout.close()  # the reader leaves, as `head` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


def test_an_interrupted_ngram_save_leaves_the_saved_model_whole(tmp_path, monkeypatch):
    """NgramLM.save writes each file through a temporary one: a save that fails half-way (here: while
    compressing the arrays) leaves the model saved before as it was, and no stray file."""
    from chainrule.lm import ngram as ngram_module
    from chainrule.lm.ngram import NgramLM

    sents = [["a", "b", "c"], ["b", "c", "a", "a"], ["c", "a"]]
    old = NgramLM(2, "laplace").fit(sents)
    old.save(tmp_path / "lm")
    before = {p.name: p.read_bytes() for p in (tmp_path / "lm").iterdir()}

    def broken(file, **arrays):  # the disk fills after the first bytes
        fh = open(file, "wb") if isinstance(file, (str, os.PathLike)) else file
        fh.write(b"PK\x03\x04 half")
        fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ngram_module.np, "savez_compressed", broken)
    new = NgramLM(3, "kneser-ney").fit(sents * 3)
    with pytest.raises(OSError):
        new.save(tmp_path / "lm")
    assert {p.name: p.read_bytes() for p in (tmp_path / "lm").iterdir()} == before
    monkeypatch.undo()
    loaded = NgramLM.load(tmp_path / "lm")
    assert loaded.order == 2 and loaded.log_prob("b", ["a"]) == old.log_prob("b", ["a"])
