"""The image architectures beyond the shared registry suite: the channel masks see what they
should (not only nothing they shouldn't), the Gated PixelCNN has no blind spot while the PixelCNN
has one, the masks are the documented ones, and cached sampling is the full pass."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.checks import check_step_matches_forward, dependencies
from chainrule.errors import InputError
from chainrule.nn.pixel import MaskedConv2d

IMAGE_MODELS = ["pixelcnn", "gated_pixelcnn"]


def tiny(name: str, shape, num_values=2, **kw):
    torch.manual_seed(0)
    base = {"pixelcnn": {"channels": 12, "num_layers": 3, "head_channels": 6, "first_kernel_size": 3},
            "gated_pixelcnn": {"channels": 6, "num_layers": 6, "head_channels": 6, "first_kernel_size": 3}}[name]
    model = chainrule.create_model(name, shape, num_values, **{**base, **kw})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_mask_pictures():
    """The masks are the ones drawn in MaskedConv2d's docstring."""
    a = MaskedConv2d(3, 3, 5, "A", groups=3).mask  # (out, in, 3, 5): rows up to the centre
    assert a.shape == (3, 3, 3, 5)
    assert (a[:, :, :2] == 1).all() and (a[:, :, 2, 3:] == 0).all() and (a[:, :, 2, :2] == 1).all()
    # centre pixel, out x in over (R, G, B): R sees nothing, G sees R, B sees R and G
    assert a[:, :, 2, 2].tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    b = MaskedConv2d(3, 3, 5, "B", groups=3).mask
    assert b[:, :, 2, 2].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    grey_a = MaskedConv2d(1, 1, 3, "A").mask[0, 0]
    assert grey_a.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert MaskedConv2d(1, 1, 3, "B").mask[0, 0].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert (MaskedConv2d(2, 2, 3, "V").mask == 1).all()  # whole rows up to the centre row


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_channels_of_a_pixel_follow_r_g_b(name):
    """Sub-pixel conditionals on RGB: G reads R of its own pixel, B reads R and G, R reads neither."""
    model = tiny(name, (3, 2, 2), 4)
    deps = dependencies(model)
    hw = 4
    for p in range(hw):
        r, g, b = p, hw + p, 2 * hw + p  # flat (channel-planar) index of the pixel's R, G, B
        assert not deps[r, [r, g, b]].any()
        assert deps[g, r] and not deps[g, [g, b]].any()
        assert deps[b, r] and deps[b, g] and not deps[b, b]
    # a pixel-grouped model hides the whole pixel from itself
    grouped = tiny(name, (3, 2, 2), 4, group_shape="pixel")
    assert not dependencies(grouped).diagonal().any()


def test_gated_pixelcnn_has_no_blind_spot_and_pixelcnn_has_one():
    """On 5x5 images: every pixel's conditional reads every earlier pixel with the gated stacks;
    the PixelCNN's masked 3x3 stack never reads the pixels up and to the right beyond its diagonal
    (its blind spot), however deep it is."""
    gated = dependencies(tiny("gated_pixelcnn", (1, 5, 5), num_layers=5))
    for p in range(25):
        assert gated[p, :p].all(), f"pixel {p}: unseen {(~gated[p, :p]).nonzero().flatten().tolist()}"
    assert gated.tril(-1).sum() == gated.sum()  # and nothing at or after itself
    plain = dependencies(tiny("pixelcnn", (1, 5, 5), num_layers=6))
    # pixel 22 = (4, 2): the pixel above (17) and to the left (21) are seen, (3, 4) = 19 is not
    assert plain[22, 17] and plain[22, 21] and plain[22, 18]
    assert not plain[22, 19], "the PixelCNN should have a blind spot at (3, 4) for pixel (4, 2)"


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_cached_sampling_matches_the_full_pass_on_a_real_size(name):
    """Cache == full pass on 8x8 colour images with a class label (more rows than the kernel)."""
    model = tiny(name, (3, 8, 8), 4, num_classes=3, num_layers=3 if name == "gated_pixelcnn" else 2)
    check_step_matches_forward(model, n=2)
    s = model.sample(2, context=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 3, 8, 8) and s.max() < 4


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_bad_arguments_are_clear_errors(name):
    with pytest.raises(InputError, match="odd"):
        chainrule.create_model(name, (1, 4, 4), 2, kernel_size=4)
    with pytest.raises(InputError, match="multiple"):
        chainrule.create_model(name, (3, 4, 4), 2, channels=5)
    with pytest.raises(InputError, match="sub-pixel or one whole pixel"):
        chainrule.create_model(name, (2, 4, 4), 2, group_shape=(1, 2, 2))
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        chainrule.create_model(name, (16,), 2)
    model = tiny(name, (3, 4, 4), 2)
    with pytest.raises(InputError, match="shape"):
        model.log_prob(torch.zeros(2, 1, 4, 4, dtype=torch.long))  # a grey image for a colour model


