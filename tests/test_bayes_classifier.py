"""A class-conditional model as a Bayes classifier: argmax_y p(x | y) p(y), from the API and `eval --bayes`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import chainrule
from chainrule.cli.main import main
from chainrule.errors import InputError
from chainrule.inference.likelihood import bayes_classify, class_log_likelihoods
from chainrule.training import TrainConfig, Trainer


def _two_class_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: pixels on with probability 0.15, class 1: 0.85 — separable from a few pixels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    p = torch.where(y == 1, 0.85, 0.15)[:, None, None, None]
    return (torch.rand(n, 1, 3, 3, generator=g) < p).long(), y


def test_posterior_is_bayes_rule_and_a_trained_model_classifies():
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (1, 3, 3), 2, hidden_size=8, num_classes=2)
    x, y = _two_class_data(600)
    Trainer(model, TrainConfig(epochs=30, lr=1e-2, patience=None), progress=False).fit(x[:500], train_context=y[:500])
    xt, yt = x[500:], y[500:]
    prior = torch.tensor([0.3, 0.7])
    res = bayes_classify(model, xt, yt, prior)
    ll = class_log_likelihoods(model, xt)  # (N, 2)
    expected = ll + prior.double().log()
    expected = expected - torch.logsumexp(expected, 1, keepdim=True)
    assert torch.allclose(res.log_posterior, expected)
    assert torch.allclose(res.log_posterior.exp().sum(1), torch.ones(len(xt), dtype=torch.float64))
    assert abs(res.nll_given_label_nats - float(-model.log_prob(xt, yt).detach().double().mean())) < 1e-4
    assert res.accuracy > 0.95  # the classes are nearly separable from 9 pixels
    # the marginal -log sum_y p(x|y) p(y) is a likelihood of x: at most -log p(x|y_true) - log p(y_true)
    bound = -(ll[torch.arange(len(yt)), yt] + prior.double().log()[yt]).mean()
    assert res.nll_marginal_nats <= float(bound) + 1e-9
    uniform = bayes_classify(model, xt, yt)  # default prior: uniform
    assert abs(uniform.nll_marginal_nats - float(-(torch.logsumexp(ll, 1) - math.log(2)).mean())) < 1e-9


def test_bayes_classifier_errors():
    cond = chainrule.create_model("nade", (4,), 2, hidden_size=4, num_classes=3)
    x = torch.randint(2, (5, 4))
    with pytest.raises(InputError, match="class-conditional"):
        bayes_classify(chainrule.create_model("nade", (4,), 2, hidden_size=4), x)
    with pytest.raises(InputError, match="3 non-negative probabilities"):
        bayes_classify(cond, x, prior=[0.5, 0.5])
    with pytest.raises(InputError, match="class indices"):
        bayes_classify(cond, x, labels=torch.tensor([0, 1, 2, 3, 0]))


def test_cli_eval_bayes(tmp_path, capsys):
    x, y = _two_class_data(400, seed=1)
    np.savez(tmp_path / "toy.npz", train=x[:300].numpy(), val=x[300:350].numpy(), test=x[350:].numpy(),
             train_labels=y[:300].numpy(), val_labels=y[300:350].numpy(), test_labels=y[350:].numpy())
    run = tmp_path / "run"
    assert main(["train", "nade", "--dataset", str(tmp_path / "toy.npz"), "--class-conditional", "-p", "hidden_size=8",
                 "--epochs", "15", "--lr", "0.01", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--bayes", "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Bayes classifier accuracy" in out
    res = json.loads(out.strip().splitlines()[-1])
    assert res["accuracy"] > 0.9 and res["num_classes"] == 2 and res["nll_marginal_nats"] > 0
    uncond = tmp_path / "uncond"
    assert main(["train", "nade", "--dataset", str(tmp_path / "toy.npz"), "-p", "hidden_size=4", "--epochs", "1",
                 "--out", str(uncond), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", str(uncond), "--bayes", "--no-progress"]) == 2
    assert "class-conditional" in capsys.readouterr().err


def test_class_conditional_samples_have_one_column_per_class(tmp_path, capsys):
    """`sample` draws every class in turn; the grid puts each class in its own column."""
    from PIL import Image

    from chainrule.apps.pipeline import class_columns
    from chainrule.apps.plotting import image_grid

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(60, 1, 4, 4, generator=g) < 0.4).long()
    y = torch.arange(60) % 3
    np.savez(tmp_path / "img.npz", train=x[:40].numpy(), val=x[40:50].numpy(), test=x[50:].numpy(),
             train_labels=y[:40].numpy(), val_labels=y[40:50].numpy(), test_labels=y[50:].numpy())
    run = tmp_path / "run"
    assert main(["train", "made", "--dataset", str(tmp_path / "img.npz"), "--class-conditional", "-p", "hidden_sizes=[8]",
                 "--epochs", "1", "--out", str(run), "--no-progress", "--num-samples", "12"]) == 0
    # the run's own samples too: 3 columns of 4, not the square-ish 4 x 3 of unlabelled samples
    assert Image.open(run / "samples.png").size == image_grid(x[:12], 2, ncol=3).size != image_grid(x[:12], 2).size
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "12", "--seed", "1", "--out", str(tmp_path / "s.png")]) == 0
    assert "one column per class, 0..2" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "12", "--seed", "1", "--out", str(tmp_path / "s.npy")]) == 0
    drawn = torch.from_numpy(np.load(tmp_path / "s.npy"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png").convert("L")),
                          np.asarray(image_grid(drawn, 2, ncol=3).convert("L")))
    assert class_columns(3, 5) is None and class_columns(None, 40) is None and class_columns(10, 40) == 10
