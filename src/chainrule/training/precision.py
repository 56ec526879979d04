"""The arithmetic of the training pass, chosen by measurement: float32 or bf16 autocast (and, for the
image models on a CPU, channels-last or NCHW feature maps).

``precision="auto"`` (:class:`~chainrule.training.TrainConfig`'s default) does not guess from CPU
flags: on a CPU it times a few training steps of the actual model on its actual first batch, on a
private copy of the model and optimizer (the run's weights, optimizer and random streams are left
as they were), once per candidate — float32, bf16 autocast, and for models whose convolutions honour
:func:`chainrule.nn.pixel.feature_layout` each of them with channels-last and NCHW maps — round robin,
so that the machine's load hits them alike, for about a second or two (``MEASURE_SECONDS``). The
fastest wins; bf16 and NCHW must beat float32 channels-last (the exact arithmetic and the layer
default) by ``MARGIN`` (5%) to be chosen, so a near tie keeps float32. A model whose float32 step
takes under ``MIN_STEP_SECONDS`` (10 ms) is bound by Python and dispatch overheads, which autocast
only adds to: it keeps float32 after that one timing. Measured on the development
CPUs: bf16 training steps ran 2.2x faster than float32 on a PixelCNN on a Xeon with AMX, 0.64x on
an EPYC with AVX-512 BF16 but no AMX, and the 0.8M-parameter GPT's step ran slower in bf16 than in
float32 even with AMX until its attention stopped using PyTorch's bf16 flash kernel (faster since,
on that Xeon; BENCHMARKS.md sections 5 and 9) — flags cannot tell these apart, a timing can.

The verdict is cached per machine (CPU model or GPU name, torch version, torch threads) and per
model (its config: architecture, shape, values, hyperparameters) and batch shape, in
``precision.json`` under the user's cache directory — ``$CHAINRULE_CACHE_DIR``, else
``$XDG_CACHE_HOME/chainrule``, else ``~/.cache/chainrule`` — so that once cached the choice is
deterministic (and a resumed run trains with the arithmetic the run began with). An unwritable cache
directory only costs the measurement again (the verdict is also kept in memory for the process).

On a GPU nothing is measured: bf16 autocast where the device supports it, else float16 autocast
with a ``GradScaler`` (float16's range is too small for raw gradients). Explicit precisions
("float32", "bfloat16", "float16") bypass all of this. Whatever the pass runs in, the likelihood and
the loss are computed in float32 (:func:`network_nll`), and evaluation runs in float32.

Mixed precision: Micikevicius et al. 2018, "Mixed Precision Training"; bf16: Kalamkar et al. 2019,
"A Study of BFLOAT16 for Deep Learning Training".
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.inference.likelihood import group_log_probs
from chainrule.io.checkpoint import atomic_write
from chainrule.nn import pixel
from chainrule.training import distributed as dist_utils
from chainrule.training.optimizers import make_optimizer

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
MEASURE_SECONDS = 1.5  # the measurement's budget (each candidate still takes a warm-up and MIN_ROUNDS timed steps)
MIN_ROUNDS = 2  # timed steps per candidate at least (one more warms up)
MAX_ROUNDS = 5  # timed steps per candidate at most
MARGIN = 0.05  # bf16 / NCHW must be this much faster than float32 channels-last to be chosen
# A float32 step faster than this is bound by Python and dispatch, not arithmetic: autocast's casts
# only add to it (MADE 784-500-784 at batch 32: 6.3 ms either way), so float32 is kept untried.
MIN_STEP_SECONDS = 0.01
# 2: verdicts measured before reduced-precision attention on a CPU stopped using the slow bf16
# flash kernel and Adam/AdamW became fused (the GPT's bf16 step went from slower than float32 to faster)
CACHE_VERSION = 2
CACHE_FILE = "precision.json"

_memory: dict[str, dict[str, Any]] = {}  # this process's verdicts, by cache key (also when the file cannot be written)


@dataclass(frozen=True)
class PrecisionChoice:
    """How the training pass runs. ``dtype``: the autocast type (None: plain float32);
    ``channels_last``: the image models' feature-map layout on a CPU (None: the layers' default,
    channels-last on a CPU); ``source``: "explicit", "device" (a GPU's rule), "measured" or
    "cache"; ``seconds``: the measured step time of each candidate (a measurement's or a cached one's)."""

    dtype: torch.dtype | None
    channels_last: bool | None = None
    source: str = "explicit"
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """e.g. "bfloat16 autocast, channels-last maps", "float32"."""
        name = "float32" if self.dtype is None else f"{str(self.dtype).removeprefix('torch.')} autocast"
        if self.channels_last is not None:
            name += ", channels-last maps" if self.channels_last else ", NCHW maps"
        return name

    @property
    def grad_scaler(self) -> bool:
        """True for float16: its gradients need loss scaling (a ``GradScaler``)."""
        return self.dtype == torch.float16


def cache_dir() -> Path:
    """``$CHAINRULE_CACHE_DIR``, else ``$XDG_CACHE_HOME/chainrule``, else ``~/.cache/chainrule``."""
    if os.environ.get("CHAINRULE_CACHE_DIR"):
        return Path(os.environ["CHAINRULE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chainrule"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _layout_applies(model: torch.nn.Module) -> bool:
    """True when some layer of ``model`` writes its maps through :func:`chainrule.nn.pixel.cpu_layout`."""
    return any(getattr(m, "uses_cpu_layout", False) for m in model.modules())


def network_nll(model: ARModel, x: torch.Tensor, context: Any, dtype: torch.dtype | None,
                channels_last: bool | None = None, net: torch.nn.Module | None = None, **call: Any) -> torch.Tensor:
    """-log p(x | context) ``(B,)`` nats of a validated batch ``x``: the network's pass through
    ``net`` (default ``model``; a ``DistributedDataParallel`` wrapper of it) under autocast to
    ``dtype`` (None: float32) with the feature-map layout ``channels_last``, and the likelihood of
    the conditionals' parameters ``(B, G, P)`` in float32 — through
    :func:`~chainrule.inference.likelihood.group_log_probs`, the likelihood evaluation uses too."""
    def forward(x: torch.Tensor, context: Any, **call: Any) -> torch.Tensor:
        with pixel.feature_layout(channels_last), \
                torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            params = (net if net is not None else model)(x, context, **call)  # (B, G, P)
        return params.float()

    return -group_log_probs(model, x, context, net=forward, **call).sum(-1)


def explicit_choice(precision: str) -> PrecisionChoice:
    """The choice of an explicit ``precision`` ("float32", "bfloat16", "float16")."""
    if precision not in PRECISIONS or precision == "auto":
        raise ValueError(f"not an explicit precision: {precision!r}")
    return PrecisionChoice(None if precision == "float32" else getattr(torch, precision))


def device_choice(device: torch.device) -> PrecisionChoice | None:
    """A GPU's rule (no measurement): bf16 where supported, else float16 with loss scaling; None
    on a CPU (measured instead)."""
    if device.type != "cuda":
        return None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return PrecisionChoice(dtype, None, "device")


def cache_key(model: ARModel, x: torch.Tensor, context: Any) -> dict[str, Any]:
    """What the verdict depends on: the machine, torch, its threads, the model and the batch."""
    device = x.device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    config = getattr(model, "config", {}) or {}
    return {"device": device.type, "machine": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "model": {k: config.get(k) for k in ("model", "shape", "num_values", "head", "hyperparameters",
                                                   "num_classes", "context_shape", "group_shape")},
            "members": int(getattr(model, "num_members", 1)),
            "batch": list(x.shape), "context": context is not None}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write_cache(path: Path, digest: str, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the cache file (read again just before, so concurrent runs' entries stay)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[digest] = entry

        def write(tmp: str) -> None:
            Path(tmp).write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True))
        atomic_write(path, write)
    except OSError as exc:  # a read-only home: measured again next time, nothing else lost
        log.debug("cannot write the precision cache %s: %s", path, exc)


def _from_entry(entry: dict[str, Any], source: str) -> PrecisionChoice | None:
    try:
        dtype = None if entry["precision"] == "float32" else getattr(torch, entry["precision"])
        cl = entry.get("channels_last")
        return PrecisionChoice(dtype, None if cl is None else bool(cl), source, dict(entry.get("seconds", {})))
    except (KeyError, AttributeError, TypeError):
        return None


def _candidates(layout: bool, bf16: bool) -> list[tuple[torch.dtype | None, bool | None]]:
    dtypes: list[torch.dtype | None] = [None, torch.bfloat16] if bf16 else [None]
    layouts: list[bool | None] = [True, False] if layout else [None]
    return [(d, cl) for d in dtypes for cl in layouts]  # the first: float32, the layers' default layout


def _name(dtype: torch.dtype | None, channels_last: bool | None) -> str:
    name = "float32" if dtype is None else str(dtype).removeprefix("torch.")
    return name if channels_last is None else f"{name}/{'channels_last' if channels_last else 'nchw'}"


def measure(model: ARModel, x: torch.Tensor, context: Any, optimizer: Callable[[Any], torch.optim.Optimizer],
            candidates: list[tuple[torch.dtype | None, bool | None]], call: dict[str, Any] | None = None,
            budget: float = MEASURE_SECONDS) -> dict[tuple[torch.dtype | None, bool | None], float]:
    """The fastest observed time of one training step (forward, float32 loss, backward, optimizer
    step) of a copy of ``model`` on the batch ``x`` under each candidate ``(dtype, channels_last)``.

    Candidates take turns, one step each per round; the first round warms up (oneDNN builds its
    kernels on the first call) and is not counted; rounds go on while the budget lasts (at least
    ``MIN_ROUNDS`` timed rounds, at most ``MAX_ROUNDS``). The minimum is robust to a loaded machine's spikes.
    A candidate whose step fails (an operation without bf16 support) or gives a non-finite loss is
    left out (its time is infinite). ``model`` and the random streams are left untouched."""
    devices = [x.device] if x.device.type == "cuda" else []
    best = {c: float("inf") for c in candidates}
    with torch.random.fork_rng(devices=devices):
        try:
            trial = copy.deepcopy(model)
            trial.train()
            opt = optimizer(trial)
        except Exception as exc:  # a model that cannot be copied: nothing measured, float32 (not cached)
            log.debug("precision measurement skipped: cannot copy the model (%s)", exc)
            return best
        failed: set[Any] = set()
        start = time.perf_counter()
        for rnd in range(MAX_ROUNDS + 1):
            for c in candidates:
                if c in failed:
                    continue
                t0 = time.perf_counter()
                try:
                    loss = network_nll(trial, x, context, c[0], c[1], **(call or {})).mean() / trial.dim
                    if not torch.isfinite(loss):
                        raise FloatingPointError("non-finite loss")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if x.device.type == "cuda":
                        torch.cuda.synchronize(x.device)
                except (RuntimeError, FloatingPointError, NotImplementedError) as exc:
                    log.debug("precision candidate %s failed: %s", _name(*c), exc)
                    failed.add(c)
                    best[c] = float("inf")
                    continue
                if rnd > 0:
                    best[c] = min(best[c], time.perf_counter() - t0)
            if rnd >= MIN_ROUNDS and time.perf_counter() - start >= budget:
                break
    return best


def pick(times: dict[tuple[torch.dtype | None, bool | None], float]) -> tuple[torch.dtype | None, bool | None]:
    """The fastest candidate, where anything but the first (float32 in the default layout) must
    beat the first by ``MARGIN`` to be chosen (a near tie keeps the exact arithmetic)."""
    items = list(times.items())
    base, base_t = items[0]
    winner, t = min(items, key=lambda kv: kv[1])
    return winner if t < base_t * (1 - MARGIN) else base


def choose(model: ARModel, precision: str, x: torch.Tensor, context: Any = None,
           optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
           call: dict[str, Any] | None = None, use_cache: bool = True) -> PrecisionChoice:
    """The precision of training ``model`` on batches like ``x`` (see the module docstring).

    ``optimizer(model)``: a fresh optimizer of the kind the run uses, for the measurement (default
    fused Adam, :func:`chainrule.training.optimizers.make_optimizer`); ``call``: extra arguments of
    the model call (an ensemble's member)."""
    if precision != "auto":
        return explicit_choice(precision)
    by_device = device_choice(x.device)
    if by_device is not None:
        return by_device
    key = cache_key(model, x, context)
    digest = _digest(key)
    path = cache_dir() / CACHE_FILE
    if use_cache:
        entry = _memory.get(digest) or _read_cache(path).get(digest)
        choice = _from_entry(entry, "cache") if isinstance(entry, dict) else None
        if choice is not None:
            _memory[digest] = entry
            return choice
    cands = _candidates(_layout_applies(model), bf16=x.device.type == "cpu")
    if optimizer is None:
        def optimizer(m: Any) -> torch.optim.Optimizer:
            return make_optimizer("adam", m.parameters(), 1e-3, (0.9, 0.999))
    make_opt = optimizer
    times = measure(model, x, context, make_opt, cands[:1], call, budget=0.0)  # a warm-up and MIN_ROUNDS steps
    if len(cands) > 1 and MIN_STEP_SECONDS <= next(iter(times.values())) < float("inf"):
        times = measure(model, x, context, make_opt, cands, call)
    if all(t == float("inf") for t in times.values()):  # nothing ran (the run's own step will say why)
        return PrecisionChoice(None, None, "measured")
    dtype, cl = pick(times)
    seconds = {_name(*c): round(t, 6) for c, t in times.items() if t != float("inf")}
    entry = {"precision": "float32" if dtype is None else str(dtype).removeprefix("torch."), "channels_last": cl,
             "seconds": seconds, "key": key, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    _memory[digest] = entry
    if use_cache:
        _write_cache(path, digest, entry)
    return PrecisionChoice(dtype, cl, "measured", seconds)


def decide(model: ARModel, precision: str, x: torch.Tensor, context: Any,
           optimizer: Callable[[Any], torch.optim.Optimizer], world_size: int = 1, is_main: bool = True) -> PrecisionChoice:
    """The training pass's arithmetic for a run of ``world_size`` ranks: :func:`choose`'s, where
    under DDP with "auto" rank 0 decides (measures) and every rank follows (identical arithmetic
    on every rank; a collective)."""
    choice = None
    if is_main or precision != "auto":
        call = {"member": 0} if model.num_members > 1 else {}
        choice = choose(model, precision, x, context, call=call, optimizer=optimizer)
    if precision == "auto" and world_size > 1:
        codes = {None: 0, torch.bfloat16: 1, torch.float16: 2}
        mine = torch.tensor([codes[choice.dtype], {None: -1, False: 0, True: 1}[choice.channels_last]]
                            if choice is not None else [0, -1])
        got = [int(v) for v in dist_utils.broadcast(mine)]
        if choice is None:
            choice = PrecisionChoice({0: None, 1: torch.bfloat16, 2: torch.float16}[got[0]],
                                     None if got[1] < 0 else bool(got[1]), "rank 0")
    assert choice is not None
    return choice


def describe(choice: PrecisionChoice) -> str:
    """The one log line that says what ``precision="auto"`` chose and why."""
    if choice.source == "device":
        why = "this GPU's bf16" if choice.dtype == torch.bfloat16 else "no bf16 on this GPU; loss scaling on"
        return f"precision auto: {choice.label} ({why})"
    timing = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in choice.seconds.items())
    how = "measured" if choice.source == "measured" else f"cached in {cache_dir() / CACHE_FILE}, measured"
    return f"precision auto: {choice.label} ({how} per training step: {timing})"
