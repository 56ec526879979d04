"""Lossless compression by range coding (chainrule.apps.compression): exact round trips for every
kind of model (sequences, images with R->G->B sub-pixels, pixel groups with a class label), the
same bytes whatever the thread count, a payload within the model's ideal code length, clear errors
for another model's file or a damaged one, text files back byte for byte, and the command line.

Size bounds use data sampled from the model itself (``model.sample``): with random weights, data
drawn from elsewhere often has conditionals below the tables' floor of 2^-16, where the quantized
code is *shorter* than -log2 p but far from representative."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import chainrule
from chainrule.apps import compression as cz
from chainrule.apps.compression import (
    compress,
    compress_text,
    decompress,
    decompress_text,
    model_fingerprint,
    read_header,
)
from chainrule.cli.main import main
from chainrule.errors import InputError
from chainrule.inference.coding import encoding_tables
from chainrule.text.tokenizers import ByteTokenizer, CharTokenizer

# (name, event shape, K, hyperparameters): a sequence, a binary image, a colour image read
# R -> G -> B inside each pixel, pixel groups (the channels of a pixel jointly) with a class label
MODELS = {
    "nade": ("nade", (1, 4, 4), 2, {"hidden_size": 8}),
    "transformer": ("transformer", (16,), 5, {"num_layers": 1, "num_heads": 1, "embed_dim": 8}),
    "pixelcnn": ("pixelcnn", (3, 2, 2), 4, {"channels": 12, "num_layers": 1, "head_channels": 6, "first_kernel_size": 3}),
    "made-pixel-class": ("made", (3, 2, 2), 4, {"hidden_sizes": [16, 16], "group_shape": "pixel", "num_classes": 3}),
}
N = 21  # more than one 16-row block of the old formats' coding tables, the last one padded


def build(key: str, seed: int = 0):
    name, shape, k, hp = MODELS[key]
    torch.manual_seed(seed)
    model = chainrule.create_model(name, shape, k, **hp)
    with torch.no_grad():  # random, non-trivial weights (some models start at zero)
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def labels_for(model, n: int = N):
    return torch.arange(n) % model.num_classes if model.num_classes else None


def model_data(model, n: int = N, seed: int = 0):
    y = labels_for(model, n)
    return model.sample(n, y, generator=torch.Generator().manual_seed(seed)), y


def bits_of(model, x, y) -> float:
    """Sum of -log2 p(x | y): the ideal code length, from the teacher-forced pass."""
    with torch.no_grad():
        return float(-model.log_prob(x, y).double().sum()) / math.log(2)


@pytest.mark.parametrize("key", list(MODELS))
def test_round_trip_is_exact(key):
    model = build(key)
    x = torch.randint(model.num_values, (N, *model.shape), generator=torch.Generator().manual_seed(1))  # any values
    y = labels_for(model)
    data = compress(model, x, y)
    out = decompress(model, data)  # the labels come from the header
    assert out.dtype == torch.long and torch.equal(out, x)
    head, _ = read_header(data)
    assert head.num_examples == N and head.shape == tuple(model.shape) and head.num_values == model.num_values
    if y is not None:
        assert np.array_equal(head.context, y.numpy())
    # chunks of 8 examples: another stream order (stored in the header), the same values
    assert torch.equal(decompress(model, cz.compress(model, x, y, chunk=8)), x)


@pytest.mark.parametrize("key", list(MODELS))
def test_payload_is_within_the_ideal_code_length(key):
    model = build(key)
    x, y = model_data(model, 48)
    head, payload = read_header(compress(model, x, y))
    ideal = bits_of(model, x, y)
    assert 8 * len(payload) <= ideal * (1 + 1e-3) + 64, (8 * len(payload), ideal)
    assert 8 * len(payload) >= ideal - 64  # and no miracle: a code shorter than -log2 p would be a bug
    assert torch.equal(decompress(model, compress(model, x, y)), x)


@pytest.mark.parametrize("key", ["transformer", "made-pixel-class"])
def test_the_thread_count_changes_nothing(key):
    model = build(key)
    x, y = model_data(model)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = compress(model, x, y)
        torch.set_num_threads(1)
        one = compress(model, x, y)
        back_1 = decompress(model, two)  # compressed with 2 threads, decompressed with 1
        torch.set_num_threads(2)
        back_2 = decompress(model, one)
    finally:
        torch.set_num_threads(threads)
    assert one == two
    assert torch.equal(back_1, x) and torch.equal(back_2, x)


@pytest.mark.parametrize("bits", [16, 24])
def test_constriction_codes_the_exact_integer_model(bits):
    """Tables f/2^b passed as float64 are quantized by constriction to the integer model
    cdf_k = floor(C_k (2^24 - K) / 2^b) + k, with no float rounding: coding 50000 copies of a
    symbol costs what that model predicts (b = 16: q = 257, 280 bits less than the naive f * 2^8)."""
    import constriction

    k, n = 256, 50000
    f = np.ones(k, np.int64)
    f[-1] = (1 << bits) - (k - 1)
    c = np.concatenate([[0], np.cumsum(f)])
    cdf = (c * ((1 << 24) - k)) // (1 << bits) + np.arange(k + 1)
    cdf[-1] = 1 << 24
    q = np.diff(cdf)
    probs = cz._probabilities(torch.from_numpy(np.tile(f, (n, 1))), bits)
    assert probs.dtype == np.float64 and np.array_equal(probs * (1 << bits), np.tile(f, (n, 1)).astype(np.float64))
    for sym in (100, 0):
        enc = constriction.stream.queue.RangeEncoder()
        x = np.full(n, sym, np.int32)
        enc.encode(x, cz._family(), probs)
        predicted = n * math.log2((1 << 24) / q[sym])
        assert predicted - 1 <= enc.num_bits() <= predicted + 64
        dec = constriction.stream.queue.RangeDecoder(enc.get_compressed())
        assert np.array_equal(dec.decode(cz._family(), probs), x)
    if bits == 16:
        assert q[100] == 257 and q[0] == 256
    else:
        assert q[100] == 2 and q[0] == 1  # floor(k (1 - K / 2^24)) = k - 1 for k >= 1: cdf_k = 2k - 1


@pytest.mark.parametrize("version", [1, 2])
def test_older_format_versions_still_decode(monkeypatch, version):
    """Version 1 coded with 16-bit tables, version 2 with 24-bit ones, both on blocks of 16 rows;
    version 3 (written now) records its block size. 24 bits: the floor of one count per value
    costs K / 2^24 of the mass instead of K / 2^16."""
    model = build("nade")
    x, y = model_data(model)
    assert cz.FORMAT_VERSION == 5 and cz.PRECISION == 24 and cz.TABLE_BITS == {1: 16, 2: 24, 3: 24, 4: 24, 5: 24}
    with monkeypatch.context() as m:
        m.setattr(cz, "PRECISION", cz.TABLE_BITS[version])
        m.setattr(cz, "FORMAT_VERSION", version)  # and NADE's dense step, as then
        m.setattr(cz, "coding_layout", lambda model, n, chunk=None: (cz.CHUNK_EXAMPLES, cz.OLD_BLOCK_ROWS))
        old = compress(model, x, y)
    head, payload = cz.read_header(old)
    head.version = version  # what chainrule 0.2 / 0.3 wrote: the same layout, no block_rows
    del head.meta["block_rows"]
    data = head.pack() + payload
    assert cz.read_header(data)[0].version == version
    assert torch.equal(decompress(model, data), x)
    new = compress(model, x, y)
    head = cz.read_header(new)[0]
    assert head.version == 5 and head.meta["block_rows"] == N and torch.equal(decompress(model, new), x)


@pytest.mark.parametrize("name", ["made", "causalconv"])
def test_files_coded_before_a_cached_step_still_decode(monkeypatch, name):
    """MADE and causalconv gained cached steps in format 4; a version-3 file of theirs was coded with
    the full pass at every step (which rounds differently), and decodes that way: nothing lost."""
    from chainrule.inference.coding import encoding_tables
    from chainrule.models.base import AutoregressiveModel

    torch.manual_seed(0)
    model = chainrule.create_model(name, (6,), 3, **({"hidden_sizes": [16]} if name == "made" else
                                                     {"channels": 8, "kernel_size": 3, "num_layers": 2}))
    x = torch.randint(3, (40, 6))
    with monkeypatch.context() as m:  # chainrule 0.2: no cached step, the contract's full pass
        m.setattr(type(model), "new_state", AutoregressiveModel.new_state)
        m.setattr(type(model), "step", AutoregressiveModel.step)
        old_tables = encoding_tables(model, x, precision=24)[1]
        old = compress(model, x)
    assert torch.equal(encoding_tables(model, x, precision=24, full_pass=True)[1], old_tables)
    head, payload = cz.read_header(old)
    head.version = 3
    assert torch.equal(decompress(model, head.pack() + payload), x)
    assert cz.read_header(compress(model, x))[0].version == 5


def _dense_nade_step(self, state, i, x_prev):
    """NADE's step as chainrule 0.4 had it (format 4): every row's activation at every step."""
    order, a = state["order"].value, state["a"]
    if x_prev is not None:
        a = a + self.encode_values(x_prev).reshape(len(x_prev), -1) @ self.W[order[i - 1]].T
    k = order[i]
    return self.act(a) @ self.V[k].T + self.b[k], {**state, "a": a}


def _dense_made_step(self, state, i, x_prev):
    """MADE's step as chainrule 0.4 had it (format 4): the first layer of every row at every step."""
    import torch.nn.functional as F

    order, masks, f, p = state["order"].value, state["masks"].value, self.in_features, self.head.num_params
    first, *deeper = self.hidden
    a = state["a"]
    state = dict(state)
    if x_prev is not None:
        j = order[i - 1]
        ex = self.encode_values(x_prev).reshape(len(x_prev), -1)
        cols = slice(j * f, (j + 1) * f)
        a = state["a"] = a + F.linear(ex, first.masked_weight(masks[0])[:, cols])
        if self.direct is not None:
            state["x"][:, cols] = ex
    h = self.act(a)
    for layer, m in zip(deeper, masks[1:]):
        h = self.act(layer(h, m))
    k = order[i]
    rows = slice(k * p, (k + 1) * p)
    out = F.linear(h, self.out.masked_weight(masks[1 + len(deeper)])[rows], self.out.bias[rows])
    if self.direct is not None:
        out = out + F.linear(state["x"], self.direct.masked_weight(masks[-1])[rows])
    if state["out"] is not None:
        out = out + state["out"][:, rows]
    return out, state


