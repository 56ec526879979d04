"""The tracebacks a new user met in a first trial of the CLI and API (issue 12's first list): each
is now a one-line error naming the problem (exit code 2 on the command line), or works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chainrule
from chainrule.cli import main
from chainrule.errors import ChainruleError, InputError
from chainrule.lm.ngram import NgramLM


@pytest.fixture(scope="module")
def bits(tmp_path_factory):
    path = tmp_path_factory.mktemp("trial") / "bits.npy"
    np.save(path, (np.random.default_rng(0).random((40, 1, 4, 4)) < 0.5).astype(np.uint8))
    return path


@pytest.mark.parametrize("model, param, named", [
    ("made", "hidden_sizes=500", "hidden_sizes must be a list"),
    ("made", "hidden_sizes=[500", "not valid JSON"),
    ("lstm", "num_layers=abc", "num_layers must be a positive integer"),
    ("nade", "hidden_size=-5", "hidden_size must be a positive integer"),
    ("nade", "hidden_size=0", "hidden_size must be a positive integer"),
    ("transformer", "num_heads=0", "num_heads must be a positive integer"),
    ("nade", 'hidden_size="abc"', "hidden_size must be a positive integer"),
])
def test_bad_hyperparameters_are_one_line_errors(bits, tmp_path, capsys, model, param, named):
    out = tmp_path / "run"
    code = main(["train", model, "--dataset", str(bits), "-p", param, "--epochs", "1", "--out", str(out),
                 "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert named in err and err.startswith("chainrule: error:") and "Traceback" not in err
    assert not out.exists()  # refused before anything was written


@pytest.fixture()
def ngram_dir(tmp_path):
    lm = NgramLM(order=3, smoothing="kneser-ney").fit([["to", "be", "or"], ["not", "to", "be"], ["to", "be"]] * 3)
    return lm.save(tmp_path / "kn3")


def test_a_truncated_ngram_archive(ngram_dir, capsys):
    arrays = ngram_dir / "ngram.npz"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    with pytest.raises(ChainruleError, match="damaged"):
        NgramLM.load(ngram_dir)
    assert main(["ngram", "export-arpa", str(ngram_dir), str(ngram_dir / "x.arpa")]) == 2
    assert "ngram.npz" in capsys.readouterr().err
    assert not (ngram_dir / "x.arpa").exists()


def test_export_arpa_to_an_unwritable_path(ngram_dir, tmp_path, capsys):
    for target, said in ((tmp_path / "no" / "such" / "dir" / "m.arpa", "cannot write the ARPA file"),  # a missing folder
                         (tmp_path, "is a directory; give a file name")):  # a directory (the output policy)
        assert main(["ngram", "export-arpa", str(ngram_dir), str(target)]) == 2
        assert said in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind
    assert main(["ngram", "export-arpa", str(ngram_dir), str(tmp_path / "m.arpa")]) == 0
    assert (tmp_path / "m.arpa").read_text().startswith("\\data\\")


def test_log_prob_of_one_example_and_of_an_empty_batch():
    model = chainrule.create_model("nade", (1, 4, 4), 2, hidden_size=8)
    x = torch.randint(0, 2, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    one = model.log_prob(x[0])  # no batch dimension: one example, a scalar
    assert one.shape == () and torch.allclose(one, model.log_prob(x)[0])
    assert model.log_prob(x[:0]).shape == (0,)


@pytest.mark.parametrize("n", [True, 0, -1, 2.5, "3"])
def test_sample_needs_a_positive_integer(n):
    model = chainrule.create_model("nade", (1, 4, 4), 2, hidden_size=8)
    with pytest.raises(InputError, match="n must be a positive integer"):
        model.sample(n)


def test_order_takes_the_permutation_its_error_message_offers(bits, tmp_path, capsys):
    perm = list(range(15, -1, -1))
    assert main(["train", "fvsbn", "--dataset", str(bits), "--order", str(perm), "--epochs", "1", "--out",
                 str(tmp_path / "run"), "--no-progress", "--threads", "1", "--num-samples", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "fvsbn", "--dataset", str(bits), "--order", "[2, 0, 1]", "--epochs", "1", "--out",
                 str(tmp_path / "bad"), "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "permutation of range(16)" in err and not (tmp_path / "bad").exists()
