"""The VQ-VAE and the latent model p(z) p(x | z) (chainrule.latent, chainrule.apps.latent): the bound
against the exact marginal on a space small enough to sum, the two-part code, the codebook's
initialisation and dead-code restart, the latents:RUN dataset, and the three commands end to end."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import chainrule
from chainrule.apps import latent as lat
from chainrule.cli.main import main
from chainrule.data import load_dataset
from chainrule.errors import InputError
from chainrule.latent import VQVAE, LatentModel
from chainrule.latent import load as load_latent
from chainrule.training import TrainConfig, Trainer


def tiny_pair(num_values: int = 2, k: int = 3, seed: int = 0, head: str | None = None) -> LatentModel:
    """2x4 images -> a 1x2 code grid of K=3 codes; a MADE prior over the grid."""
    torch.manual_seed(seed)
    vq = VQVAE((1, 2, 4), num_values, codebook_size=k, code_dim=4, channels=8, downsample=1, num_res_blocks=1,
               head=head, num_mixture_components=2 if head == "logistic_mixture" else None, seed=seed)
    with torch.no_grad():  # spread the codebook so every code decodes differently
        vq.codebook.copy_(torch.randn(k, 4) * 2)
    prior = chainrule.create_model("made", vq.code_shape, k, hidden_sizes=[16])
    return LatentModel(vq, prior).eval()


def exact_log_marginal(model: LatentModel, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log sum_z p(z) p(x | z), summing over every one of the K^(h*w) code grids."""
    vq = model.vqvae
    h, w = vq.grid
    grids = torch.tensor(list(itertools.product(range(vq.codebook_size), repeat=h * w))).reshape(-1, h, w)
    log_pz = model.prior.log_prob(grids[:, None])  # (Z,)
    out = []
    for xi in x:
        log_px_z = vq.decoder_distribution(grids).log_prob(vq.pixel_groups(xi[None].expand(len(grids), -1, -1, -1))).sum(-1)
        out.append(torch.logsumexp(log_pz + log_px_z, 0))
    return torch.stack(out)


@pytest.mark.parametrize("num_values,head", [(2, None), (4, "categorical"), (4, "logistic_mixture")])
def test_bound_is_above_the_exact_nll_and_the_marginal_normalizes(num_values, head):
    model = tiny_pair(num_values, head=head)
    xs = torch.tensor(list(itertools.product(range(num_values), repeat=8)))
    if len(xs) > 4096:
        xs = xs[torch.randperm(len(xs), generator=torch.Generator().manual_seed(0))[:512]]
    xs = xs.reshape(-1, 1, 2, 4)
    with torch.no_grad():
        exact = -exact_log_marginal(model, xs)
        bound = model.nll_upper_bound(xs).float()
    assert (bound >= exact - 1e-4).all()
    assert (bound - exact).max() > 1e-3  # a bound, not an identity: the other grids carry mass
    if num_values == 2:  # all 256 images: the marginal sums to one (decoder and prior are normalized)
        assert torch.logsumexp(-exact, 0).exp().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("num_values,head", [(2, None), (4, "logistic_mixture")])
def test_two_part_code_length_equals_the_bound_and_round_trips(num_values, head):
    model = tiny_pair(num_values, head=head, seed=1)
    x = torch.randint(0, num_values, (37, 1, 2, 4), generator=torch.Generator().manual_seed(0))
    data, sizes = lat.compress(model, x, block_rows=8)
    ideal = sizes["ideal_code_bits"] + sizes["ideal_pixel_bits"]
    payload = sizes["code_bits"] + sizes["pixel_bits"]
    # the range coder's flush (<= 64 bits per part) and the 24-bit tables are the only overhead
    assert ideal - 1.0 <= payload <= ideal + 2 * 64 + 1e-3 * ideal
    with torch.no_grad():
        assert ideal == pytest.approx(float(model.nll_upper_bound(x).sum()) / math.log(2), rel=1e-6)
    back, meta = lat.decompress(model, data)
    assert torch.equal(back, x)  # bit-exact
    other = tiny_pair(num_values, head=head, seed=2)
    with pytest.raises(InputError, match="different latent model"):
        lat.decompress(other, data)
    with pytest.raises(InputError):
        lat.decompress(model, data[:-3])