@pytest.mark.parametrize("name, hp, k, d, seed, differ", [
    ("nade", {"hidden_size": 50}, 2, 16, 0, True), ("made", {"hidden_sizes": [50], "activation": "sigmoid"}, 2, 16, 1, True),
    ("nade", {"hidden_size": 16}, 3, 9, 0, False), ("made", {"hidden_sizes": [16, 12], "direct_connections": True}, 2, 9, 0, False)])
def test_format_4_files_of_the_dense_steps_still_decode(monkeypatch, name, hp, k, d, seed, differ):
    """NADE and MADE code format 5 with sparse steps (a value 0 leaves a row's hidden layer as it
    was); a format-4 file was coded with the dense step of chainrule 0.4 (copied above), which
    rounds differently (in the first two cases some tables differ: a format-4 file would not decode by
    the sparse step), and decodes by it: its tables are met bit for bit."""
    torch.manual_seed(seed)
    model = chainrule.create_model(name, (d,), k, **hp).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = torch.randint(k, (64, d), generator=torch.Generator().manual_seed(1))
    x[::3] = 0  # rows that leave the hidden layer as it is, beside rows that change it
    with monkeypatch.context() as m:  # chainrule 0.4: the dense step, format 4
        m.setattr(type(model), "step", _dense_nade_step if name == "nade" else _dense_made_step)
        m.setattr(cz, "FORMAT_VERSION", 4)
        old_tables = encoding_tables(model, x, precision=24, block_rows=16)[1]
        old = compress(model, x)
    assert cz.read_header(old)[0].version == 4
    assert torch.equal(encoding_tables(model, x, precision=24, block_rows=16, version=4)[1], old_tables)
    assert torch.equal(decompress(model, old), x)
    new = compress(model, x)
    assert cz.read_header(new)[0].version == 5 and torch.equal(decompress(model, new), x)
    # the sparse step's conditionals are the dense one's up to rounding
    new_tables = encoding_tables(model, x, precision=24, block_rows=16)[1]
    assert (new_tables - old_tables).abs().max() <= 2 and torch.equal(new_tables, old_tables) != differ


