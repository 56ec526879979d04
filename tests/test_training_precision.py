"""Training precision: ``auto`` measures float32 against bf16 autocast (and the image models' two
layouts) on the model's own batch, caches the verdict, and says it in one log line; the likelihood
stays in float32 whatever the pass runs in."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import chainrule
import chainrule.nn.pixel as pixel
from chainrule.errors import InputError
from chainrule.training import TrainConfig, Trainer
from chainrule.training import precision as prec

F32, BF16 = None, torch.bfloat16


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache (file and memory) for every test."""
    monkeypatch.setenv("CHAINRULE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(prec, "_memory", {})
    return tmp_path / "cache" / prec.CACHE_FILE


def _pixelcnn():
    torch.manual_seed(0)
    return chainrule.create_model("pixelcnn", (1, 6, 6), 2, channels=8, num_layers=1, head_channels=8, first_kernel_size=3)


def _made():
    torch.manual_seed(0)
    return chainrule.create_model("made", (6,), 2, hidden_sizes=[8])


def _batch(shape=(1, 6, 6), n=16):
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(1)) < 0.5).long()


def _fake_measure(seconds, calls):
    """A stand-in for prec.measure: the given seconds per candidate name (the probe of the first
    candidate alone gets 1 s, above MIN_STEP_SECONDS, so every candidate is then tried)."""
    def measure(model, x, context, optimizer, candidates, call=None, budget=prec.MEASURE_SECONDS):
        calls.append([prec._name(*c) for c in candidates])
        if len(candidates) == 1:
            return {candidates[0]: 1.0}
        return {c: seconds[prec._name(*c)] for c in candidates}
    return measure


@pytest.mark.parametrize("seconds, expected", [
    ({"float32": 1.0, "bfloat16": 0.5}, (BF16, None)),
    ({"float32": 1.0, "bfloat16": 1.5}, (F32, None)),
    ({"float32": 1.0, "bfloat16": 0.97}, (F32, None)),  # within the 5% margin: the exact arithmetic stays
])
def test_auto_picks_the_faster_precision(monkeypatch, caplog, seconds, expected, cache):
    calls = []
    monkeypatch.setattr(prec, "measure", _fake_measure(seconds, calls))
    t = Trainer(_made(), TrainConfig(), progress=False)
    x = _batch((6,))
    with caplog.at_level(logging.INFO, logger="chainrule.training.trainer"):
        nll = t.train_step(x, None, 1e-3)
    assert nll.dtype == torch.float32
    choice = t.choose_precision(x)
    assert (choice.dtype, choice.channels_last) == expected and choice.source == "measured"
    assert t.autocast_dtype == expected[0]
    assert calls == [["float32"], ["float32", "bfloat16"]]  # the probe, then both (no layouts: not an image model)
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(lines) == 1 and ("bfloat16 autocast" if expected[0] else "float32") in lines[0], lines
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["precision"] == ("bfloat16" if expected[0] else "float32")
    assert entry["key"]["model"]["model"] == "made" and entry["key"]["batch"] == [16, 6]
    assert entry["key"]["threads"] == torch.get_num_threads() and entry["key"]["torch"] == torch.__version__


def test_image_models_also_measure_the_layout(monkeypatch):
    calls = []
    seconds = {"float32/channels_last": 1.0, "float32/nchw": 0.6, "bfloat16/channels_last": 0.8, "bfloat16/nchw": 0.9}
    monkeypatch.setattr(prec, "measure", _fake_measure(seconds, calls))
    t = Trainer(_pixelcnn(), TrainConfig(), progress=False)
    layouts = []
    conv = next(m for m in t.model.modules() if isinstance(m, pixel.MaskedConv2d))
    conv.register_forward_hook(lambda m, i, out: layouts.append(out.is_contiguous()))
    t.train_step(_batch(), None, 1e-3)
    choice = t.choose_precision(_batch())
    assert (choice.dtype, choice.channels_last) == (F32, False)
    assert calls[1] == list(seconds)
    assert layouts == [True]  # NCHW maps (channels-last ones are not contiguous) during the training step
    layouts.clear()
    t.model.log_prob(_batch())  # evaluation: the layers' default layout again
    assert layouts == [False]


def test_the_cache_is_reused_and_decides_alone(monkeypatch, cache):
    calls = []
    monkeypatch.setattr(prec, "measure", _fake_measure({"float32": 1.0, "bfloat16": 0.5}, calls))
    Trainer(_made(), TrainConfig(), progress=False).train_step(_batch((6,)), None, 1e-3)
    assert len(calls) == 2 and cache.is_file()

    def fail(*a, **k):
        raise AssertionError("measured again although cached")
    monkeypatch.setattr(prec, "measure", fail)
    prec._memory.clear()  # a new process: only the file
    t = Trainer(_made(), TrainConfig(), progress=False)
    t.train_step(_batch((6,)), None, 1e-3)
    assert t.choose_precision(_batch((6,))).source == "cache" and t.autocast_dtype == BF16
    # another batch size is another key: measured (here: refused by the stand-in)
    with pytest.raises(AssertionError, match="measured again"):
        Trainer(_made(), TrainConfig(), progress=False).train_step(_batch((6,), n=8), None, 1e-3)


