"""PixelCNN++ beyond the shared registry suite: odd and tiny image sizes at every number of
resolutions, the receptive field (no blind spot, and the finite reach on wide images), sub-pixel
and whole-pixel conditionals, the default head, the cached step against the full pass, the cached
forms of the layers, bad hyperparameters, and a short training run."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.checks import (
    all_configurations,
    check_autoregressive,
    check_step_matches_forward,
    dependencies,
    normalization_total,
)
from chainrule.errors import InputError
from chainrule.models.base import AutoregressiveModel
from chainrule.nn.pixelcnnpp import GatedResnet, ShiftedConv2d, ShiftedConvTranspose2d, sampling_weights
from chainrule.training import TrainConfig, Trainer

SMALL = {"channels": 4, "num_resnets": 1, "num_resolutions": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread (and far faster on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(shape, num_values=2, scale: float | None = 0.5, **kw) -> chainrule.AutoregressiveModel:
    """A small model with random weights (``scale``: their standard deviation; None keeps the init)."""
    torch.manual_seed(0)
    model = chainrule.create_model("pixelcnnpp", shape, num_values, **{**SMALL, **kw})
    if scale is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, scale)
    return model.eval()


@pytest.mark.parametrize("shape", [(3, 1, 2), (1, 5, 5), (1, 1, 3), (2, 3, 5), (1, 7, 2), (1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("num_resolutions", [1, 2, 3])
def test_odd_and_tiny_sizes_at_every_resolution(shape, num_resolutions):
    """Halving rounds up and the transposed convolutions crop: any size works, autoregressive, and
    the cached step is the full pass."""
    model = tiny(shape, 3, num_resolutions=num_resolutions)
    assert model.sizes[-1] == (max(1, -(-shape[1] // 2 ** (num_resolutions - 1))),
                               max(1, -(-shape[2] // 2 ** (num_resolutions - 1))))
    assert check_autoregressive(model) == model.dim
    check_step_matches_forward(model, n=2)
    grouped = tiny(shape, 3, num_resolutions=num_resolutions, group_shape="pixel")
    assert check_autoregressive(grouped) == shape[1] * shape[2]
    check_step_matches_forward(grouped, n=2)


def test_normalization_on_tiny_spaces():
    """Sums to 1 over (1, 2, 2) K=3 (grey, categorical) and over (3, 1, 2) K=3 (whole pixels, the
    discretized logistic mixture, 2 components), with the probability spread over many images."""
    grey = tiny((1, 2, 2), 3)
    assert abs(normalization_total(grey) - 1) < 1e-5
    subpixel = tiny((3, 1, 2), 3)  # one conditional per sub-pixel
    assert abs(normalization_total(subpixel) - 1) < 1e-5
    model = tiny((3, 1, 2), 3, scale=None, group_shape="pixel", head="logistic_mixture", num_mixture_components=2)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5).mul_(0.3)  # small weights: logistics wide enough to spread over the bins
    assert model.head.name == "logistic_mixture" and model.head.num_params == 2 * (1 + 2 * 3 + 3)
    assert abs(normalization_total(model) - 1) < 1e-5
    probs = model.log_prob(all_configurations(model)).detach().exp()
    assert probs.max() < 0.2 and (probs > 1e-4).sum() > 100  # not all in one bin: 3^6 = 729 images


def test_no_blind_spot_on_6x6():
    """Every pixel's conditional reads every earlier pixel, and nothing at or after itself."""
    deps = dependencies(tiny((1, 6, 6), num_resolutions=3))
    for p in range(36):
        assert deps[p, :p].all(), f"pixel {divmod(p, 6)}: unseen {(~deps[p, :p]).nonzero().flatten().tolist()}"
    assert deps.tril(-1).sum() == deps.sum()


def test_reach_on_wide_images_grows_with_the_blocks():
    """Above an odd row the coarser resolutions carry nothing of the row just above, so the reach
    there is that of the full-resolution convolutions, 4 x num_resnets + 2 columns (the paper's network
    has the same property): pixel (1, 0) of a 2 x 12 image sees (0, 0..6) with one resnet, all of
    row 0 with three."""
    deps = dependencies(tiny((1, 2, 12)))  # num_resnets 1, 2 resolutions
    assert deps[12, :7].all() and not deps[12, 7:12].any()
    assert not deps[12 + 11, 12]  # nor does the end of row 1 see its start
    deps = dependencies(tiny((1, 2, 12), num_resnets=3))
    assert all(deps[p, :p].all() for p in range(24))


