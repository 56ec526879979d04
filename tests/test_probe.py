"""Linear probes of learned features (chainrule.apps.probe, `chainrule probe`; iGPT, Chen et al. 2020):
the layers each model's features accept, pooled features batch by batch, probes on the bundled
digits (raw pixels well above chance, a row for every layer), clear errors for models without
features and for unlabelled data, and the command line end to end on a tiny saved run."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch

import chainrule
from chainrule.apps.probe import (
    ProbeResult,
    extract,
    extract_layers,
    feature_layers,
    fit_probe,
    layer_count,
    pixels,
    probe,
)
from chainrule.cli.main import main
from chainrule.data import load_dataset
from chainrule.errors import InputError

SHAPE = (1, 8, 8)  # the digits
K = 17
FAST_CS = (0.1, 1.0)  # two strengths keep the API tests quick; the CLI uses the default grid

# name -> (hyperparameters, the number of feature layers they give)
TINY = {
    "causalconv": ({"channels": 8, "num_layers": 3, "kernel_size": 3}, 2),  # the hidden convs 0 and 1 (not the output)
    "transformer": ({"num_layers": 2, "num_heads": 2, "embed_dim": 16}, 3),  # embeddings + 2 blocks
    "gated_pixelcnn": ({"channels": 6, "num_layers": 2, "first_kernel_size": 3}, 2),
    "made": ({"hidden_sizes": [16, 12]}, 2),
    "nade": ({"hidden_size": 8}, 1),  # features take no layer: one
}


def tiny(name: str, **extra):
    torch.manual_seed(0)
    return chainrule.create_model(name, SHAPE, K, **TINY[name][0], **extra)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ---------------------------------------------------------------------- layers
@pytest.mark.parametrize("name", list(TINY))
def test_layer_count_matches_each_models_valid_range(name):
    model = tiny(name)
    expected = TINY[name][1]
    assert layer_count(model) == expected
    assert feature_layers(model) == list(range(expected))
    x = torch.zeros(2, *SHAPE, dtype=torch.long)
    if name == "nade":
        return
    model.features(x, layer=expected - 1)  # the last one it counted is accepted ...
    with pytest.raises((InputError, IndexError)):  # ... and the next one refused
        model.features(x, layer=expected)


def test_layer_count_of_an_ensemble_reads_its_model():
    model = tiny("made", num_masks=2)
    assert type(model).__name__ == "Ensemble" and not hasattr(model, "features")
    assert layer_count(model) == 2
    assert extract(model, torch.zeros(3, *SHAPE, dtype=torch.long), 0).shape == (3, 16)


# ---------------------------------------------------------------------- extract
def test_extract_pools_per_group_features_batch_by_batch(digits):
    model = tiny("causalconv").train()  # extract switches to eval mode and back
    x = digits.test[:10]
    with torch.no_grad():
        f = model.eval().features(x, layer=1)  # (B, G, C)
    model.train()
    assert f.shape == (10, 64, 8)
    mean = extract(model, x, 1, batch_size=3)
    assert mean.shape == (10, 8) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, f.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extract(model, x, 1, batch_size=3, pool="max"), f.amax(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extract(model, x, 1, batch_size=100), mean, rtol=1e-5, atol=1e-6)
    assert model.training
    assert not np.allclose(extract(model, x, 0), mean)  # another layer, other features
    with pytest.raises(InputError, match="pool"):
        extract(model, x, 1, pool="sum")
    with pytest.raises(InputError, match="layer"):
        extract(model, x, 2)  # the output layer is not a feature layer


def test_extract_layers_reads_every_layer_from_one_pass(digits, monkeypatch):
    """extract_layers(...) == [extract(..., l) for l in layers], with one features call per batch."""
    model = tiny("causalconv")
    x = digits.test[:10]
    calls = []
    features = type(model).features

    @functools.wraps(features)  # keeps the signature: extract sees the layer argument
    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("layer"))
        return features(self, *args, **kwargs)

    single = [extract(model, x, l, batch_size=4, pool="grid:2") for l in (1, 0)]
    default = extract(model, x, None, batch_size=4)
    monkeypatch.setattr(type(model), "features", counted)
    many = extract_layers(model, x, [1, 0, None], batch_size=4, pool="grid:2")
    assert calls == [[1, 0, -1]] * 3  # 10 examples in batches of 4: three passes for all three layers
    for got, want in zip(many, single):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert many[2].shape == (10, 4 * 8)
    np.testing.assert_allclose(extract_layers(model, x, [None], batch_size=4)[0], default, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="empty"):
        extract_layers(model, x, [])
    nade = tiny("nade")  # one feature layer (layer 0 or -1): every entry is it
    a, b = extract_layers(nade, x, [0, -1])
    np.testing.assert_allclose(a, b)
    with pytest.raises(InputError, match="one layer"):
        extract_layers(nade, x, [0, 1])


def test_grid_pool_is_the_mean_over_each_image_region(digits):
    model = tiny("causalconv").eval()
    x = digits.test[:4]
    with torch.no_grad():
        f = model.features(x, layer=1).reshape(4, 8, 8, 8)  # (B, H, W, C): groups are the 8x8 pixels in raster order
    got = extract(model, x, 1, batch_size=3, pool="grid:2")
    assert got.shape == (4, 4 * 8)
    want = torch.stack([f[:, r:r + 4, c:c + 4].mean((1, 2)) for r in (0, 4) for c in (0, 4)], 1).flatten(1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extract(model, x, 1, pool="grid:1"), extract(model, x, 1), rtol=1e-5, atol=1e-6)
    # bands of unequal size (8 rows in 3 bands: 3, 3, 2) still give the mean of each band's pixels
    g3 = extract(model, x, 1, pool="grid:3").reshape(4, 3, 3, 8)
    np.testing.assert_allclose(g3[:, 2, 2], f[:, 6:, 6:].mean((1, 2)).numpy(), rtol=1e-5, atol=1e-6)
    for bad in ("grid:0", "grid:x", "grid:9", "grid"):
        with pytest.raises(InputError, match="grid"):
            extract(model, x, 1, pool=bad)


def test_extract_takes_one_vector_per_example_as_it_is(digits):
    model = tiny("made").eval()
    x = digits.test[:5]
    with torch.no_grad():
        f = model.features(x, layer=0)
    assert f.shape == (5, 16)
    np.testing.assert_allclose(extract(model, x, 0, batch_size=2), f.numpy(), rtol=1e-5, atol=1e-6)
    nade = tiny("nade")
    assert extract(nade, x).shape == extract(nade, x, 0).shape == (5, 8)
    with pytest.raises(InputError, match="one layer"):
        extract(nade, x, 1)


def test_pixels_are_the_flattened_input_in_0_1(digits):
    p = pixels(digits.test, K)
    assert p.shape == (len(digits.test), 64) and p.dtype == np.float32
    assert p.min() == 0.0 and p.max() == 1.0
    np.testing.assert_allclose(p[3] * 16, digits.test[3].reshape(-1).numpy())


# ---------------------------------------------------------------------- the probe
def test_probe_on_digits_beats_chance_and_reports_every_layer(digits):
    model = tiny("causalconv")
    lines: list[str] = []
    res = probe(model, digits, max_train=300, Cs=FAST_CS, report=lines.append)
    assert isinstance(res, ProbeResult)
    assert [r.layer for r in res.rows] == [0, 1] and [r.num_features for r in res.rows] == [8, 8]
    assert res.num_train == 300 and res.num_val == len(digits.val) and res.num_test == len(digits.test)
    assert res.baseline.layer is None and res.baseline.num_features == 64
    assert res.baseline.test_accuracy > 0.5 and res.baseline.val_accuracy > 0.5  # chance is 0.1
    assert all(r.test_accuracy > 2 * res.chance for r in res.rows)  # even random convolutions keep some signal
    assert all(0 <= r.train_accuracy <= 1 and r.C in FAST_CS for r in [*res.rows, res.baseline])
    assert res.best in res.rows and res.best.val_accuracy == max(r.val_accuracy for r in res.rows)
    assert len(lines) == 3 and lines[0].startswith("pixels")
    d = json.loads(json.dumps(res.as_dict()))
    assert d["best_layer"] == res.best.layer and len(d["layers"]) == 2 and d["baseline"]["layer"] is None
    table = "\n".join(res.lines())
    assert "pixels" in table and "<- best (val)" in table


def test_probe_layers_subset_negative_and_out_of_range(digits):
    model = tiny("transformer")
    res = probe(model, digits, layers=[-1, 0, 2], max_train=200, Cs=(1.0,))
    assert [r.layer for r in res.rows] == [2, 0]  # -1 is the last block, 2 again: probed once
    assert all(r.num_features == 16 for r in res.rows)
    with pytest.raises(InputError, match=r"-3\.\.2"):
        probe(model, digits, layers=[3], max_train=200)
    with pytest.raises(InputError, match="max_train"):
        probe(model, digits, max_train=0)


def test_the_max_train_subset_is_seeded(digits):
    model = tiny("gated_pixelcnn")
    a = probe(model, digits, layers=[1], max_train=100, Cs=(1.0,), seed=3)
    b = probe(model, digits, layers=[1], max_train=100, Cs=(1.0,), seed=3)
    c = probe(model, digits, layers=[1], max_train=100, Cs=(1.0,), seed=4)
    assert a.rows == b.rows and a.baseline == b.baseline
    assert (a.baseline.test_accuracy, a.rows[0].test_accuracy) != (c.baseline.test_accuracy, c.rows[0].test_accuracy)


def test_fit_probe_picks_c_on_the_validation_split():
    rng = np.random.default_rng(0)
    y = np.arange(300) % 2
    noise = 3 * rng.normal(size=300)
    # x0 - x1 separates the classes exactly, x0 alone poorly: strong L2 (small C) leans on x0, whose
    # correlation with the label is the only one, and is worse on the validation split
    x = np.stack([2 * y - 1 + noise, noise], 1)
    row = fit_probe((x[:200], y[:200]), (x[200:250], y[200:250]), (x[250:], y[250:]), Cs=(1e-4, 10.0))
    assert row.C == 10.0 and row.val_accuracy > 0.95 and row.test_accuracy > 0.95 and row.converged
    easy = fit_probe((x[:200], y[:200]), (x[:200], y[:200]), (x[250:], y[250:]), Cs=(10.0, 100.0))
    assert easy.C == 10.0 and easy.val_accuracy == 1.0  # a tie keeps the smaller C
    with pytest.raises(InputError, match="at least 2"):
        fit_probe((x[:10], np.zeros(10)), (x[:5], y[:5]), (x[:5], y[:5]))
    with pytest.raises(InputError, match="Cs"):
        fit_probe((x, y), (x, y), (x, y), Cs=(0.0,))


@pytest.mark.parametrize("name", ["fvsbn", "histogram"])
def test_models_without_features_are_refused(name, digits):
    model = chainrule.create_model(name, *((SHAPE, K) if name == "fvsbn" else ((1, 2, 2), 2)))  # a table needs few values
    with pytest.raises(InputError, match="no features"):
        probe(model, digits)
    with pytest.raises(InputError, match="no features"):
        extract(model, digits.test[:2])
    with pytest.raises(InputError, match="no features"):
        layer_count(model)


def test_unlabelled_data_conditional_models_and_other_shapes_are_refused(digits):
    unlabelled = dataclasses.replace(digits, train_labels=None, val_labels=None, test_labels=None, num_classes=None,
                                     class_names=None)
    with pytest.raises(InputError, match="probing needs labels"):
        probe(tiny("causalconv"), unlabelled)
    with pytest.raises(InputError, match="conditional"):
        probe(tiny("causalconv", num_classes=10), digits)  # its features read the label itself
    torch.manual_seed(0)
    other = chainrule.create_model("causalconv", (1, 4, 4), K, **TINY["causalconv"][0])
    with pytest.raises(InputError, match="shape"):
        probe(other, digits)


# ---------------------------------------------------------------------- CLI
def test_cli_probe_prints_the_table_and_writes_json_and_plot(tmp_path, capsys):
    run = tmp_path / "run"
    tiny("gated_pixelcnn").save(run / "best", extra={"dataset": "digits"})
    assert main(["probe", str(run), "--max-train", "200", "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "test acc" in out and "pixels" in out and "<- best (val)" in out
    assert str(run / "probe.json") in out and str(run / "probe.png") in out
    d = json.loads((run / "probe.json").read_text())
    assert [r["layer"] for r in d["layers"]] == [0, 1] and d["num_train"] == 200 and d["dataset"] == "digits"
    assert d["baseline"]["test_accuracy"] > 0.5 and d["best_layer"] in (0, 1)
    assert (run / "probe.png").stat().st_size > 1000

    assert main(["probe", str(run / "best"), "--layer", "-1", "--max-train", "100", "--out", str(tmp_path / "p.json"),
                 "--no-plot", "--no-progress"]) == 0
    d = json.loads((tmp_path / "p.json").read_text())
    assert [r["layer"] for r in d["layers"]] == [1] and not (tmp_path / "p.png").exists()


def test_cli_probe_errors(tmp_path, capsys):
    chainrule.create_model("fvsbn", SHAPE, K).save(tmp_path / "fv" / "best", extra={"dataset": "digits"})
    assert main(["probe", str(tmp_path / "fv"), "--no-progress"]) == 2
    assert "no features" in capsys.readouterr().err
    tiny("nade").save(tmp_path / "nade" / "best", extra={"dataset": "digits"})
    assert main(["probe", str(tmp_path / "nade"), "--layer", "4", "--no-progress"]) == 2
    assert "layer must be" in capsys.readouterr().err
    assert not (tmp_path / "nade" / "probe.json").exists()