def test_a_prefilled_cache_forces_each_branch(monkeypatch, cache):
    monkeypatch.setattr(prec, "measure", lambda *a, **k: pytest.fail("measured although cached"))
    x = _batch()
    key = prec.cache_key(_pixelcnn(), x, None)
    for precision, channels_last in (("bfloat16", True), ("float32", False), ("float32", True), ("bfloat16", False)):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"version": prec.CACHE_VERSION, "entries": {
            prec._digest(key): {"precision": precision, "channels_last": channels_last, "seconds": {}, "key": key}}}))
        prec._memory.clear()
        t = Trainer(_pixelcnn(), TrainConfig(), progress=False)
        t.train_step(x, None, 1e-3)
        assert t.autocast_dtype == getattr(torch, precision) if precision != "float32" else t.autocast_dtype is None
        assert t.choose_precision(x).channels_last is channels_last


def test_explicit_precision_bypasses_the_measurement(monkeypatch, cache):
    monkeypatch.setattr(prec, "measure", lambda *a, **k: pytest.fail("measured an explicit precision"))
    for precision, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        t = Trainer(_made(), TrainConfig(precision=precision), progress=False)
        assert t.autocast_dtype == dtype  # known before any step
        t.train_step(_batch((6,)), None, 1e-3)
        assert t.autocast_dtype == dtype
    assert not cache.exists()
    with pytest.raises(InputError, match="precision"):
        TrainConfig(precision="half")


def test_a_real_measurement_leaves_the_run_untouched(cache):
    """Unpatched: every candidate timed on a copy; the model's weights and torch's generator are as before."""
    model = _pixelcnn()
    x = _batch()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    opt = torch.optim.Adam(model.parameters())
    times = prec.measure(model, x, None, lambda m: torch.optim.Adam(m.parameters()),
                         prec._candidates(True, bf16=True), budget=0.0)
    assert [prec._name(*c) for c in times] == ["float32/channels_last", "float32/nchw", "bfloat16/channels_last",
                                               "bfloat16/nchw"]
    assert all(0 < t < 60 for t in times.values())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and not opt.state
    # the whole choice, measured for real: one of the candidates, remembered in the file
    choice = prec.choose(model, "auto", x)
    assert choice.source == "measured" and choice.seconds
    assert prec.choose(model, "auto", x).dtype == choice.dtype and cache.is_file()


def test_small_steps_keep_float32_untried(monkeypatch):
    calls = []

    def measure(model, x, context, optimizer, candidates, call=None, budget=prec.MEASURE_SECONDS):
        calls.append(len(candidates))
        return {c: 0.001 for c in candidates}
    monkeypatch.setattr(prec, "measure", measure)
    choice = prec.choose(_made(), "auto", _batch((6,)))
    assert choice.dtype is None and calls == [1]


def test_a_gpu_is_not_timed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.device_choice(torch.device("cuda")).dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    choice = prec.device_choice(torch.device("cuda"))
    assert choice.dtype == torch.float16 and choice.grad_scaler and "loss scaling" in prec.describe(choice)
    assert prec.device_choice(torch.device("cpu")) is None