@pytest.mark.parametrize("name", IMAGE_MODELS + ["made"])
def test_discretized_logistic_mixture_over_the_pixel(name):
    """PixelCNN++'s head on any model that predicts whole pixels: one conditional per pixel,
    normalized over a tiny colour space, cached == full pass, samples in range."""
    from chainrule.checks import check_autoregressive, normalization_total
    if name == "made":
        torch.manual_seed(0)
        model = chainrule.create_model("made", (3, 1, 2), 3, hidden_sizes=[16], group_shape="pixel",
                                       head="logistic_mixture", num_mixture_components=2).eval()
    else:
        model = tiny(name, (3, 1, 2), 3, group_shape="pixel", head="logistic_mixture", num_mixture_components=2)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.3)
    assert model.head.num_params == 2 * (1 + 2 * 3 + 3)
    assert check_autoregressive(model) == 2
    assert abs(normalization_total(model) - 1) < 1e-5
    check_step_matches_forward(model)
    s = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert s.shape == (50, 3, 1, 2) and 0 <= s.min() and s.max() <= 2
    assert torch.isfinite(model.log_prob(s)).all()


@pytest.mark.parametrize("name", ["pixelcnn", "gated_pixelcnn", "row_lstm", "pixelcnnpp"])
def test_channels_last_maps_change_no_value(name, monkeypatch):
    """On a CPU the convolutions write channels-last maps (``cpu_layout``, for speed); the
    likelihood and its gradients are those of the contiguous layout."""
    import chainrule.nn.pixel as pixel
    import chainrule.nn.pixelcnnpp as pixelcnnpp

    kw = {"pixelcnn": {}, "gated_pixelcnn": {}, "row_lstm": {"hidden_channels": 6, "num_layers": 2, "head_channels": 6},
          "pixelcnnpp": {"channels": 8, "num_resnets": 1, "num_mixture_components": 2}}[name]
    if name in IMAGE_MODELS:
        model = tiny(name, (3, 6, 5), 4)
    else:
        torch.manual_seed(0)
        model = chainrule.create_model(name, (3, 6, 5), 4, **kw)
    x = torch.randint(0, 4, (3, 3, 6, 5))
    out = MaskedConv2d(4, 6, 3, "B")(torch.randn(2, 4, 5, 5))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    h = model.features(x)  # the maps the layers wrote, read back as (B, G, F)

    def nll_and_grads():
        model.zero_grad()
        nll = -model.log_prob(x).sum()
        nll.backward()
        return nll.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast, fast_grads = nll_and_grads()
    monkeypatch.setattr(pixel, "cpu_layout", lambda t: t)
    monkeypatch.setattr(pixelcnnpp, "cpu_layout", lambda t: t)
    plain, plain_grads = nll_and_grads()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.features(x), h, rtol=1e-5, atol=1e-5)