def test_subpixel_conditionals_read_their_pixel():
    """group_shape=None on RGB: G reads R of its own pixel, B reads R and G, R neither (through the
    masked 1x1 connection; the streams hide the pixel); group_shape="pixel" hides the whole pixel."""
    model = tiny((3, 2, 2), 4)
    deps = dependencies(model)
    hw = 4
    for p in range(hw):
        r, g, b = p, hw + p, 2 * hw + p  # flat (channel-planar) indices of the pixel's R, G, B
        assert not deps[r, [r, g, b]].any()
        assert deps[g, r] and not deps[g, [g, b]].any()
        assert deps[b, r] and deps[b, g] and not deps[b, b]
        for q in range(p):  # and every sub-pixel of every earlier pixel
            assert deps[[r, g, b]][:, [q, hw + q, 2 * hw + q]].all()
    grouped = dependencies(tiny((3, 2, 2), 4, group_shape="pixel"))
    assert not grouped.diagonal().any() and grouped.tril(-1).sum() == grouped.sum()
    assert tiny((3, 2, 2), 4, group_shape="pixel").subpixel is None and tiny((1, 2, 2), 4).subpixel is None


@pytest.mark.parametrize("channels,group_shape", [(1, None), (3, "pixel"), (3, None)])
def test_cached_step_matches_the_full_pass_on_8x8_with_a_label(channels, group_shape):
    """The cache (u by rows, ul one position per step) gives the full pass's conditionals at every
    step, on 8 x 8 images with a class label and 3 resolutions (rows and columns at every
    divisibility by 2 and 4); class-conditional samples are in range."""
    head = {"head": "logistic_mixture", "num_mixture_components": 2} if group_shape else {}
    model = tiny((channels, 8, 8), 8, num_classes=3, num_resolutions=3, num_resnets=2, group_shape=group_shape,
                 scale=0.3, **head)
    assert type(model).step is not AutoregressiveModel.step
    check_step_matches_forward(model, n=2)
    s = model.sample(2, context=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, channels, 8, 8) and 0 <= s.min() and s.max() < 8
    assert not torch.allclose(model(s, 0), model(s, 2))  # the label enters every block


def test_cached_step_with_a_context_tensor_and_one_hot_inputs():
    model = tiny((1, 5, 6), 4, context_shape=(2,), input_encoding="onehot", num_resolutions=3)
    check_step_matches_forward(model, n=3)