def test_chunks_and_blocks_are_cut_evenly():
    """compress cuts N examples into equal chunks of at most max(1024, R) and a chunk into equal
    blocks of at most R rows (R: the architecture's coding_block_rows), so the last block is not
    mostly padding; a chunk given is kept."""
    nade, pixelcnn = build("nade"), build("pixelcnn")
    assert nade.coding_block_rows == 4096 and pixelcnn.coding_block_rows == 128
    assert cz.coding_layout(nade, 10_000) == (3334, 3334)  # not 4096 + 4096 + 1808 padded to 4096
    assert cz.coding_layout(nade, 300) == (300, 300)
    assert cz.coding_layout(pixelcnn, 10_000) == (1000, 125)  # 10 chunks of 8 blocks, none padded
    assert cz.coding_layout(pixelcnn, 21) == (21, 21)
    assert cz.coding_layout(pixelcnn, 300, chunk=8) == (8, 8)
    assert cz.coding_layout(nade, 0) == (4096, 1)


def test_blocks_of_any_size_round_trip_and_are_checked(monkeypatch):
    """The block size is the file's: a file made with blocks of 4 (6 blocks, the last padded)
    decodes whatever this chainrule's default; a forged block size is refused."""
    model = build("made-pixel-class")
    x, y = model_data(model)
    with monkeypatch.context() as m:
        m.setattr(type(model), "coding_block_rows", 4)
        data = compress(model, x, y)
    head, payload = cz.read_header(data)
    assert head.meta["block_rows"] == 4 and model.coding_block_rows == 4096 and cz.BLOCK_ROWS == 128
    assert torch.equal(decompress(model, data), x)
    for bad in (0, True, "4", head.chunk + 1):
        head.meta["block_rows"] = bad
        with pytest.raises(InputError, match="block_rows"):
            decompress(model, head.pack() + payload)