def test_float16_trains_with_a_grad_scaler():
    """float16 autocast with loss scaling (the GPU-without-bf16 path), run here on the CPU."""
    model = _made()
    before = [p.detach().clone() for p in model.parameters()]
    t = Trainer(model, TrainConfig(precision="float16", grad_clip=1.0), progress=False)
    assert t.autocast_dtype == torch.float16  # asked before the first step: the scaler is there all the same
    nll = t.train_step(_batch((6,)), None, 1e-2)
    assert t._scaler is not None and nll.dtype == torch.float32 and torch.isfinite(nll).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bf16_training_keeps_the_loss_in_float32_and_matches_float32():
    """The same steps under bf16 autocast and in float32 reach nearly the same NLL; the NLL the
    trainer computes is float32 either way."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(256, 1, 6, 6, generator=g) < torch.linspace(0.1, 0.9, 36).reshape(1, 1, 6, 6)).long()
    final = {}
    for precision in ("float32", "bfloat16"):
        model = _pixelcnn()
        start = float(model.log_prob(x).detach().mean())
        t = Trainer(model, TrainConfig(precision=precision, lr=1e-2), progress=False)
        assert t.autocast_dtype == (None if precision == "float32" else torch.bfloat16)
        for k in range(60):
            nll = t.train_step(x[(k % 4) * 64:(k % 4 + 1) * 64], None, 1e-2)
            assert nll.dtype == torch.float32
        final[precision] = float(model.log_prob(x).detach().mean())  # evaluated in float32
        assert final[precision] > start + 1.0  # it learned (by more than a nat per example)
    assert abs(final["float32"] - final["bfloat16"]) < 0.02 * abs(final["float32"]), final


def test_a_model_that_cannot_be_copied_trains_in_float32(monkeypatch, cache):
    def no_copy(*a, **k):
        raise TypeError("cannot pickle this")
    monkeypatch.setattr(prec.copy, "deepcopy", no_copy)
    t = Trainer(_pixelcnn(), TrainConfig(), progress=False)
    t.train_step(_batch(), None, 1e-3)
    assert t.autocast_dtype is None and not cache.exists()


def test_attention_under_bf16_autocast_on_a_cpu_runs_in_float32(monkeypatch):
    """Under bf16 autocast on a CPU the GPT block's attention runs in float32 (PyTorch's bf16 flash
    kernel is ~8x slower there): its output is the float32 block's to bf16 rounding of the
    projections, causal, with gradients reaching every input."""
    from chainrule.nn.attention import CausalSelfAttentionBlock

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = CausalSelfAttentionBlock(16, 4, 0.0, bias=True)
    x = torch.randn(3, 9, 16, generator=g, requires_grad=True)
    seen, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kw)
    with monkeypatch.context() as m:
        m.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
    assert seen == [torch.float32]
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.testing.assert_close(y.float(), block(x), atol=0.05, rtol=0.05)
    x2 = x.detach().clone()
    x2[:, 4:] += 1.0  # causal: the first 4 outputs do not move when the later inputs change
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(block(x2)[:, :4], block(x.detach())[:, :4], atol=0, rtol=0)


@pytest.mark.parametrize("name, fused", [("adam", True), ("adamw", True), ("adamax", None)])
def test_the_optimizer_is_fused_where_a_kernel_exists(name, fused):
    """Adam and AdamW take PyTorch's fused kernel on a CPU (Adamax has none); the update is the
    default implementation's to float32 rounding."""
    from chainrule.training.optimizers import OPTIMIZERS, make_optimizer

    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [m.weight], "weight_decay": 0.1}, {"params": [m.bias], "weight_decay": 0.0}]  # noqa: E731
    opt = make_optimizer(name, groups(a), 1e-2, (0.9, 0.99))
    ref = OPTIMIZERS[name](groups(b), lr=1e-2, betas=(0.9, 0.99))
    assert type(opt) is OPTIMIZERS[name] and opt.defaults.get("fused") is fused
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        for m, o in ((a, opt), (b, ref)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    torch.testing.assert_close(a.weight, b.weight, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.bias, b.bias, atol=1e-6, rtol=1e-6)
    t = Trainer(_made(), TrainConfig(optimizer=name), progress=False)
    assert t.optimizer.defaults.get("fused") is fused


def test_a_fused_step_is_seen_by_the_masked_weight_cache():
    """The fused CPU kernel writes parameters in place without counting it in their version:
    the optimizer counts it, so MADE's masked-weight cache (keyed on the version) is not stale."""
    from chainrule.training.optimizers import make_optimizer

    model = _made()
    x = _batch((6,))
    opt = make_optimizer("adamw", model.parameters(), 1e-2, (0.9, 0.99))
    with torch.no_grad():
        model.log_prob(x)  # fills the cache
    versions = [p._version for p in model.parameters()]
    opt.zero_grad()
    (-model.log_prob(x).mean()).backward()
    opt.step()
    assert all(p._version > v for p, v in zip(model.parameters(), versions))
    with torch.no_grad():
        cached = model.log_prob(x)
    model.__dict__.pop("_masked_cache", None)
    for m in model.modules():
        m.__dict__.pop("_masked_cache", None)
    with torch.no_grad():
        torch.testing.assert_close(cached, model.log_prob(x), atol=0, rtol=0)


def test_auto_measurement_time_is_not_a_training_step_for_the_time_budget(monkeypatch):
    """auto's trial steps take seconds on a slow model; counted as the first training step they made
    the time budget expect a validation to take hours and stop the run after that step (a Diagonal
    BiLSTM with --max-seconds 4300 stopped after 1 of its 782 steps). Here the measurement is made to
    take 1.5 s: the run must go on training until the budget, not stop at its first step."""
    import time

    decide = prec.decide

    def slow_decide(*args, **kwargs):
        time.sleep(1.5)
        return decide(*args, **kwargs)

    monkeypatch.setattr(prec, "decide", slow_decide)
    data = _batch((6,), n=64)
    val = _batch((6,), n=400)
    res = Trainer(_made(), TrainConfig(epochs=1000, batch_size=8, patience=None, max_seconds=4.0),
                  progress=False).fit(data, val)
    assert res.stopped_by_time
    assert res.examples_seen > 20 * 8, res.examples_seen  # many steps, not one
