"""PixelRNN (Row LSTM, Diagonal BiLSTM) beyond the shared registry suite: autoregressive and
normalized on tiny spaces, the receptive fields the paper describes (a triangle for the Row LSTM,
every earlier pixel for the Diagonal BiLSTM), R -> G -> B inside a pixel, the exact cached step on a
real size, and clear errors."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.checks import check_autoregressive, check_step_matches_forward, dependencies, normalization_total
from chainrule.errors import InputError
from chainrule.models.pixelrnn import skew, unskew

MODELS = ["row_lstm", "diagonal_bilstm"]


def tiny(name: str, shape, num_values=2, **kw):
    torch.manual_seed(0)
    base = {"hidden_channels": 6, "num_layers": 2, "head_channels": 6, "first_kernel_size": 3}
    model = chainrule.create_model(name, shape, num_values, **{**base, **kw})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def test_skew_shifts_row_i_right_by_i():
    x = torch.arange(1, 13.0).reshape(1, 1, 3, 4)
    assert skew(x)[0, 0].tolist() == [[1, 2, 3, 4, 0, 0], [0, 5, 6, 7, 8, 0], [0, 0, 9, 10, 11, 12]]
    y = torch.randn(2, 3, 4, 2)
    assert torch.equal(unskew(skew(y), 2), y)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape,num_values,group_shape", [
    ((1, 2, 3), 2, None), ((1, 3, 2), 2, None), ((3, 1, 2), 3, None), ((3, 1, 2), 3, "pixel"), ((2, 2, 2), 2, "pixel")])
def test_autoregressive_and_normalized(name, shape, num_values, group_shape):
    model = tiny(name, shape, num_values, group_shape=group_shape)
    assert check_autoregressive(model) == model.num_groups
    assert abs(normalization_total(model) - 1) < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_cached_step_matches_the_full_pass_on_8x8_with_a_label(name):
    """The cache on colour 8x8 images (more rows and columns than any kernel), class-conditional."""
    model = tiny(name, (3, 8, 8), 4, num_classes=3)
    check_step_matches_forward(model, n=2)
    grouped = tiny(name, (2, 5, 4), 3, group_shape="pixel", context_shape=(2,))
    check_step_matches_forward(grouped, n=2)


@pytest.mark.parametrize("name", MODELS)
def test_sampling_uses_the_cache_not_the_full_pass(name, monkeypatch):
    model = tiny(name, (3, 4, 4), 4, num_classes=2)

    def no_full_pass(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("sampling ran the teacher-forced pass")

    monkeypatch.setattr(model, "forward_embedded", no_full_pass)
    s = model.sample(3, context=torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 3, 4, 4) and 0 <= s.min() and s.max() < 4


def test_diagonal_bilstm_sees_every_earlier_pixel():
    """One layer is enough: the left-to-right direction covers the rows above up to column j and the
    row itself, the right-to-left one (shifted down) the rows above from column j on."""
    for shape, layers in (((1, 5, 5), 1), ((1, 5, 5), 2), ((1, 4, 6), 1), ((1, 6, 3), 2)):
        deps = dependencies(tiny("diagonal_bilstm", shape, num_layers=layers), n=16)
        for p in range(deps.shape[0]):
            assert deps[p, :p].all(), f"{shape}, pixel {p}: unseen {(~deps[p, :p]).nonzero().flatten().tolist()}"
        assert deps.tril(-1).sum() == deps.sum()


def test_diagonal_bilstm_needs_the_pixel_values_in_its_right_to_left_direction():
    """Without the first layer's pixel term (the paper built literally) nothing carries the value of
    the last pixel of the row above to the start of a row: pixel (i, 0) misses (i - 1, W - 1)."""
    model = tiny("diagonal_bilstm", (1, 5, 5), num_layers=3)
    with torch.no_grad():
        model.layers[0].pixels.weight.zero_()
    deps = dependencies(model, n=16)
    for i in range(1, 5):
        for j in range(3):  # beyond the first 3x3 convolution's reach of (i - 1, 4)
            assert not deps[5 * i + j, 5 * i - 1]
        assert deps[5 * i + 3, 5 * i - 1] and deps[5 * i, 5 * i - 2]


def row_lstm_reaches(r: int, c: int, r2: int, c2: int, k: int, k0: int) -> bool:
    """The Row LSTM's bound: pixel (r, c) can read (r2, c2) of a row above only within the triangle."""
    return c2 <= c + (r - r2 - 1) * (k // 2) + k0 // 2


@pytest.mark.parametrize("layers,k,k0", [(1, 3, 3), (2, 3, 3), (4, 3, 3), (2, 5, 3), (2, 3, 5)])
def test_row_lstm_has_a_triangular_receptive_field(layers, k, k0):
    """Pixel (r, c) never reads pixels of the rows above right of c + (r - r' - 1) * (k // 2) + k0 // 2,
    however deep the network (the state of row r reads k columns of row r - 1); with 2 layers or more
    it reads every pixel of the rows above inside that bound on a 5x5 image."""
    deps = dependencies(tiny("row_lstm", (1, 5, 5), num_layers=layers, kernel_size=k, first_kernel_size=k0), n=16)
    for r in range(5):
        for c in range(5):
            for r2 in range(r):
                for c2 in range(5):
                    inside = row_lstm_reaches(r, c, r2, c2, k, k0)
                    seen = bool(deps[5 * r + c, 5 * r2 + c2])
                    assert inside or not seen, f"({r}, {c}) reads ({r2}, {c2}) outside the triangle"
                    if layers >= 2:
                        assert seen == inside, f"({r}, {c}) should read ({r2}, {c2})"
    if (layers, k, k0) == (2, 3, 3):
        # pixel (4, 0) = 20: the row above up to column 1, two rows up to column 2, ..., the top row whole
        assert deps[20, 15] and deps[20, 16] and deps[20, 12] and deps[20, 4]
        assert not deps[20, 17] and not deps[20, 13] and not deps[20, 9]  # (3, 2), (2, 3), (1, 4)


@pytest.mark.parametrize("name", MODELS)
def test_channels_of_a_pixel_follow_r_g_b(name):
    """Sub-pixel conditionals on RGB: G reads R of its own pixel, B reads R and G, R reads neither."""
    model = tiny(name, (3, 2, 2), 4)
    deps = dependencies(model, n=64)  # enough examples that no path is cut by dead ReLUs at this tiny width
    hw = 4
    for p in range(hw):
        r, g, b = p, hw + p, 2 * hw + p  # flat (channel-planar) index of the pixel's R, G, B
        assert not deps[r, [r, g, b]].any()
        assert deps[g, r] and not deps[g, [g, b]].any()
        assert deps[b, r] and deps[b, g] and not deps[b, b]
    assert deps[2 * hw + 3, 0] and deps[3, 2 * hw]  # and earlier pixels whole: B of (1, 1) reads R of (0, 0), ...
    grouped = tiny(name, (3, 2, 2), 4, group_shape="pixel")
    assert not dependencies(grouped).diagonal().any()


@pytest.mark.parametrize("name", MODELS)
def test_features_are_the_residual_stream(name):
    model = tiny(name, (3, 3, 3), 4, num_classes=2)
    x = torch.randint(4, (2, 3, 3, 3))
    f = model.features(x, torch.tensor([0, 1]))
    assert f.shape == (2, 27, 12)  # (B, G, 2h)
    assert model.features(x, 0, layer=0).shape == (2, 27, 12)
    with pytest.raises(InputError, match="layer must be an integer in"):
        model.features(x, 0, layer=3)


@pytest.mark.parametrize("name", MODELS)
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    model = chainrule.create_model(name, (1, 4, 4), 2, hidden_channels=4, num_layers=2, head_channels=8,
                                   first_kernel_size=3)
    x = (torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.3).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    first = None
    for _ in range(30):
        loss = -model.log_prob(x).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert -model.log_prob(x).mean().item() < first - 0.5


@pytest.mark.parametrize("name", MODELS)
def test_bad_arguments_are_clear_errors(name):
    with pytest.raises(InputError, match="odd"):
        chainrule.create_model(name, (1, 4, 4), 2, first_kernel_size=4)
    with pytest.raises(InputError, match="multiples of the 3 channel groups"):
        chainrule.create_model(name, (3, 4, 4), 2, hidden_channels=8, head_channels=6)
    with pytest.raises(InputError, match="num_layers must be a positive integer"):
        chainrule.create_model(name, (1, 4, 4), 2, num_layers=0)
    with pytest.raises(InputError, match="hidden_channels must be a positive integer"):
        chainrule.create_model(name, (1, 4, 4), 2, hidden_channels=2.5)
    with pytest.raises(InputError, match="sub-pixel or one whole pixel"):
        chainrule.create_model(name, (2, 4, 4), 2, group_shape=(1, 2, 2))
    with pytest.raises(InputError, match=r"\(C, H, W\)"):
        chainrule.create_model(name, (16,), 2)
    chainrule.create_model(name, (3, 4, 4), 2, hidden_channels=6, head_channels=6, group_shape="pixel")  # no groups


def test_row_lstm_kernel_must_be_odd_and_the_diagonal_has_none():
    with pytest.raises(InputError, match="kernel_size must be odd"):
        chainrule.create_model("row_lstm", (1, 4, 4), 2, kernel_size=2)
    with pytest.raises(InputError, match="no hyperparameter"):
        chainrule.create_model("diagonal_bilstm", (1, 4, 4), 2, kernel_size=3)
