"""Model-specific checks of the classic density estimators (beyond the shared registry suite)."""

from __future__ import annotations

import math

import pytest
import torch

import chainrule
from chainrule.checks import all_configurations
from chainrule.errors import InputError
from chainrule.training import TrainConfig, Trainer


def test_histogram_counts_with_add_alpha():
    data = torch.tensor([[0, 1], [0, 1], [1, 1], [0, 0], [0, 1]])
    model = chainrule.create_model("histogram", (2,), 2, alpha=0.5)
    model.fit_counts(data)
    space = all_configurations(model)  # 00, 01, 10, 11
    counts = torch.tensor([1.0, 3.0, 0.0, 1.0])
    expected = (counts + 0.5) / (5 + 0.5 * 4)
    assert torch.allclose(model.log_prob(space).exp(), expected, atol=1e-6)
    # the same joint under another ordering
    other = chainrule.create_model("histogram", (2,), 2, alpha=0.5, order="reversed")
    other.fit_counts(data)
    assert torch.allclose(other.log_prob(space), model.log_prob(space), atol=1e-6)


def test_histogram_mle_and_trainer_uses_counting(tmp_path):
    data = torch.randint(3, (200, 3))
    model = chainrule.create_model("histogram", (3,), 3, alpha=0.0)
    res = Trainer(model, TrainConfig(epochs=50), out_dir=tmp_path, progress=False).fit(data, data[:50])
    assert res.epochs_run == 1
    idx = data[:, 0] * 9 + data[:, 1] * 3 + data[:, 2]
    freq = torch.bincount(idx, minlength=27).double() / 200
    assert torch.allclose(model.log_prob(all_configurations(model)).exp().double(), freq, atol=1e-6)
    assert chainrule.load(tmp_path / "best").log_prob(data).allclose(model.log_prob(data))


def test_histogram_refuses_large_spaces():
    with pytest.raises(InputError, match="configurations"):
        chainrule.create_model("histogram", (1, 28, 28), 2)
    with pytest.raises(InputError, match="alpha"):
        chainrule.create_model("histogram", (3,), 2, alpha=-1)


def test_nade_matches_its_formula():
    """h_i = sigmoid(c + W[:, <i] x_<i), p(x_i=1) = sigmoid(b_i + V_i h_i), computed naively."""
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (5,), 2, hidden_size=7, order=[3, 1, 4, 0, 2])
    x = torch.randint(2, (4, 5))
    ours = model.log_prob(x)
    order = model.order
    naive = torch.zeros(4)
    for i in range(5):
        j = int(order[i])
        a = model.c.clone()
        for jj in order[:i].tolist():
            a = a + x[:, jj:jj + 1].float() * model.W[jj, :, 0]
        logit = (torch.sigmoid(a) @ model.V[j, 0]) + model.b[j, 0]
        naive = naive + torch.where(x[:, j] == 1, torch.nn.functional.logsigmoid(logit), torch.nn.functional.logsigmoid(-logit))
    assert torch.allclose(ours, naive, atol=1e-5)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("block", [1, 3, 7, 10])
def test_nade_blocked_pass_matches_autograd_reference(activation, block):
    """The hand-written block-wise forward/backward equals plain autograd through the full
    cumulative sum (values and every gradient, incl. the inputs'), in float64."""
    from chainrule.models.nade import _NADEPass, nade_pass_reference
    torch.manual_seed(block)
    B, D, H, E, P = 3, 7, 5, 2, 3
    args = [torch.randn(B, D, E), torch.randn(D, H, E), torch.randn(H), torch.randn(D, P, H), torch.randn(D, P)]
    args = [a.double().requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: _NADEPass.apply(*a, activation, block), args)
    g = torch.randn(B, D, P, dtype=torch.double)
    ours = torch.autograd.grad(_NADEPass.apply(*args, activation, block), args, g)
    ref = torch.autograd.grad(nade_pass_reference(*args, activation), args, g)
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, atol=1e-10)


def test_nade_model_gradients_match_reference_in_float32():
    """Whole model, realistic block size: the parameter gradients of the NLL agree with the
    reference within float32 rounding."""
    from chainrule.models.nade import nade_pass_reference
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (40,), 3, hidden_size=300, order="random:1")
    x = torch.randint(3, (64, 40))
    loss = -model.log_prob(x).mean()
    ours = torch.autograd.grad(loss, list(model.parameters()))
    o = model.order
    seq = nade_pass_reference(model.embed(x)[:, o], model.W[o], model.c, model.V[o], model.b[o])
    params = torch.empty_like(seq)
    params[:, o] = seq
    ref_loss = -model.head(params).log_prob(x.reshape(64, 40, 1)).sum(-1).mean()
    assert torch.allclose(loss, ref_loss, atol=1e-4)
    for a, r in zip(ours, torch.autograd.grad(ref_loss, list(model.parameters()))):
        assert torch.allclose(a, r, atol=1e-5, rtol=1e-4)


def test_mlp_has_finite_memory():
    """The conditional at step i depends on steps i-k..i-1 only (not on anything earlier)."""
    torch.manual_seed(0)
    model = chainrule.create_model("mlp", (7,), 3, memory=2, hidden_sizes=[8], order="reversed")
    x = torch.randint(3, (3, 7))
    e = model.embed(x).detach().requires_grad_(True)
    params = model.forward_embedded(e, model.order, None)
    order = model.order
    for i in range(7):
        (g,) = torch.autograd.grad(params[:, order[i]].sum(), e, retain_graph=True)
        seen = {int(order[s]) for s in range(7) if g[:, order[s]].abs().sum() > 0}
        assert seen == {int(order[s]) for s in range(max(0, i - 2), i)}