def test_layers_cached_forms_equal_the_full_forms():
    """row(i) and at(i, j) of every layer type equal the full output's row and position, on an odd
    size, with buffers in either memory layout and with the sampling weight cache."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    layers = [ShiftedConv2d(3, 4, (2, 3)), ShiftedConv2d(3, 4, (2, 2), right=True), ShiftedConv2d(3, 4, (1, 3)),
              ShiftedConv2d(3, 4, (2, 3), stride=2), ShiftedConv2d(3, 4, (2, 2), right=True, stride=2)]
    for layer in layers:
        full = layer(x)
        assert full.shape[-2:] == ((5, 7) if layer.stride == 1 else (3, 4))
        wc = sampling_weights(layer)
        for buf in (x, x.to(memory_format=torch.channels_last)):
            for i in range(full.shape[2]):
                assert torch.allclose(layer.row(buf, i, weights=wc)[:, :, 0], full[:, :, i], atol=1e-6)
                for j in range(full.shape[3]):
                    assert torch.allclose(layer.at(buf, i, j), full[:, :, i, j], atol=1e-6)
    coarse = torch.randn(2, 3, 3, 4)
    for up in (ShiftedConvTranspose2d(3, 4, (2, 3)), ShiftedConvTranspose2d(3, 4, (2, 2), right=True)):
        full = up(coarse, (5, 7))
        assert full.shape == (2, 4, 5, 7)
        for i in range(5):
            assert torch.allclose(up.row(coarse, i, 7)[:, :, 0], full[:, :, i], atol=1e-6)
            for j in range(7):
                assert torch.allclose(up.at(coarse, i, j), full[:, :, i, j], atol=1e-6)
    block = GatedResnet(3, (2, 2), right=True, skip_channels=2, context_dim=0)
    a = torch.randn(2, 2, 5, 7)
    full = block(x, a, None)
    hidden = torch.zeros(2, 6, 5, 7)
    for i in range(5):
        for j in range(7):
            assert torch.allclose(block.at(x, a[:, :, i, j], hidden, i, j, None), full[:, :, i, j], atol=1e-6)


def test_default_head_is_the_logistic_mixture_on_whole_pixels_with_many_values(tmp_path):
    """K >= 16 on whole pixels (grey images, or group_shape="pixel"): the paper's discretized
    logistic mixture (10 components unless told); otherwise the base default; a named head wins."""
    def head(shape, k, **kw):
        return chainrule.create_model("pixelcnnpp", shape, k, **SMALL, **kw).head

    assert head((1, 4, 4), 256).name == "logistic_mixture" and head((1, 4, 4), 256).num_mixture_components == 10
    assert head((1, 4, 4), 16, num_mixture_components=3).num_params == 3 * 3
    rgb = head((3, 4, 4), 256, group_shape="pixel")
    assert rgb.name == "logistic_mixture" and rgb.num_params == 10 * 10
    assert head((3, 4, 4), 256).name == "categorical"  # sub-pixels: 256 logits each
    assert head((1, 4, 4), 15).name == "categorical" and head((1, 4, 4), 2).name == "bernoulli"
    assert head((1, 4, 4), 256, head="categorical").name == "categorical"
    model = chainrule.create_model("pixelcnnpp", (1, 3, 3), 256, **SMALL, num_mixture_components=2)
    model.save(tmp_path / "ck")
    loaded = chainrule.load(tmp_path / "ck")
    assert loaded.head.name == "logistic_mixture" and loaded.head.num_params == model.head.num_params
    x = torch.randint(256, (3, 1, 3, 3))
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))


def test_features():
    model = tiny((1, 3, 4), 3, num_classes=2, num_resnets=2, num_resolutions=2)
    x = torch.randint(3, (2, 1, 3, 4))
    f = model.features(x, torch.tensor([0, 1]))
    assert f.shape == (2, 12, 4)  # (B, G, channels)
    maps = 1 + 2 + 3  # the first maps, 2 down-pass blocks, 3 up-pass blocks at full resolution
    assert torch.equal(model.features(x, torch.tensor([0, 1]), layer=maps - 1), f)
    model.features(x, torch.tensor([0, 1]), layer=0)
    for bad in (maps, -maps - 1, "last", 1.0):
        with pytest.raises(InputError, match="layer must be an integer in"):
            model.features(x, torch.tensor([0, 1]), layer=bad)
    # sub-pixels: the default features read the pixel's earlier channels, the ul maps do not
    rgb = tiny((3, 2, 2), 4)
    x = torch.randint(4, (3, 3, 2, 2))
    x2 = x.clone()
    x2[:, 0, 1, 1] = (x2[:, 0, 1, 1] + 1) % 4  # R of the last pixel (flat index 3 of R's plane)
    f, f2 = rgb.features(x), rgb.features(x2)
    assert f.shape == (3, 12, 4)
    assert torch.equal(f[:, 3], f2[:, 3]) and not torch.allclose(f[:, 4 + 3], f2[:, 4 + 3])  # R hidden, G sees R
    assert torch.equal(rgb.features(x, layer=-2)[:, 4 + 3], rgb.features(x2, layer=-2)[:, 4 + 3])


@pytest.mark.parametrize("kw,match", [
    ({"channels": 0}, "channels must be a positive integer"),
    ({"channels": 2.5}, "channels must be a positive integer"),
    ({"num_resnets": 0}, "num_resnets must be a positive integer"),
    ({"num_resolutions": 0}, "num_resolutions must be a positive integer"),
    ({"num_resolutions": True}, "num_resolutions must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
    ({"dropout": -0.1}, "dropout must be a probability"),
    ({"dropout": "0.5"}, "dropout must be a probability"),
    ({"input_encoding": "binary"}, "input_encoding"),
    ({"group_shape": (1, 2, 2)}, "sub-pixel or one whole pixel"),
    ({"order": "reversed"}, "order only"),
    ({"head": "logistic_mixture", "num_mixture_components": 0}, "num_mixture_components"),
    ({"width": 3}, "no hyperparameter"),
])
def test_bad_hyperparameters_are_clear_errors(kw, match):
    with pytest.raises(InputError, match=match):
        chainrule.create_model("pixelcnnpp", (3, 4, 4), 4, **{**SMALL, **kw})


def test_bad_shapes_and_values_are_clear_errors():
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        chainrule.create_model("pixelcnnpp", (16,), 2)
    with pytest.raises(InputError, match="discrete"):
        chainrule.create_model("pixelcnnpp", (1, 4, 4), None)
    model = tiny((3, 4, 4), 4)
    with pytest.raises(InputError, match="shape"):
        model.log_prob(torch.zeros(2, 1, 4, 4, dtype=torch.long))


def test_mixed_precision_forward():
    """Marked for bf16 autocast (convolutional); under autocast the pass stays finite and close."""
    assert chainrule.models.registry.get_model_class("pixelcnnpp").mixed_precision
    model = tiny((1, 6, 6), 256, scale=None)
    x = torch.randint(256, (2, 1, 6, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x).float()
    assert torch.isfinite(low).all() and torch.allclose(low, model(x), atol=0.1)


def test_training_reduces_the_loss():
    """A few Adam steps on a tiny structured set (vertical bars): the training NLL drops, and the
    trained model still normalizes."""
    torch.manual_seed(0)
    n = 64
    cols = torch.randint(4, (n,))
    data = torch.zeros(n, 1, 3, 4, dtype=torch.long)
    data[torch.arange(n), 0, :, cols] = 1  # one vertical bar per image
    model = chainrule.create_model("pixelcnnpp", (1, 3, 4), 2, channels=8, num_resnets=1, num_resolutions=2)
    before = -model.log_prob(data).mean().item()
    config = TrainConfig(epochs=8, batch_size=16, lr=1e-2, patience=None, save_last=False, precision="float32")
    result = Trainer(model, config, progress=False).fit(data)
    after = -model.log_prob(data).mean().item()
    losses = [row["train_nll_nats"] for row in result.history]
    assert result.epochs_run == 8 and losses[-1] < losses[0]
    assert after < 0.6 * before, (before, after)
    assert abs(normalization_total(model) - 1) < 1e-5