def test_two_part_codes_of_the_format_4_steps_still_decode(monkeypatch):
    """The codes are range-coded like a compressed file, whose format 5 changed MADE's and NADE's
    steps: a two-part code records the format its codes were coded in (files without it: 4, the
    dense step) and decodes by that step. (On a grid this small the two steps happen to round
    alike; tests/test_compression.py has cases where they differ.)"""
    from chainrule.apps import compression as cz
    from chainrule.models.made import MADE

    vq = tiny_pair(2, seed=1).vqvae
    torch.manual_seed(1)  # value inputs: the sparse step differs from the dense one
    model = LatentModel(vq, chainrule.create_model("made", vq.code_shape, 3, hidden_sizes=[16],
                                                   input_encoding="value")).eval()
    x = torch.randint(0, 2, (37, 1, 2, 4), generator=torch.Generator().manual_seed(0))
    dense = MADE.step

    def dense_step(self, state, i, x_prev):  # what chainrule 0.4 ran: the dense arithmetic of format 4
        return dense(self, {**state, "dense": True}, i, x_prev)

    with monkeypatch.context() as m:
        m.setattr(MADE, "step", dense_step)
        m.setattr(cz, "FORMAT_VERSION", 4)
        m.setattr(lat, "CODE_FORMAT_VERSION", 4)
        old, _ = lat.compress(model, x, block_rows=8)
    back, meta = lat.decompress(model, old)
    assert meta["code_format"] == 4 and torch.equal(back, x)
    new, _ = lat.compress(model, x, block_rows=8)
    back, meta = lat.decompress(model, new)
    assert meta["code_format"] == 5 and torch.equal(back, x)


def test_kmeans_initialisation_and_dead_code_restart():
    torch.manual_seed(0)
    vq = VQVAE((1, 4, 4), 2, codebook_size=8, code_dim=3, channels=8, downsample=1, num_res_blocks=0,
               restart_every=1, restart_threshold=0.5)
    x = torch.randint(0, 2, (32, 1, 4, 4))
    vq.train()
    vq.training_loss(x)  # the first batch initialises the codebook by k-means
    assert bool(vq.initialized)
    assert len(torch.unique(vq.codebook, dim=0)) == 8
    with torch.no_grad():
        vq.codebook[4:] = 1e4  # far from every encoder output: never chosen, dead
        vq.usage[4:] = 0.0
        flat = vq.encode_vectors(x).permute(0, 2, 3, 1).reshape(-1, 3)
    restarted = vq.restart_dead_codes(flat)
    assert restarted >= 4
    assert vq.codebook[4:].abs().max() < 1e3  # moved onto encoder outputs
    assert (vq.usage == 0).all() and int(vq.usage_steps) == 0  # counting starts anew
    used = torch.unique(vq.encode(x)).numel()
    assert used > 1