def test_real_models_reject_discrete_and_discrete_reject_real():
    with pytest.raises(InputError, match="real-valued"):
        chainrule.create_model("rnade", (3,), 4)
    with pytest.raises(InputError, match="discrete"):
        chainrule.create_model("histogram", (3,), None)
    model = chainrule.create_model("nade", (3,), 4, hidden_size=4)
    with pytest.raises(InputError, match="integer"):
        model.log_prob(torch.tensor([[0.3, 1.2, 2.0]]))


def test_ensemble_improves_on_average_member():
    """Jensen: the log of the averaged probability is >= the average log-probability."""
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (6,), 2, hidden_size=5, num_orders=3)
    x = torch.randint(2, (10, 6))
    members = [model.log_prob_per_variable(x, member=c).sum(-1) for c in range(3)]
    assert torch.all(model.log_prob(x) >= torch.stack(members).mean(0) - 1e-6)
    with torch.no_grad():
        mixture = torch.logsumexp(torch.stack(members), 0) - math.log(3)
        assert torch.allclose(mixture, model.log_prob(x), atol=1e-5)
        # a sub-ensemble: the mixture of just those members
        pair = torch.logsumexp(torch.stack([members[0], members[2]]), 0) - math.log(2)
        assert torch.allclose(pair, model.log_prob(x, member=[0, 2]), atol=1e-5)
        assert torch.allclose(members[1], model.log_prob(x, member=[1]), atol=1e-5)
    with pytest.raises(InputError, match="non-empty"):
        model.log_prob(x, member=[])
    with pytest.raises(InputError, match="member must be in"):
        model.log_prob(x, member=[0, 3])


def test_trainer_validates_ensembles_with_val_components(tmp_path):
    torch.manual_seed(0)
    model = chainrule.create_model("made", (6,), 2, hidden_sizes=[8], num_masks=4)
    data = torch.randint(2, (64, 6))
    result = Trainer(model, TrainConfig(epochs=2, batch_size=16, val_components=2), out_dir=tmp_path).fit(data, data[:16])
    from chainrule.inference.likelihood import evaluate
    assert result.best_val_nll_nats == pytest.approx(evaluate(model, data[:16], member=range(2)).nll_nats)
    assert evaluate(model, data[:16], member=range(2)).nll_nats != pytest.approx(evaluate(model, data[:16]).nll_nats)
    with pytest.raises(InputError, match="val_components"):
        TrainConfig(val_components=0)


def test_inspection_maps_sum_to_the_log_likelihood(tmp_path):
    from chainrule.apps.inspection import inspect_example, plot_inspection

    torch.manual_seed(0)
    model = chainrule.create_model("nade", (1, 3, 4), 2, hidden_size=6, order="snake")
    x = torch.randint(2, (1, 3, 4))
    ins = inspect_example(model, x)
    assert ins.nll.shape == (1, 3, 4)
    assert ins.total_nll_nats == pytest.approx(-float(model.log_prob(x).detach()), abs=1e-4)
    # p(x_j = 1 | x_<j) and p(observed) agree on the observed bit
    expected = torch.where(x == 1, ins.prob_one, 1 - ins.prob_one)
    assert torch.allclose(expected, ins.prob_observed, atol=1e-6)
    assert ins.step.reshape(-1)[model.order].tolist() == list(range(12))
    path = plot_inspection(ins, tmp_path / "ins.png", 2)
    assert path.stat().st_size > 1000


def test_dequantized_digits_and_discrete_bound():
    from chainrule.data import load_dataset

    ds = load_dataset("digits", dequantize=True, seed=3)
    assert ds.num_values is None and ds.dequantized_from == 17
    assert ds.val.dtype == torch.float32 and 0 <= float(ds.val.min()) and float(ds.val.max()) < 1
    raw = load_dataset("digits")
    assert torch.equal((ds.val * 17).floor().long(), raw.val)  # the noise never crosses a bin
    a = ds.train_transform(ds.train[:5], torch.Generator().manual_seed(0))
    b = ds.train_transform(ds.train[:5], torch.Generator().manual_seed(1))
    assert not torch.equal(a, b) and torch.equal((a * 17).floor().long(), raw.train[:5])
    assert ds.discrete_nll_offset_nats() == pytest.approx(64 * math.log(17))


def test_cli_inspect_and_dequantize(tmp_path, capsys):
    from chainrule.cli import main

    run = tmp_path / "r"
    assert main(["train", "rnade", "--dataset", "digits", "--dequantize", "--epochs", "1", "--out", str(run),
                 "--no-progress", "-p", "hidden_size=8", "-p", "num_mixture_components=2"]) == 0
    out = capsys.readouterr().out
    assert "as discrete data (17 values" in out
    assert main(["inspect", str(run), "--index", "2"]) == 0
    assert (run / "inspect-test-2.png").is_file()
    assert main(["inspect", str(run), "--index", "100000"]) == 2
    assert "outside" in capsys.readouterr().err
