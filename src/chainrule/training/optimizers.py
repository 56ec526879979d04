"""The optimizer of a run, built once here for the trainer and for the precision measurement.

Adam and AdamW use PyTorch's fused kernel (``fused=True``: one pass over every parameter tensor
instead of a dozen element-wise operations per tensor) wherever it exists — CUDA and, since
PyTorch 2.4, the CPU. Same update to float32 rounding (2.98e-8 apart after 60 steps of the GPT of
BENCHMARKS.md section 9); 1.4 ms against 7.8 ms per AdamW step of that 0.8M-parameter GPT on one
thread, where the loop was a tenth of the whole training step. Adamax has no fused kernel and
keeps PyTorch's default. A fused step is counted in the parameters' version counters (the CPU
kernel does not), so that caches keyed on them see it (:func:`_bump_versions`).

Adam: Kingma & Ba 2015; AdamW (decoupled weight decay): Loshchilov & Hutter 2019.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)

#: The optimizers a run may name (``TrainConfig.optimizer``, ``--optimizer``).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}

FUSED = ("adam", "adamw")  # the optimizers with a fused kernel


def _fused_applies(params: list[torch.Tensor]) -> bool:
    """True when every parameter is a floating tensor on one device with PyTorch's fused kernels."""
    try:  # a private helper of torch.optim's own; a torch without it: the default loop
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return False
    devices = {p.device.type for p in params}
    return (len(devices) == 1 and devices <= set(_get_fused_kernels_supported_devices())
            and all(torch.is_floating_point(p) for p in params))


def make_optimizer(name: str, params: Iterable[Any], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """The optimizer ``name`` ("adam", "adamw", "adamax") over ``params`` (tensors or parameter
    groups, as ``torch.optim`` takes them), fused where :data:`FUSED` and the device allow."""
    params = list(params)
    cls = OPTIMIZERS[name]
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if name in FUSED and tensors and _fused_applies(tensors):
        try:
            opt = cls(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, ValueError) as exc:  # a build without the kernel: the default loop
            log.debug("fused %s unavailable (%s); using the default implementation", name, exc)
        else:
            opt.register_step_post_hook(_bump_versions)
            return opt
    return cls(params, lr=lr, betas=betas)


def _bump_versions(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """After a fused step: count it in every parameter's version counter. The fused CPU kernel
    writes the parameters in place without doing so (PyTorch 2.13), and caches keyed on the version
    — :meth:`chainrule.nn.MaskedLinear.masked_weight`'s masked weights — would go stale."""
    from torch.autograd.graph import increment_version  # only reached where the fused CPU kernel ran

    increment_version([p for g in opt.param_groups for p in g["params"]])
