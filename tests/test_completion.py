"""Completion of partially observed inputs: the API (chainrule.apps.completion) and `chainrule complete`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import chainrule
from chainrule.apps.completion import complete, load_mask, named_mask, read_images
from chainrule.cli import main
from chainrule.data import load_dataset
from chainrule.errors import InputError

SHAPE = (1, 4, 4)


def _nade(**kw):
    torch.manual_seed(0)
    return chainrule.create_model("nade", SHAPE, 2, hidden_size=8, **kw)


def _transformer():
    torch.manual_seed(0)
    return chainrule.create_model("transformer", SHAPE, 2, num_layers=1, num_heads=1, embed_dim=8)


def _data(n=3, seed=1):
    return torch.randint(2, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- API
@pytest.mark.parametrize("make", [_nade, _transformer])
def test_observed_values_kept_and_completions_differ(make):
    model, x = make(), _data()
    mask = named_mask("top-half", SHAPE)
    out = complete(model, x, mask, num_completions=8, generator=_gen())
    assert out.shape == (3, 8, *SHAPE)
    assert torch.equal(out[:, :, mask], x[:, None, mask].expand(-1, 8, -1))
    assert set(out.unique().tolist()) <= {0, 1}
    # the hidden half is drawn at random: 8 completions of 8 binary pixels are not all the same
    for i in range(3):
        assert len({tuple(c.reshape(-1).tolist()) for c in out[i]}) > 1


def test_any_order_model_takes_any_mask_and_per_example_masks():
    model, x = _nade(), _data()
    center = named_mask("center", SHAPE)
    out = complete(model, x, center, 4, generator=_gen())
    assert torch.equal(out[:, :, center], x[:, None, center].expand(-1, 4, -1))
    masks = torch.stack([named_mask("left-half", SHAPE), named_mask("random:0.4", SHAPE, seed=3),
                         named_mask("right-half", SHAPE)])
    out = complete(model, x, masks.int(), 4, generator=_gen())  # 0/1 masks work too, one per example
    for i in range(3):
        assert torch.equal(out[i][:, masks[i]], x[i][masks[i]].expand(4, -1))


def test_single_example_placeholders_all_observed_and_empty_masks():
    model, x = _nade(), _data(1)[0].float()
    mask = named_mask("center", SHAPE)
    holes = torch.where(mask, x, torch.tensor(float("nan")))  # hidden values are never read
    out = complete(model, holes, mask, 3, generator=_gen())
    assert out.shape == (1, 3, *SHAPE) and torch.equal(out[0][:, mask], x[mask].long().expand(3, -1))
    full = complete(model, x, torch.ones(SHAPE, dtype=torch.bool), 3)
    assert torch.equal(full, x.long().expand(1, 3, *SHAPE))
    empty = complete(model, x, torch.zeros(SHAPE, dtype=torch.bool), 3, generator=_gen(5))
    assert torch.equal(empty[0], model.sample(3, generator=_gen(5)))  # an empty mask = plain samples


def test_fixed_order_model_takes_a_raster_prefix_and_refuses_other_masks():
    model, x = _transformer(), _data()
    prefix = torch.zeros(SHAPE, dtype=torch.bool)
    prefix[0, :1] = True
    prefix[0, 1, :2] = True  # the first row and the start of the next one
    assert complete(model, x, prefix, 2, generator=_gen()).shape == (3, 2, *SHAPE)
    with pytest.raises(InputError) as exc:
        complete(model, x, named_mask("left-half", SHAPE), 2)
    msg = str(exc.value)
    assert "\n" not in msg and "a raster prefix: the first rows, and the start of the next row" in msg
    assert "top-half" in msg and "nade" in msg and "order-agnostic" in msg
    with pytest.raises(InputError, match="example 1"):
        complete(model, x, torch.stack([prefix, named_mask("center", SHAPE), prefix]), 2)


def test_mask_errors():
    model, x = _nade(), _data()
    with pytest.raises(InputError, match=r"expected shape \(1, 4, 4\).*got \(4, 4\)"):
        complete(model, x, torch.ones(4, 4, dtype=torch.bool), 2)
    with pytest.raises(InputError, match=r"\(3, 1, 4, 4\)"):
        complete(model, x, torch.ones(2, *SHAPE, dtype=torch.bool), 2)
    with pytest.raises(InputError, match="0 and 1"):
        complete(model, x, torch.full(SHAPE, 2), 2)
    with pytest.raises(InputError, match="num_completions"):
        complete(model, x, named_mask("top-half", SHAPE), 0)
    with pytest.raises(InputError, match="expected one example"):
        complete(model, torch.zeros(3, 4, 4), named_mask("top-half", SHAPE), 2)
    # a pixel-grouped model: a mask must keep the channels of a pixel together
    rgb = chainrule.create_model("nade", (3, 2, 2), 4, hidden_size=8, group_shape="pixel")
    bad = torch.zeros(3, 2, 2, dtype=torch.bool)
    bad[0] = True
    with pytest.raises(InputError, match="whole pixels"):
        complete(rgb, torch.zeros(3, 2, 2, dtype=torch.long), bad, 2)
    good = named_mask("random:0.5", (3, 2, 2), seed=1)
    assert complete(rgb, torch.zeros(3, 2, 2, dtype=torch.long), good, 2).shape == (1, 2, 3, 2, 2)


def test_named_masks_shapes_and_fractions():
    for shape in [(1, 8, 6), (3, 8, 6)]:
        top, left, center = (named_mask(n, shape) for n in ("top-half", "left-half", "center"))
        bottom, right = named_mask("bottom-half", shape), named_mask("right-half", shape)
        for m in (top, left, center, bottom, right):
            assert m.shape == shape and m.dtype == torch.bool
            assert (m == m[:1]).all()  # whole pixels: every channel alike
        assert top[0, :4].all() and not top[0, 4:].any()
        assert bottom[0, 4:].all() and not bottom[0, :4].any()
        assert left[0, :, :3].all() and not left[0, :, 3:].any()
        assert right[0, :, 3:].all() and not right[0, :, :3].any()
        assert not center[0, 2:6, 1:4].any() and int((~center[0]).sum()) == 4 * 3
    big = (1, 40, 40)
    r = named_mask("random:0.3", big, seed=1)
    assert abs(float(r.float().mean()) - 0.3) < 0.05
    assert torch.equal(r, named_mask("random:0.3", big, seed=1)) and not torch.equal(r, named_mask("random:0.3", big, seed=2))
    assert named_mask("left-half", (6,)).tolist() == [True] * 3 + [False] * 3
    for bad in ("middle", "random:2", "random:x", "top-half:1"):
        with pytest.raises(InputError):
            named_mask(bad, SHAPE)
    with pytest.raises(InputError, match="left-half"):
        named_mask("top-half", (6,))


def test_ensemble_completes_from_the_mixture_conditional():
    """Exact check on 4 binary variables, 2 observed: the frequencies of the hidden pair match
    p(x_h | x_o) of the mixture of the members (each in its observed-first order), which weights
    member m by p_m(x_o) — not uniformly."""
    torch.manual_seed(14)
    model = chainrule.create_model("nade", (4,), 2, hidden_size=8, num_orders=4, seed=14)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(16.0)  # members that disagree strongly
    mask = torch.tensor([True, True, False, False])
    x = torch.tensor([1, 1, 0, 0])
    out = complete(model, x, mask, 4000, generator=_gen(2))[0]
    assert (out[:, :2] == 1).all()
    configs = [torch.tensor([1, 1, a, b]) for a, b in itertools.product((0, 1), (0, 1))]
    from chainrule.orderings import observed_first

    with torch.no_grad():
        lp = torch.stack([model.log_prob(torch.stack(configs), member=m, order=observed_first(mask, model.orders[m]))
                          for m in range(4)])  # (members, configs)
    exact = torch.softmax(torch.logsumexp(lp, 0), 0)  # the mixture's joint, renormalized over x_h
    uniform = torch.softmax(lp, 1).mean(0)  # members' conditionals averaged with equal weights
    assert float((exact - uniform).abs().max()) > 0.1  # the test can tell the two apart
    freq = torch.stack([(out == c).all(1).float().mean() for c in configs])
    assert torch.allclose(freq, exact, atol=0.03), (freq, exact)
    one = complete(model, x, mask, 5, generator=_gen(), member=1)
    assert one.shape == (1, 5, 4)


def test_class_conditional_completion_needs_a_label():
    torch.manual_seed(0)
    model = chainrule.create_model("nade", SHAPE, 2, hidden_size=8, num_classes=3)
    x, mask = _data(2), named_mask("top-half", SHAPE)
    with pytest.raises(InputError, match="conditional"):
        complete(model, x, mask, 2)
    assert complete(model, x, mask, 2, context=[0, 2], generator=_gen()).shape == (2, 2, *SHAPE)


def test_load_mask_from_files(tmp_path):
    m = named_mask("center", SHAPE)
    np.save(tmp_path / "m.npy", m.numpy().astype(np.int64))
    assert torch.equal(load_mask(tmp_path / "m.npy", SHAPE), m)
    Image.fromarray(m[0].numpy().astype(np.uint8) * 255).save(tmp_path / "m.png")
    assert torch.equal(load_mask(str(tmp_path / "m.png"), SHAPE), m)
    rgb = load_mask(str(tmp_path / "m.png"), (3, 4, 4))  # a PNG marks pixels: all channels
    assert rgb.shape == (3, 4, 4) and torch.equal(rgb[2], m[0])
    assert torch.equal(load_mask("top-half", SHAPE), named_mask("top-half", SHAPE))
    with pytest.raises(InputError, match="does not exist"):
        load_mask(tmp_path / "nope.npy", SHAPE)


def test_read_images_maps_intensities_to_the_model_values(tmp_path):
    a = np.array([[0, 127, 128, 255]] * 4, dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    assert read_images([tmp_path / "g.png"], SHAPE, 2)[0, 0, 0].tolist() == [0, 0, 1, 1]
    assert read_images([tmp_path / "g.png"], SHAPE, 17)[0, 0, 0].tolist() == [0, 8, 8, 16]
    assert read_images([tmp_path / "g.png"], (3, 4, 4), 256).shape == (1, 3, 4, 4)
    with pytest.raises(InputError, match="4x4"):
        read_images([tmp_path / "g.png"], (1, 8, 8), 2)


# ---------------------------------------------------------------------- CLI
def test_cli_complete_on_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "nade", "--dataset", "digits", "--epochs", "1", "--steps-per-epoch", "2", "-p",
                 "hidden_size=8", "--num-samples", "2", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["complete", str(run), "--input", "digits", "--index", "0", "5", "--mask", "center", "--num", "3",
                 "--seed", "1"]) == 0
    out = capsys.readouterr().out
    png, npy = run / "completions.png", run / "completions.npy"
    assert str(png) in out and str(npy) in out
    comp = np.load(npy)
    assert comp.shape == (2, 3, 1, 8, 8) and comp.min() >= 0 and comp.max() <= 16
    x = load_dataset("digits").test[[0, 5]].numpy()
    m = named_mask("center", (1, 8, 8)).numpy()
    assert (comp[:, :, m] == x[:, None, m]).all()
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[1] > 300 and img.shape[0] > 100  # 5 columns x 2 rows of panels
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 100  # the hidden square is drawn in red in the "observed" column


def test_cli_complete_npy_input_png_mask_and_class(tmp_path, capsys):
    torch.manual_seed(0)
    model = chainrule.create_model("nade", SHAPE, 2, hidden_size=8, num_classes=3)
    model.save(tmp_path / "run" / "best", extra={"dataset": "digits"})
    x = _data(2).numpy()
    np.save(tmp_path / "x.npy", x)
    mask = named_mask("random:0.5", SHAPE, seed=4)
    Image.fromarray(mask[0].numpy().astype(np.uint8) * 255).save(tmp_path / "mask.png")
    args = ["complete", str(tmp_path / "run"), "--input", str(tmp_path / "x.npy"), "--mask", str(tmp_path / "mask.png"),
            "--num", "2", "--out", str(tmp_path / "fig.png")]
    assert main(args) == 2  # class-conditional: --class is required
    err = capsys.readouterr().err.strip()
    assert "--class" in err and "\n" not in err
    assert main(args + ["--class", "1"]) == 0
    comp = np.load(tmp_path / "fig.npy")
    assert comp.shape == (2, 2, *SHAPE) and (tmp_path / "fig.png").is_file()
    assert (comp[:, :, mask.numpy()] == x[:, None, mask.numpy()]).all()


def test_cli_complete_fixed_order_refuses_left_half(tmp_path, capsys):
    _transformer().save(tmp_path / "run" / "best", extra={"dataset": "digits"})
    np.save(tmp_path / "x.npy", _data(1).numpy()[0])
    base = ["complete", str(tmp_path / "run"), "--input", str(tmp_path / "x.npy"), "--num", "2"]
    assert main(base + ["--mask", "left-half"]) == 2
    err = capsys.readouterr().err.strip()
    assert "raster prefix" in err and "\n" not in err
    assert main(base + ["--mask", "top-half"]) == 0
    assert np.load(tmp_path / "run" / "completions.npy").shape == (1, 2, *SHAPE)


def test_cli_complete_a_class_conditional_run_takes_the_dataset_labels(tmp_path, capsys, monkeypatch):
    """A labelled dataset as --input: its examples' own labels condition the completions (no --class
    needed); --class still overrides them, and an input without labels still needs --class."""
    import chainrule.apps.completion as completion

    torch.manual_seed(0)
    model = chainrule.create_model("nade", (1, 8, 8), 17, hidden_size=8, num_classes=10)
    model.save(tmp_path / "run" / "best", extra={"dataset": "digits"})
    seen = []
    original = completion.complete
    monkeypatch.setattr(completion, "complete", lambda m, x, mask, num, ctx, *a, **k: (
        seen.append(ctx), original(m, x, mask, num, ctx, *a, **k))[1])
    args = ["complete", str(tmp_path / "run"), "--input", "digits", "--index", "3", "7", "--mask", "top-half",
            "--num", "2", "--out", str(tmp_path / "c.npy"), "--threads", "1"]
    assert main(args) == 0
    y = load_dataset("digits").test_labels[[3, 7]]
    assert torch.equal(torch.as_tensor(seen[-1]), y)
    assert f"their labels {y[0]}, {y[1]}" in capsys.readouterr().out
    assert main(args + ["--class", "4", "--force"]) == 0
    assert seen[-1] == 4
    np.save(tmp_path / "x.npy", load_dataset("digits").test[:2].numpy())
    args[3] = str(tmp_path / "x.npy")
    assert main(args[:4] + args[7:] + ["--force"]) == 2
    assert "has no labels: pass --class" in capsys.readouterr().err
