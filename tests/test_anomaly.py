"""Anomaly / OOD detection from the exact likelihood: chainrule.apps.anomaly, `chainrule score`, `chainrule detect`."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import chainrule
from chainrule.apps.anomaly import (
    SCORES,
    auroc,
    aupr,
    bootstrap_interval,
    code_length_bits,
    compute_score,
    detect,
    detection_metrics,
    entropy_estimate,
    fpr_at_95_tpr,
    input_complexity_score,
    likelihood_ratio_score,
    nll_map,
    nll_score,
    perturb,
    train_background,
    typicality_score,
    typicality_test_from_nll,
)
from chainrule.cli import main
from chainrule.errors import InputError
from chainrule.training import TrainConfig, Trainer

SHAPE = (1, 6, 6)


def _bernoulli(n: int, p: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=g) < p).long()


def _untrained(shape=SHAPE, k=2, seed=0):
    torch.manual_seed(seed)
    return chainrule.create_model("nade", shape, k, hidden_size=8)


def _config(epochs: int = 4) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=1e-2, patience=None, save_last=False)


@pytest.fixture(scope="module")
def sparse_model():
    """A tiny NADE trained on 6x6 images whose pixels are on with probability 0.1."""
    torch.manual_seed(0)
    model = chainrule.create_model("nade", SHAPE, 2, hidden_size=8)
    Trainer(model, _config(), progress=False).fit(_bernoulli(1500, 0.1, 1), None)
    return model.eval()


# ---------------------------------------------------------------------- metrics
def test_metrics_on_hand_computed_cases():
    assert auroc([0, 1, 2], [3, 4]) == 1.0 and aupr([0, 1, 2], [3, 4]) == 1.0 and fpr_at_95_tpr([0, 1, 2], [3, 4]) == 0
    assert auroc([1, 1, 1], [1, 1]) == 0.5  # identical scores: chance
    assert auroc([3, 4], [0, 1, 2]) == 0.0  # reversed: always wrong
    # in [1, 2, 3], out [2, 4]: pairs won 1 + 1/2 (the tie 2 = 2) + 0 and 3 -> 4.5 of 6
    assert auroc([1, 2, 3], [2, 4]) == pytest.approx(0.75)
    # in [1, 2, 3, 4], out [2.5, 5]: ranked 5+ 4- 3- 2.5+ ...: AP = 1/2 * 1 + 1/2 * 2/4 = 0.75
    assert aupr([1, 2, 3, 4], [2.5, 5]) == pytest.approx(0.75)
    # both OOD inputs flagged only from threshold 2.5 down: 3 and 4 of the 4 in-distribution flagged
    assert fpr_at_95_tpr([1, 2, 3, 4], [2.5, 5]) == pytest.approx(0.5)
    # 20 OOD inputs, one of them (0.5) below every in-distribution score: 19/20 = 95% TPR at
    # threshold 10, which flags 1 of the 10 in-distribution inputs (15)
    out = [0.5] + list(range(10, 29))
    inn = list(range(1, 10)) + [15]
    assert fpr_at_95_tpr(inn, out) == pytest.approx(0.1)
    assert fpr_at_95_tpr(inn, out, tpr=1.0) == pytest.approx(1.0)  # every OOD input: threshold 0.5
    with pytest.raises(InputError, match="both"):
        auroc([], [1.0])
    with pytest.raises(InputError, match="NaN"):
        auroc([1.0, math.nan], [2.0])


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    point = auroc(a, b)
    lo, hi = bootstrap_interval(auroc, a, b, num_resamples=150, seed=3)
    assert lo < point < hi and 0.6 < lo and hi < 0.9
    assert bootstrap_interval(auroc, a, b, num_resamples=150, seed=3) == (lo, hi)
    assert bootstrap_interval(auroc, a, b, num_resamples=150, seed=4) != (lo, hi)
    res = detection_metrics(a, b, num_resamples=100, seed=1)
    for name in ("auroc", "aupr", "fpr_at_95_tpr"):
        m = res[name]
        assert m.low <= m.value <= m.high
    assert res["auroc"].value == point and res.num_in == 200 and res.num_out == 150
    assert "AUROC" in res.lines()[0]


# ---------------------------------------------------------------------- perturbation
def test_perturb_changes_about_rate_d_values_and_keeps_the_range():
    x = torch.randint(256, (200, 1, 10, 10), generator=torch.Generator().manual_seed(0))
    y = perturb(x, 256, 0.2, torch.Generator().manual_seed(1))
    changed = float((y != x).double().mean())
    assert abs(changed - 0.2) < 0.01  # 20,000 values: std 0.003
    assert y.dtype == x.dtype and y.shape == x.shape and int(y.min()) >= 0 and int(y.max()) <= 255
    assert torch.equal(y, perturb(x, 256, 0.2, torch.Generator().manual_seed(1)))  # seeded
    b = _bernoulli(500, 0.3, 2)
    flipped = float((perturb(b, 2, 0.1, torch.Generator().manual_seed(0)) != b).double().mean())
    assert abs(flipped - 0.1) < 0.01  # binary data: the rate is the flip rate, not half of it
    assert torch.equal(perturb(b, 2, 0.0), b)
    with pytest.raises(InputError):
        perturb(b, 2, 1.5)
    with pytest.raises(InputError, match="discrete"):
        perturb(b.float(), None, 0.1)


# ---------------------------------------------------------------------- scores
def test_nll_score_is_minus_log_prob_over_d_ln2():
    model, x = _untrained(), _bernoulli(7, 0.3, 3)
    want = (-model.log_prob(x).double() / (model.dim * math.log(2))).detach().numpy()
    got = nll_score(model, x)
    assert got.dtype == np.float64 and got.shape == (7,)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(compute_score("nll", model, x, batch_size=3), want, rtol=1e-6)


def test_input_complexity_subtracts_the_png_code_length():
    model = _untrained((1, 8, 8), 17)
    x = torch.randint(17, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x[1] = 0  # a flat image compresses to almost nothing
    buf = io.BytesIO()
    Image.fromarray(x[0, 0].numpy().astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    png_bits = 8 * len(buf.getvalue())
    assert code_length_bits(x, 17)[0] == png_bits
    s = input_complexity_score(model, x)
    np.testing.assert_allclose(s[0], nll_score(model, x[:1])[0] - png_bits / 64, rtol=1e-9)
    lengths = code_length_bits(x, 17)
    assert lengths[1] < lengths[0]
    xz = code_length_bits(x, 17, "xz")
    np.testing.assert_allclose(input_complexity_score(model, x, compressor="xz"), nll_score(model, x) - xz / 64)
    assert code_length_bits(x, 17, "bz2").shape == (3,)
    with pytest.raises(InputError, match="images"):
        code_length_bits(torch.zeros(2, 5, dtype=torch.long), 2, "png")
    with pytest.raises(InputError, match="compressor"):
        code_length_bits(x, 17, "zip")


def test_typicality_uses_the_validation_mean():
    model = _untrained()
    val, x = _bernoulli(40, 0.3, 4), _bernoulli(6, 0.6, 5)
    h = float(nll_score(model, val).mean())
    assert entropy_estimate(model, val) == pytest.approx(h)
    want = np.abs(nll_score(model, x) - h)
    np.testing.assert_allclose(typicality_score(model, x, reference=val), want)
    np.testing.assert_allclose(typicality_score(model, x, reference=h), want)
    np.testing.assert_allclose(compute_score("typicality", model, x, reference=h), want)
    with pytest.raises(InputError, match="reference"):
        compute_score("typicality", model, x)


def test_the_registry_checks_names_and_options():
    model, x = _untrained(), _bernoulli(3, 0.3, 0)
    assert set(SCORES) == {"nll", "likelihood-ratio", "input-complexity", "typicality"}
    with pytest.raises(InputError, match="unknown score"):
        compute_score("entropy", model, x)
    with pytest.raises(InputError, match="background"):
        compute_score("likelihood-ratio", model, x)
    with pytest.raises(InputError, match="unknown option"):
        compute_score("nll", model, x, compressor="png")
    with pytest.raises(InputError, match="background model"):
        likelihood_ratio_score(model, x, background=_untrained((1, 4, 4)))


def test_typicality_batch_test_flags_atypical_groups():
    rng = np.random.default_rng(0)
    ref = rng.normal(1.0, 0.2, 2000)  # held-out in-distribution NLLs, bits/dim
    t_in = typicality_test_from_nll(rng.normal(1.0, 0.2, 400), ref, group_size=10, alpha=0.05)
    t_out = typicality_test_from_nll(rng.normal(0.8, 0.2, 400), ref, group_size=10, alpha=0.05)  # *more* likely
    assert t_in.statistic.shape == (40,) and t_in.entropy_bits == pytest.approx(ref.mean())
    assert t_in.is_ood.mean() < 0.2 and t_out.is_ood.mean() > 0.9
    with pytest.raises(InputError, match="group"):
        typicality_test_from_nll(ref[:5], ref, group_size=10)


# ---------------------------------------------------------------------- a trained model
def test_nll_detects_the_denser_images(sparse_model):
    x_in, x_out = _bernoulli(300, 0.1, 10), _bernoulli(300, 0.5, 11)
    res = detect(sparse_model, x_in, x_out, "nll", num_resamples=100)
    assert res["auroc"].value > 0.95 and res["fpr_at_95_tpr"].value < 0.3
    typ = detect(sparse_model, x_in, x_out, "typicality", num_resamples=50, reference=_bernoulli(300, 0.1, 12))
    assert typ["auroc"].value > 0.95


def test_background_model_and_likelihood_ratio(sparse_model, tmp_path):
    train = _bernoulli(1500, 0.1, 1)
    bg = train_background(sparse_model, train, 0.2, _config(), val_data=_bernoulli(200, 0.1, 2),
                          out_dir=tmp_path / "bg")
    assert (tmp_path / "bg" / "best" / "config.json").is_file()
    assert chainrule.load(tmp_path / "bg" / "best").config == sparse_model.config  # same architecture
    noisy = perturb(_bernoulli(300, 0.1, 3), 2, 0.2, torch.Generator().manual_seed(0))
    assert nll_score(bg, noisy).mean() < nll_score(sparse_model, noisy).mean()  # it learned the perturbed data
    x = _bernoulli(20, 0.3, 4)
    np.testing.assert_allclose(likelihood_ratio_score(sparse_model, x, background=bg),
                               nll_score(sparse_model, x) - nll_score(bg, x), rtol=1e-12)


def test_nll_map_sums_to_the_nll(sparse_model):
    x = _bernoulli(5, 0.2, 6)
    m = nll_map(sparse_model, x, bits=False, batch_size=2)
    assert m.shape == (5, *SHAPE) and m.dtype == np.float64 and (m >= 0).all()
    np.testing.assert_allclose(m.reshape(5, -1).sum(1), -sparse_model.log_prob(x).double().detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(nll_map(sparse_model, x).reshape(5, -1).sum(1) / sparse_model.dim,
                               nll_score(sparse_model, x), rtol=1e-5)


# ---------------------------------------------------------------------- the command line
def _run(model, path, **extra):
    model.save(path / "best", extra=extra)
    return str(path)


def test_cli_score_writes_one_row_per_input_and_maps(sparse_model, tmp_path, capsys):
    run = _run(sparse_model, tmp_path / "run")
    np.save(tmp_path / "x.npy", _bernoulli(12, 0.3, 7).numpy())
    out = tmp_path / "s.csv"
    assert main(["score", run, str(tmp_path / "x.npy"), "--out", str(out), "--maps", str(tmp_path / "m.png"),
                 "--threads", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "most anomalous" in printed and "mean" in printed
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["index", "score"] and len(rows) == 13
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], nll_score(sparse_model, _bernoulli(12, 0.3, 7)))
    assert Image.open(tmp_path / "m.png").size[0] > 100
    # image files and the input-complexity score, default CSV path in the run
    for i, a in enumerate(_bernoulli(2, 0.3, 8).numpy()):
        Image.fromarray((a[0] * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["score", run, str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--score", "input-complexity"]) == 0
    assert len(list(csv.reader(open(tmp_path / "run" / "scores-2-images-input-complexity.csv")))) == 3


def test_cli_detect_prints_the_metrics_and_writes_the_histogram(sparse_model, tmp_path, capsys):
    run = _run(sparse_model, tmp_path / "run")
    np.save(tmp_path / "in.npy", _bernoulli(100, 0.1, 20).numpy())
    np.save(tmp_path / "out.npy", _bernoulli(80, 0.5, 21).numpy())
    argv = ["detect", run, "--in", str(tmp_path / "in.npy"), "--ood", str(tmp_path / "out.npy"), "--bootstrap", "50",
            "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("AUROC"))
    assert float(line.split()[1]) > 0.95 and "[" in line and "FPR at 95% TPR" in printed
    assert (tmp_path / "run" / "detect-in-vs-out-nll.png").is_file()
    assert main(argv + ["--score", "input-complexity", "--report", str(tmp_path / "r.png")]) == 0
    assert Image.open(tmp_path / "r.png").size == (600, 400)


def test_cli_mismatched_inputs_exit_2_with_one_line(sparse_model, tmp_path, capsys):
    run = _run(sparse_model, tmp_path / "run", dataset="digits")
    np.save(tmp_path / "in.npy", _bernoulli(10, 0.1, 0).numpy())
    np.save(tmp_path / "bad.npy", np.zeros((5, 1, 5, 5), dtype=np.int64))
    capsys.readouterr()
    assert main(["detect", run, "--in", str(tmp_path / "in.npy"), "--ood", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("chainrule: error: --ood") and "bad.npy" in err and len(err.splitlines()) == 1
    # a dataset of another shape and number of values (the 8x8 digits, 17 levels)
    assert main(["detect", run, "--in", str(tmp_path / "in.npy"), "--ood", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert "(1, 8, 8)" in err and "num_values=17" in err and len(err.splitlines()) == 1
    assert main(["score", run, str(tmp_path / "bad.npy")]) == 2
    assert capsys.readouterr().err.startswith("chainrule: error: INPUT")
    assert main(["detect", run, "--in", str(tmp_path / "in.npy"), "--ood", str(tmp_path / "in.npy"),
                 "--score", "likelihood-ratio"]) == 2
    assert "background" in capsys.readouterr().err


def test_cli_trains_a_background_model_and_reuses_it(tmp_path, capsys):
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (1, 8, 8), 17, hidden_size=8)
    run = _run(model, tmp_path / "run", dataset="digits",
               train_config={"epochs": 50, "batch_size": 128, "lr": 0.01, "patience": 5})
    rng = np.random.default_rng(0)
    np.save(tmp_path / "noise.npy", rng.integers(0, 17, (40, 1, 8, 8)))
    argv = ["detect", run, "--ood", str(tmp_path / "noise.npy"), "--limit", "60", "--score", "likelihood-ratio",
            "--bootstrap", "20", "--threads", "1", "--no-progress"]
    assert main(argv + ["--train-background", "0.2", "--background-epochs", "2", "--background-steps-per-epoch", "3",
                        "--background-weight-decay", "0.001"]) == 0
    printed = capsys.readouterr().out
    assert "training a background model" in printed and "2 epoch(s) of 3 steps" in printed and "AUROC" in printed
    assert (tmp_path / "run" / "background" / "best" / "config.json").is_file()
    state = json.loads((tmp_path / "run" / "background" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 6  # 2 epochs of 3 steps, not the run's whole epochs
    saved = json.loads((tmp_path / "run" / "background" / "best" / "config.json").read_text())["extra"]["train_config"]
    assert saved["weight_decay"] == 0.001  # the background's own L2, not the run's 0
    assert main(argv + ["--train-background", "0.2", "--background-weight-decay", "-1"]) == 2
    assert "--background-weight-decay must be a number >= 0" in capsys.readouterr().err
    assert main(argv + ["--train-background", "0.2", "--background-steps-per-epoch", "0"]) == 2
    assert "--background-steps-per-epoch must be a positive integer" in capsys.readouterr().err
    assert main(argv) == 0  # RUN/background is found on its own
    assert "using the background model" in capsys.readouterr().out


def test_cli_detect_out_is_a_deprecated_spelling_of_ood(sparse_model, tmp_path, capsys):
    """--out names an output file in every other command; detect's OOD data are --ood, and the old
    --out still works with a warning (both at once, or neither: a one-line error)."""
    run = _run(sparse_model, tmp_path / "run")
    np.save(tmp_path / "in.npy", _bernoulli(30, 0.1, 20).numpy())
    np.save(tmp_path / "out.npy", _bernoulli(30, 0.5, 21).numpy())
    common = ["detect", run, "--in", str(tmp_path / "in.npy"), "--bootstrap", "10", "--threads", "1", "--no-progress"]
    assert main(common + ["--ood", str(tmp_path / "out.npy")]) == 0
    new_out, new_err = capsys.readouterr()
    assert "deprecated" not in new_err
    assert main(common + ["--out", str(tmp_path / "out.npy")]) == 0
    old_out, old_err = capsys.readouterr()
    assert "`detect --out` is deprecated" in old_err and "--ood" in old_err
    auroc = [next(ln for ln in o.splitlines() if ln.startswith("AUROC")) for o in (new_out, old_out)]
    assert auroc[0] == auroc[1]
    assert main(common + ["--out", str(tmp_path / "out.npy"), "--ood", str(tmp_path / "out.npy")]) == 2
    assert "pass --ood only" in capsys.readouterr().err
    assert main(common) == 2
    assert "--ood DATA" in capsys.readouterr().err