def test_another_models_file_is_refused_before_decoding(tmp_path, monkeypatch):
    model = build("transformer")
    x, _ = model_data(model)
    data = compress(model, x)
    model.save(tmp_path / "ckpt")
    same = chainrule.load(tmp_path / "ckpt")
    assert model_fingerprint(same) == model_fingerprint(model)
    assert torch.equal(decompress(same, data), x)  # the same weights and config, loaded again
    other = build("transformer", seed=5)  # same architecture, other weights

    def no_decoding(*args, **kw):
        raise AssertionError("decoding started")

    monkeypatch.setattr(cz, "_decode", no_decoding)
    with pytest.raises(InputError, match="compressed with a different model"):
        decompress(other, data)
    bigger = chainrule.create_model("transformer", (16,), 5, num_layers=2, num_heads=1, embed_dim=8)
    with pytest.raises(InputError, match="different model"):
        decompress(bigger, data)


def test_truncated_or_corrupted_files_raise(tmp_path):
    model = build("nade")
    x, _ = model_data(model, 40)
    data = compress(model, x)
    head, payload = read_header(data)
    assert len(payload) >= 8
    for cut in (0, 3, 20, head.header_length - 1, head.header_length, len(data) - 4, len(data) - 1):
        with pytest.raises(InputError, match="truncated|not a chainrule|corrupted"):
            decompress(model, data[:cut])
    with pytest.raises(InputError, match="extra bytes"):
        decompress(model, data + b"\0")
    for pos in (head.header_length, head.header_length + len(payload) // 2, len(data) - 1):  # payload bytes
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(InputError, match="corrupted"):
            decompress(model, bytes(bad))
    for pos in (5, 45, 60):  # header bytes: version, the number of examples, the metadata
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(InputError):
            decompress(model, bytes(bad))


def test_a_payload_that_decodes_to_other_values_fails_the_content_check():
    """Valid CRCs, wrong content (what tables that differ from the encoder's produce): the SHA-256
    of the content refuses it rather than returning other values."""
    model = build("nade")
    x1, _ = model_data(model, 10, seed=1)
    x2, _ = model_data(model, 10, seed=2)
    assert not torch.equal(x1, x2)
    h1, _ = read_header(compress(model, x1))
    _, p2 = read_header(compress(model, x2))
    h1.payload_length, h1.payload_crc32 = len(p2), zlib.crc32(p2)
    with pytest.raises(InputError, match="SHA-256"):
        decompress(model, h1.pack() + p2)


def tiny_text_model(k: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    return chainrule.create_model("lstm", (32,), k, hidden_size=8, num_layers=1, embedding_size=4).eval()


TEXT = "Grüße aus Köln — naïve café, 東京, ✓ ünïcödé.\nA second line\twith a tab.\r\n" * 2


def test_text_round_trip_gives_the_exact_bytes():
    model, tok = tiny_text_model(), ByteTokenizer(specials=())
    raw = TEXT.encode("utf-8")
    assert len(raw) % 32  # the last window is padded
    data = compress_text(model, raw, tok)
    head, payload = read_header(data)
    assert head.num_examples == math.ceil(len(raw) / 32) and head.meta["tokens"] == len(raw)
    assert decompress_text(model, data, tok) == raw
    # the padding of the last window is the model's most probable token at each padded position
    _, windows, _ = cz._decompress_values(model, data)
    idx, tables = encoding_tables(model, windows)  # (T, N, K), positions in order for an lstm
    assert idx == list(range(32))
    pad = range(len(raw) % 32, 32)
    assert [int(windows[-1, j]) for j in pad] == [int(tables[j, -1].argmax()) for j in pad]
    binary = bytes(range(256)) + b"\xff\xfe not utf-8 \xc3"  # a byte model takes any bytes
    assert decompress_text(model, compress_text(model, binary, tok), tok) == binary
    assert decompress_text(model, compress_text(model, b"", tok), tok) == b""
    with pytest.raises(InputError, match="holds text"):
        decompress(model, data)


def test_text_with_a_lossy_tokenizer_is_refused():
    tok = CharTokenizer.fit("abc ", specials=(), unk=True)  # unknown characters become <unk>
    model = tiny_text_model(tok.vocab_size)
    assert decompress_text(model, compress_text(model, "a cab", tok), tok) == b"a cab"
    with pytest.raises(InputError, match="does not give the text back"):
        compress_text(model, "a dab", tok)


def save_run(model, path, **extra):
    model.save(path / "best", extra=extra)
    return str(path)


def test_cli_round_trip_and_a_corrupted_file(tmp_path, capsys):
    model = build("nade")
    run = save_run(model, tmp_path / "run", dataset="digits")
    x, _ = model_data(model, 20)
    np.save(tmp_path / "x.npy", x.numpy().astype(np.uint8))
    assert main(["compress", run, str(tmp_path / "x.npy"), str(tmp_path / "x.crz"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "-log2 p(x)" in out and "20 example(s)" in out
    assert main(["decompress", run, str(tmp_path / "x.crz"), str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.uint8 and np.array_equal(y, x.numpy())
    # a flipped payload byte: a non-zero exit and one line on stderr
    bad = bytearray((tmp_path / "x.crz").read_bytes())
    bad[-2] ^= 0xFF
    (tmp_path / "bad.crz").write_bytes(bytes(bad))
    capsys.readouterr()
    assert main(["decompress", run, str(tmp_path / "bad.crz"), str(tmp_path / "z.npy")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("chainrule: error:") and "corrupted" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "z.npy").exists()
    # another run's file
    other = save_run(build("nade", seed=7), tmp_path / "other")
    assert main(["decompress", other, str(tmp_path / "x.crz"), str(tmp_path / "z.npy")]) != 0
    assert "different model" in capsys.readouterr().err


def test_cli_images_labels_and_text(tmp_path, capsys):
    # a folder of binary PNGs -> PNGs back
    model = build("nade")
    run = save_run(model, tmp_path / "img")
    x, _ = model_data(model, 3)
    (tmp_path / "pngs").mkdir()
    for i, a in enumerate(x.numpy()):
        Image.fromarray((a[0] * 255).astype(np.uint8)).save(tmp_path / "pngs" / f"{i}.png")
    assert main(["compress", run, str(tmp_path / "pngs"), str(tmp_path / "i.crz")]) == 0
    assert main(["decompress", run, str(tmp_path / "i.crz"), str(tmp_path / "back.png")]) == 0
    back = [np.asarray(Image.open(tmp_path / f"back-{i:03d}.png")) for i in range(3)]
    assert np.array_equal(np.stack(back) // 255, x.numpy()[:, 0])
    # a class-conditional run: --class is needed, then stored in the file
    cond = build("made-pixel-class")
    crun = save_run(cond, tmp_path / "cond")
    xc, _ = model_data(cond, 4)
    np.save(tmp_path / "c.npy", xc.numpy())
    assert main(["compress", crun, str(tmp_path / "c.npy"), str(tmp_path / "c.crz")]) != 0
    assert "--class" in capsys.readouterr().err
    assert main(["compress", crun, str(tmp_path / "c.npy"), str(tmp_path / "c.crz"), "--class", "0", "1", "2", "0"]) == 0
    assert main(["decompress", crun, str(tmp_path / "c.crz"), str(tmp_path / "c2.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "c2.npy"), xc.numpy())
    # a text run (byte level): the file back byte for byte
    tok = ByteTokenizer(specials=())
    trun = save_run(tiny_text_model(), tmp_path / "text", tokenizer=tok.to_dict())
    (tmp_path / "t.txt").write_bytes(TEXT.encode("utf-8"))
    capsys.readouterr()
    assert main(["compress", trun, str(tmp_path / "t.txt"), str(tmp_path / "t.crz")]) == 0
    assert f"{len(TEXT.encode('utf-8'))} bytes (the input file" in capsys.readouterr().out
    assert main(["decompress", trun, str(tmp_path / "t.crz"), str(tmp_path / "t2.txt")]) == 0
    assert (tmp_path / "t2.txt").read_bytes() == TEXT.encode("utf-8")


def test_cli_dataset_input(tmp_path, capsys):
    """A dataset name with --split / --index, as `complete` takes it (the bundled 8x8 digits)."""
    from chainrule.data import load_dataset

    torch.manual_seed(0)
    model = chainrule.create_model("nade", (1, 8, 8), 17, hidden_size=8)
    run = save_run(model, tmp_path / "run", dataset="digits")
    assert main(["compress", run, "digits", str(tmp_path / "d.crz"), "--split", "test", "--index", "0", "5"]) == 0
    assert "2 example(s) from digits test examples 0, 5" in capsys.readouterr().out
    assert main(["decompress", run, str(tmp_path / "d.crz"), str(tmp_path / "d.npy")]) == 0
    want = load_dataset("digits").split("test")[0][[0, 5]]
    assert np.array_equal(np.load(tmp_path / "d.npy"), torch.as_tensor(want).numpy())
    # without --index: the whole split, in one stream
    capsys.readouterr()
    assert main(["compress", run, "digits", str(tmp_path / "all.crz"), "--split", "val"]) == 0
    assert "the val split of digits (350 examples)" in capsys.readouterr().out
    assert main(["decompress", run, str(tmp_path / "all.crz"), str(tmp_path / "all.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "all.npy"), torch.as_tensor(load_dataset("digits").split("val")[0]).numpy())