def test_codebook_modes_train_through_the_trainer(tmp_path):
    x = torch.randint(0, 2, (64, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    for mode in ("ema", "loss"):
        torch.manual_seed(0)
        vq = VQVAE((1, 4, 4), 2, codebook_size=4, code_dim=3, channels=8, downsample=1, num_res_blocks=0, codebook=mode)
        before = vq.codebook.detach().clone()
        out = tmp_path / mode
        res = Trainer(vq, TrainConfig(epochs=2, batch_size=16, tensorboard=False), out_dir=out,
                      progress=False).fit(x, x[:16])
        assert res.epochs_run == 2 and math.isfinite(res.best_val_nll_nats)
        assert not torch.equal(before, vq.codebook.detach())
        header = (out / "log.csv").read_text().splitlines()[0]
        assert "codebook_perplexity" in header and "codebook_used" in header
        loaded = load_latent(out / "best")
        assert isinstance(loaded, VQVAE) and torch.equal(loaded.encode(x), vq.eval().encode(x))


def test_latents_dataset_has_the_code_grid_shape_and_k(tmp_path):
    ds = load_dataset("digits")
    vq = VQVAE(ds.shape, ds.num_values, codebook_size=16, code_dim=4, channels=8, downsample=1, num_res_blocks=0)
    lat.write_codes(vq, ds, tmp_path)
    codes = load_dataset(f"latents:{tmp_path}")
    assert codes.shape == (1, 4, 4) and codes.num_values == 16 and codes.is_image
    assert len(codes.train) == len(ds.train) and len(codes.test) == len(ds.test)
    assert torch.equal(codes.test[:, 0], vq.encode_all(ds.test))
    assert torch.equal(codes.test_labels, ds.test_labels)
    with pytest.raises(chainrule.errors.DataError, match="run directory of .chainrule train vqvae"):
        load_dataset(f"latents:{tmp_path / 'nothing'}")


def test_latent_model_rejects_a_prior_of_another_shape():
    vq = VQVAE((1, 2, 4), 2, codebook_size=3, code_dim=4, channels=8, downsample=1, num_res_blocks=0)
    with pytest.raises(InputError, match="prior"):
        LatentModel(vq, chainrule.create_model("made", (1, 1, 2), 4, hidden_sizes=[8]))


def test_three_commands_and_the_latent_run_on_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "vqvae", "--dataset", "digits", "--out", "runs/vq", "-p", "codebook_size=16",
                 "-p", "code_dim=8", "-p", "channels=16", "-p", "downsample=1", "-p", "num_res_blocks=0",
                 "--epochs", "2", "--no-progress", "--no-tensorboard", "--threads", "1"]) == 0
    assert (tmp_path / "runs/vq/codes/train.npy").is_file() and (tmp_path / "runs/vq/reconstructions.png").is_file()
    assert main(["train", "gated_pixelcnn", "--dataset", "latents:runs/vq", "--out", "runs/prior", "-p", "channels=8",
                 "-p", "num_layers=2", "--epochs", "1", "--no-progress", "--no-tensorboard", "--threads", "1",
                 "--num-samples", "4"]) == 0
    assert main(["compose", "runs/vq", "runs/prior", "--out", "runs/latent", "--threads", "1"]) == 0
    # composing again into the run: refused without --force; with it the old run is replaced, nothing left aside
    assert main(["compose", "runs/vq", "runs/prior", "--out", "runs/latent", "--threads", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["compose", "runs/vq", "runs/prior", "--out", "runs/latent", "--threads", "1", "--force"]) == 0
    assert not (tmp_path / "runs/latent/.replaced").exists() and (tmp_path / "runs/latent/best").is_dir()
    results = json.loads((tmp_path / "runs/latent/results.json").read_text())
    t = results["test_bound"]
    assert t["nll_upper_bound_nats"] == pytest.approx(t["prior_nll_nats"] + t["reconstruction_nll_nats"])
    capsys.readouterr()
    assert main(["eval", "runs/latent", "--json"]) == 0
    out = capsys.readouterr().out
    assert "upper bound" in out and "not the exact NLL" in out
    assert main(["sample", "runs/latent", "-n", "8", "--out", "s.png"]) == 0 and (tmp_path / "s.png").is_file()
    x = load_dataset("digits").test[:5].numpy()
    np.save(tmp_path / "x.npy", x)
    assert main(["compress", "runs/latent", "x.npy", "x.crz"]) == 0
    assert main(["decompress", "runs/latent", "x.crz", "y.npy"]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), x)
    assert main(["complete", "runs/latent", "--input", "digits", "--index", "0", "1", "--mask", "top-half",
                 "--num", "2", "--out", "c.png"]) == 0
    assert main(["complete", "runs/latent", "--input", "digits", "--mask", "center", "--out", "c2.png"]) == 2
    assert "whole rows from the top" in capsys.readouterr().err
    assert main(["inspect", "runs/latent", "--index", "3", "--out", "i.png"]) == 0 and (tmp_path / "i.png").is_file()
    assert main(["inspect", "runs/vq", "--out", "v.png"]) == 0
    capsys.readouterr()
    assert main(["eval", "runs/vq"]) == 0
    assert "reconstruction NLL" in capsys.readouterr().out
    assert main(["sample", "runs/vq"]) == 2
    assert "no prior" in capsys.readouterr().err
    assert main(["report", "runs/latent", "--out", "r.html"]) == 0
    assert "upper bound" in (tmp_path / "r.html").read_text()
    # the one output policy holds on latent runs too: nothing named is replaced without --force
    capsys.readouterr()
    for argv in (["sample", "runs/latent", "-n", "2", "--out", "s.png"], ["compress", "runs/latent", "x.npy", "x.crz"],
                 ["decompress", "runs/latent", "x.crz", "y.npy"], ["inspect", "runs/latent", "--out", "i.png"],
                 ["complete", "runs/latent", "--input", "digits", "--index", "0", "--mask", "top-half", "--out", "c.png"]):
        assert main(argv) == 2 and "already exists" in capsys.readouterr().err, argv
        assert main([*argv, "--force"]) == 0, argv
    assert main(["decompress", "runs/latent", "x.crz", "x.npy"]) == 2  # the original input
    assert main(["decompress", "runs/latent", "x.crz", "d.png"]) == 0 and len(list(tmp_path.glob("d-*.png"))) == 5


def test_a_class_conditional_prior_samples_bounds_and_codes_per_label():
    torch.manual_seed(0)
    vq = VQVAE((1, 2, 4), 2, codebook_size=3, code_dim=4, channels=8, downsample=1, num_res_blocks=0)
    prior = chainrule.create_model("made", vq.code_shape, 3, hidden_sizes=[16], num_classes=2)
    model = LatentModel(vq, prior).eval()
    assert model.conditional and model.num_classes == 2
    y = torch.tensor([0, 1, 1, 0, 1])
    x = model.sample(5, y, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 2, 4)
    with torch.no_grad():
        b0, b1 = model.nll_upper_bound(x, torch.zeros(5, dtype=torch.long)), model.nll_upper_bound(x, y)
    assert not torch.allclose(b0, b1)  # the label reaches the prior's term
    data, _ = lat.compress(model, x, y)
    back, _ = lat.decompress(model, data)
    assert torch.equal(back, x)
    with pytest.raises(InputError):
        lat.compress(model, x)  # a conditional model needs its labels
