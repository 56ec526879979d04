"""σ-GPT (any-order Transformer) and parallel decoding: exact burst sampling against ancestral
sampling (chi-square on a tiny space), the approximate steps labelled as such, order-agnostic
training. The registry suite (tests/test_registry.py) covers the model contract in every order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

import chainrule
from chainrule.checks import all_configurations
from chainrule.errors import InputError
from chainrule.inference.parallel import burst_sample, parallel_sample, schedule_counts
from chainrule.orderings import observed_first


def tiny(seed: int = 0, shape=(4,), num_values: int = 3, **kw) -> chainrule.AutoregressiveModel:
    torch.manual_seed(seed)
    model = chainrule.create_model("sigma_gpt", shape, num_values, num_layers=2, num_heads=2, embed_dim=8, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)  # strong dependencies between the variables
    return model.eval()


def pvalue(model, samples: torch.Tensor, probs: torch.Tensor, support: torch.Tensor | None = None) -> float:
    space = all_configurations(model)
    keep = torch.ones(len(space), dtype=torch.bool) if support is None else support
    index = {tuple(v.tolist()): i for i, v in enumerate(space[keep])}
    counts = np.bincount([index[tuple(v.tolist())] for v in samples.reshape(len(samples), -1)], minlength=int(keep.sum()))
    p = probs[keep].double().numpy()
    return stats.chisquare(counts, p / p.sum() * len(samples))[1]


@pytest.mark.parametrize("window", [1, 2, 16])
def test_burst_sampling_is_ancestral_sampling_in_a_fixed_order(window):
    model = tiny()
    space = all_configurations(model)
    s, st = burst_sample(model, 12_000, generator=torch.Generator().manual_seed(window), order="reversed",
                         window=window, return_stats=True)
    probs = model.log_prob(space, order="reversed").detach().exp()
    assert pvalue(model, s, probs) > 1e-3
    assert st["passes"].shape == (12_000,) and int(st["passes"].max()) <= 1 + 2 * model.dim
    if window > 1:
        assert float(st["passes"].float().mean()) < 1 + model.dim  # fewer passes than one per variable + 1


def test_burst_sampling_in_random_orders_is_the_mixture_over_orders():
    model = tiny(1)
    space = all_configurations(model)
    mix = torch.stack([model.log_prob(space, order=list(o)).detach().exp()
                       for o in itertools.permutations(range(4))]).mean(0)
    s = burst_sample(model, 12_000, generator=torch.Generator().manual_seed(0), window=3)
    assert pvalue(model, s, mix) > 1e-3
    # the mixture is not any single order's distribution: the test can tell them apart
    assert pvalue(model, s, model.log_prob(space).detach().exp()) < 1e-3


def test_burst_sampling_with_observed_values_per_sample():
    """Different observed subsets in one batch: kept exactly; the rest follows the conditional."""
    model = tiny(2)
    value = torch.tensor([2, 0, 1, 0])
    masks = torch.tensor([[False, True, False, True], [True, False, False, False]]).repeat(6000, 1)
    s = burst_sample(model, len(masks), observed=(value, masks), order="raster", window=2,
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(s[masks], value.expand_as(masks)[masks])
    space = all_configurations(model)
    for k in range(2):
        mask = masks[k]
        support = (space[:, mask] == value[mask]).all(-1)
        probs = model.log_prob(space, order=observed_first(mask, torch.arange(4))).detach().exp()
        assert pvalue(model, s[k::2], probs, support) > 1e-3


def test_approximate_steps_are_exact_only_with_one_variable_per_step():
    model = tiny(3)
    space = all_configurations(model)
    probs = model.log_prob(space, order="snake").detach().exp()
    exact = parallel_sample(model, 12_000, steps=4, order="snake", generator=torch.Generator().manual_seed(0))
    assert pvalue(model, exact, probs) > 1e-3
    one, st = parallel_sample(model, 12_000, steps=1, order="snake", generator=torch.Generator().manual_seed(0),
                              return_stats=True)
    assert pvalue(model, one, probs) < 1e-6  # one step: independent draws, not the model's distribution
    assert int(st["passes"].max()) == 1 and st["model_calls"] == 1
    # one step draws each variable from p(x_j | nothing): the product of the first conditionals
    x = torch.tensor([[a, b, c, d] for a, b, c, d in itertools.product(range(3), repeat=4)])
    marg = torch.stack([model.log_prob_per_variable(x, order=[j] + [i for i in range(4) if i != j])[:, j]
                        for j in range(4)], -1).sum(-1).detach().exp()
    assert pvalue(model, one, marg) > 1e-3


def test_observed_values_are_kept_by_the_approximate_steps():
    model = tiny(4, shape=(1, 3, 3), num_values=2)
    value = torch.randint(2, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(5, 1, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.5
    s, st = parallel_sample(model, 5, steps=2, observed=(value, mask), return_stats=True,
                            generator=torch.Generator().manual_seed(2))
    assert torch.equal(s[mask], value[mask]) and s.shape == (5, 1, 3, 3)
    assert st["passes"].max() <= 2


def test_schedules():
    for remaining, steps in [(10, 4), (784, 8), (3, 5), (1, 1), (50, 50)]:
        for sched in ("cosine", "linear"):
            c = schedule_counts(remaining, steps, sched)
            assert sum(c) == remaining and min(c) >= 1 and len(c) == min(steps, remaining)
    assert schedule_counts(784, 8)[0] < schedule_counts(784, 8)[-1]  # cosine: few first, many last
    with pytest.raises(InputError, match="schedule"):
        schedule_counts(5, 2, "exp")


def test_parallel_decoding_errors():
    with pytest.raises(InputError, match="sigma_gpt"):
        burst_sample(chainrule.create_model("transformer", (4,), 2, num_layers=1, num_heads=1, embed_dim=4), 2)
    with pytest.raises(InputError, match="discrete"):
        burst_sample(chainrule.create_model("sigma_gpt", (4,), None, num_layers=1, num_heads=1, embed_dim=4), 2)
    model = tiny()
    with pytest.raises(InputError, match="window"):
        burst_sample(model, 2, window=0)
    with pytest.raises(InputError, match="steps"):
        parallel_sample(model, 2, steps=0)
    with pytest.raises(InputError, match="permutation"):
        burst_sample(model, 2, order=[0, 0, 1, 2])


def test_ensemble_member_orders_and_burst():
    model = tiny(5, num_orders=3)
    assert model.num_members == 3
    s = burst_sample(model, 4, member=1, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 4)


def test_training_mode_draws_a_random_order_per_example():
    model = tiny(6, shape=(6,))
    x = torch.randint(3, (8, 6))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    o = torch.rand(8, 6).argsort(1)  # what forward draws
    b = model.forward_embedded(model.group_features(model.embed(x)), o, None)
    assert torch.allclose(a, b)
    # each example's row is its own order's conditionals
    for i in range(8):
        torch.testing.assert_close(b[i:i + 1], model(x[i:i + 1], order=o[i]))
    assert not torch.allclose(a, model(x))  # an explicit call without order in training mode: random again
    model.eval()
    torch.testing.assert_close(model(x), model(x, order="raster"))
    with pytest.raises(InputError, match="train_order"):
        chainrule.create_model("sigma_gpt", (4,), 2, train_order="left")
    with pytest.raises(InputError, match="is the model sigma_gpt"):  # the spelling points to the model
        chainrule.create_model("transformer", (4,), 2, any_order=True)


# ---------------------------------------------------------------- command line
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer " * 20


def test_cli_text_run_any_order(tmp_path, capsys):
    """train sigma_gpt on text; generate --order; complete any mask on text; sample --burst / --parallel-steps."""
    from chainrule.cli import main

    (tmp_path / "t.txt").write_text(TEXT)
    run = tmp_path / "sg"
    assert main(["train", "sigma_gpt", "--dataset", str(tmp_path / "t.txt"), "--block-size", "16", "--steps-per-epoch",
                 "3", "--epochs", "1", "--out", str(run), "--no-progress", "--num-samples", "2",
                 "-p", "num_layers=1", "-p", "embed_dim=16", "-p", "num_heads=2"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "To be", "--max-new-tokens", "6", "--order", "reversed", "-n", "2"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln and ln != "----------"]
    assert len(lines) == 2 and all(ln.startswith("To be") and len(ln) == 11 for ln in lines)
    assert main(["generate", str(run), "--prompt", "To be", "--max-new-tokens", "20", "--order", "random:1"]) == 2
    assert "window of 16" in capsys.readouterr().err
    mask = np.zeros(16, dtype=bool)
    mask[[0, 1, 5, 9, 15]] = True
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "x.npy", load_text_ids(run, TEXT[:16]))
    assert main(["complete", str(run), "--input", str(tmp_path / "x.npy"), "--mask", str(tmp_path / "mask.npy"),
                 "--num", "2"]) == 0
    out = capsys.readouterr().out
    assert "observed: To___,___ _____o" in out  # the observed characters, '_' where hidden
    assert "trained in one order" not in out  # sigma_gpt is trained on random orders
    comp = np.load(run / "completions.npy")
    assert comp.shape == (1, 2, 16) and (comp[0, :, mask] == np.load(tmp_path / "x.npy")[mask][:, None]).all()
    assert main(["sample", str(run), "-n", "3", "--burst", "--burst-window", "4"]) == 0
    assert "passes per sample" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "3", "--parallel-steps", "4"]) == 0
    assert "NOT the model's exact" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "3", "--burst", "--temperature", "0.5"]) == 2
    assert "--temperature" in capsys.readouterr().err


def load_text_ids(run, text: str) -> np.ndarray:
    from chainrule.cli.common import tokenizer_of, checkpoint_dir

    return np.asarray(tokenizer_of(checkpoint_dir(run)).encode(text), dtype=np.int64)


def test_cli_images_any_mask_and_burst(tmp_path, capsys):
    from chainrule.cli import main

    run = tmp_path / "img"
    assert main(["train", "sigma_gpt", "--dataset", "digits", "--epochs", "1", "--steps-per-epoch", "2", "--num-samples",
                 "2", "--no-progress", "--out", str(run), "-p", "num_layers=1", "-p", "embed_dim=16"]) == 0
    capsys.readouterr()
    assert main(["complete", str(run), "--input", "digits", "--index", "0", "--mask", "random:0.3", "--num", "2"]) == 0
    assert (run / "completions.png").is_file()
    assert main(["sample", str(run), "-n", "2", "--burst", "--order", "raster", "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").is_file()


def test_multi_position_passes_equal_the_full_pass():
    """The parallel decoders' cached passes (a different prefix length per example, causal tokens
    and query tokens together) give exactly the teacher-forced conditionals."""
    from chainrule.inference.parallel import _Passes, _scratch

    model = tiny(7, shape=(6,))
    x = torch.randint(3, (3, 6), generator=torch.Generator().manual_seed(0))
    o = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(i)) for i in range(3)])

    def reference(b: int, known: int, target: int) -> torch.Tensor:
        """log p(x_target | x at o[b, :known]) from the full pass in an order that puts target next."""
        rest = [int(j) for j in o[b, known:] if int(j) != target]
        order = o[b, :known].tolist() + [target] + rest
        return model.head(model(x[b:b + 1], order=order)).variable_logits(None, 0)[0, target]

    with torch.no_grad():
        passes = _Passes(model, o, None, capacity=6 + 8)
        xs = _scratch(x)
        start, nc = torch.zeros(3, dtype=torch.long), torch.tensor([3, 2, 1])
        for _ in range(2):  # a first pass from the start, then one continuing each example's prefix
            w = 6 - int(start.max())
            out = passes(xs, start, nc, w)
            for b in range(3):
                s, c = int(start[b]), int(nc[b])
                for t in range(w):
                    if s + t >= 6:
                        continue
                    known = s + t if t < c else s + c  # causal: the tokens before; queries: the prefix
                    torch.testing.assert_close(out[b, t], reference(b, known, int(o[b, s + t])), atol=1e-5, rtol=1e-5)
            start, nc = start + nc, torch.tensor([1, 2, 2])
