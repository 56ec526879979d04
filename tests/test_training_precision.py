"""Training precision: bf16 autocast for the network's pass, the likelihood always in float32."""

from __future__ import annotations

import pytest
import torch

import chainrule
from chainrule.errors import InputError
from chainrule.training import TrainConfig, Trainer, autocast_dtype
from chainrule.training import trainer as trainer_module


def _pixelcnn():
    torch.manual_seed(0)
    return chainrule.create_model("pixelcnn", (1, 6, 6), 2, channels=8, num_blocks=1, head_channels=8, first_kernel_size=3)


def test_auto_precision_follows_the_model_and_the_cpu(monkeypatch):
    conv, mlp = _pixelcnn(), chainrule.create_model("nade", (4,), 2, hidden_size=4)
    monkeypatch.setattr(trainer_module, "_cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert autocast_dtype(conv, "auto") == torch.bfloat16
    assert autocast_dtype(mlp, "auto") is None  # not marked mixed_precision: float32
    assert autocast_dtype(conv, "float32") is None and autocast_dtype(mlp, "bfloat16") == torch.bfloat16
    # AVX-512 BF16 without AMX ran bf16 convolutions slower than float32 here: auto stays float32
    monkeypatch.setattr(trainer_module, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert autocast_dtype(conv, "auto") is None
    with pytest.raises(InputError, match="precision"):
        TrainConfig(precision="half")


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
