"""Likelihood and evaluation, written once for every model: exact log-likelihoods in nats, with the
unit in every name.

- ``nll_nats``: mean over examples of -log p(x), nats per example;
- ``bits_per_dim``: the same divided by D ln 2 (D = variables per example);
- ``perplexity``: exp(nats per variable), the per-token perplexity for sequences (each example a
  window of D tokens, every token counted once).

Sequence data is compared per token, not per window: an evaluation given a ``unit`` (what one
variable is: ``"char"``, ``"byte"``, ``"token"`` for word / BPE tokens, ``"sample"`` for audio;
:func:`token_unit` finds it from a dataset or tokenizer) leads with nats and bits per token and the
perplexity, named by that unit (``bits/char``), and keeps nats per example (the window) as the last
figure; images and other data keep nats per example and bits/dim, their convention.

An ensemble's likelihood averages its members' *probabilities*, log (1/K) sum_k p_k(x) — itself a
normalized likelihood (averaging logits, as some code does, is not one); ``member=k`` scores one
member, ``member=[0, 2]`` the smaller ensemble of those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from chainrule.contract import ARModel
from chainrule.errors import InputError

Member = int | Sequence[int] | None

#: Examples per forward pass when evaluating. Small on purpose: on a CPU, batches whose activations
#: run to hundreds of MB are dominated by page faults (glibc hands blocks above 32 MB back to the
#: kernel at every free). Measured (``benchmarks/eval_batch.py``, BENCHMARKS.md §7): NADE-500 on
#: 28x28 images evaluates 581 images/s at 64 against 231 at 1024, a small Gated PixelCNN 139 against 52.
EVAL_BATCH_SIZE = 64

#: What one variable of a text run is, by tokenizer kind (any other tokenizer: ``"token"``).
_UNIT_OF_TOKENIZER = {"char": "char", "byte": "byte"}


def token_unit(source: Any) -> str | None:
    """What one variable of sequence data is, for the per-token figures of an evaluation.

    ``source``: a :class:`~chainrule.data.Dataset`, a tokenizer, or None. Text is recognized by its
    tokenizer (a dataset's ``tokenizer``, as the run's checkpoint also stores it): ``"char"`` for a
    character tokenizer, ``"byte"`` for a byte tokenizer, ``"token"`` for word, BPE or any other
    tokenizer; audio datasets (a ``sample_rate``) give ``"sample"``; anything else (images, vectors,
    None) gives None, which keeps the per-example convention.
    """
    if source is None:
        return None
    if hasattr(source, "encode") and hasattr(source, "kind"):  # a tokenizer itself
        return _UNIT_OF_TOKENIZER.get(source.kind, "token")
    tokenizer = getattr(source, "tokenizer", None)
    if tokenizer is not None:
        return _UNIT_OF_TOKENIZER.get(getattr(tokenizer, "kind", None), "token")
    if getattr(source, "sample_rate", None) is not None:
        return "sample"
    return None


def _check_unit(unit: Any) -> str | None:
    if unit is not None and (not isinstance(unit, str) or not unit.isidentifier()):
        raise InputError(f"unit must be None or a word naming one variable (\"char\", \"byte\", \"token\"), got {unit!r}")
    return unit


def member_calls(model: ARModel, member: Member = None, order: Any = None, **options: Any) -> list[dict[str, Any]]:
    """The call arguments of each member a likelihood averages over.

    A single model: one call with the given ``order`` and options. An ensemble: one call per member
    (all of them when ``member`` is None); an order or option then only goes with one member.
    """
    n = getattr(model, "num_members", 1)
    if n == 1:
        if member not in (None, 0) and not (isinstance(member, Sequence) and list(member) == [0]):
            raise InputError(f"member= applies to ensembles; {model.name!r} is a single model (got member={member!r})")
        return [{"order": order, **options}]
    if member is None:
        if order is not None or options:
            raise InputError("an ensemble's members fix their own orders and options: pass member=k together with order=")
        members: list[int] = list(range(n))
    elif isinstance(member, int) and not isinstance(member, bool):
        members = [member]
    else:
        try:
            members = [int(m) for m in member]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise InputError(f"member: expected an index or a sequence of indices, got {member!r}") from None
        if not members:
            raise InputError("member: expected an index or a non-empty sequence of indices, got an empty one")
    for m in members:
        if not 0 <= m < n:
            raise InputError(f"member must be in 0..{n - 1} (the ensemble has {n} members), got {m}")
    extra = {"order": order} if order is not None else {}
    return [{"member": m, **extra, **options} for m in members]


def group_log_probs(model: ARModel, x: torch.Tensor, context: Any = None, *,
                    net: Callable[..., torch.Tensor] | None = None, **call: Any) -> torch.Tensor:
    """log p(x_g | groups before g) for every group, ``(B, G)``, of a *validated* batch ``(B, *shape)``.

    ``net(x, context, **call)``: what computes the conditionals' parameters ``(B, G, P)`` instead of
    the model's module call — the trainer's pass (through a ``DistributedDataParallel`` wrapper,
    under autocast, its output cast to float32: :func:`chainrule.training.precision.network_nll`);
    the likelihood is always the model's head's."""
    params = (net if net is not None else model)(x, context, **call)  # (B, G, P)
    xg = model.groups.gather(x.reshape(x.shape[0], model.dim))  # (B, G, S)
    return model.head(params).log_prob(xg)


def log_prob(model: ARModel, x: Any, context: Any = None, member: Member = None, order: Any = None,
             **options: Any) -> torch.Tensor:
    """Exact log-likelihood in nats, ``(*batch, *shape)`` -> ``(*batch,)``.

    ``context``: the class label(s) or context tensor of a conditional model. ``order``: for
    models that take any order, the order over groups to factorize in (each order is a normalized
    model of its own). ``member``: for an ensemble, one member or a sequence of them (default: all,
    probabilities averaged).
    """
    x, batch = model.validate(x)
    calls = member_calls(model, member, order, **options)
    if x.shape[0] == 0:
        model.normalize_context(context, 0)
        return torch.zeros(batch, device=x.device)
    per = [group_log_probs(model, x, context, **c).sum(-1) for c in calls]
    out = per[0] if len(per) == 1 else torch.logsumexp(torch.stack(per, 0), 0) - math.log(len(per))
    return out.reshape(batch)


def log_prob_per_variable(model: ARModel, x: Any, context: Any = None, member: int | None = None,
                          order: Any = None, **options: Any) -> torch.Tensor:
    """log p(x_j | everything before it) for every variable j, ``(*batch, D)``, nats (row-major
    variable index). Inside a group the head's own chain rule splits the group's term; the terms
    sum to :func:`log_prob`. For an ensemble, one member's (``member=k``)."""
    x, batch = model.validate(x)
    if getattr(model, "num_members", 1) > 1 and member is None:
        raise InputError("per-variable log-likelihoods belong to one member of an ensemble: pass member=k")
    (call,) = member_calls(model, member, order, **options)
    params = model(x, context, **call)
    xg = model.groups.gather(x.reshape(x.shape[0], model.dim))
    per = model.head(params).log_prob_per_variable(xg)  # (B, G, S)
    return model.groups.scatter(per).reshape(*batch, model.dim)


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`evaluate`. Every field name carries its unit.

    ``unit`` (sequence data: ``"char"``, ``"byte"``, ``"token"``, ``"sample"``; see
    :func:`token_unit`) names one variable; with it the summary leads with the per-token figures
    (``nats_per_token``, ``bits_per_token``, ``perplexity``) and :meth:`as_dict` adds them and the
    unit to the per-example keys, which stay as they were.
    """

    nll_nats: float  # per example
    bits_per_dim: float
    perplexity: float  # per variable (token)
    num_examples: int
    dim: int
    unit: str | None = None  # what one variable is (text: "char", "byte", "token"); None: not a sequence

    @property
    def nats_per_token(self) -> float:
        """Mean -log p(x_i | x_<i) per variable (token), nats: the cross-entropy of sequence data."""
        return self.nll_nats / self.dim

    @property
    def bits_per_token(self) -> float:
        """The same in bits (equal to ``bits_per_dim``): bits/char for a character-level run."""
        return self.bits_per_dim

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        if self.unit is None:
            del out["unit"]  # images and vectors: exactly the keys they always had
        else:
            out.update(nats_per_token=self.nats_per_token, bits_per_token=self.bits_per_token)
        return out

    def __str__(self) -> str:
        u = self.unit
        if u is None:
            return (f"NLL {self.nll_nats:.4f} nats/example | {self.bits_per_dim:.4f} bits/dim | "
                    f"perplexity {self.perplexity:.4f} per variable | {self.num_examples} examples x {self.dim} variables")
        # per token first: that is the figure text models are compared by (a window's total is not)
        return (f"{self.nats_per_token:.4f} nats/{u} | {self.bits_per_token:.4f} bits/{u} | "
                f"perplexity {self.perplexity:.4f} per {u} | NLL {self.nll_nats:.2f} nats/example "
                f"({self.num_examples} examples x {self.dim} {u}s)")


def context_rows(context: Any, rows: slice | torch.Tensor, n: int) -> Any:
    """The context of some of ``n`` examples: a per-example context (leading axis ``n``) is indexed
    by ``rows``; one label or tensor shared by all is kept as it is."""
    if context is None or isinstance(context, (int, float)):
        return context
    t = torch.as_tensor(context)
    return t[rows] if t.dim() >= 1 and t.shape[0] == n else t


def per_example_nll(model: ARModel, data: Any, context: Any = None, batch_size: int = EVAL_BATCH_SIZE, progress: bool = False,
                    desc: str = "eval", member: Member = None) -> torch.Tensor:
    """-log p(x) in nats for every example of ``data`` ``(N, *shape)`` -> ``(N,)`` float64 (on CPU).

    ``context``: one label / tensor for all, or one per example. ``member``: for an ensemble, one
    member alone, or a sequence of them (the smaller ensemble); default: the whole ensemble."""
    n = len(data)
    if n == 0:
        raise InputError("cannot evaluate on an empty dataset (0 examples)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
                stop = min(n, start + batch_size)
                lp = log_prob(model, data[start:stop], context_rows(context, slice(start, stop), n), member=member)
                out.append(-lp.double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def summarize(nll: torch.Tensor, dim: int, unit: str | None = None) -> EvalResult:
    """Turn per-example NLLs (nats) into an :class:`EvalResult` (``unit``: see :func:`evaluate`)."""
    mean = float(nll.mean())
    return EvalResult(nll_nats=mean, bits_per_dim=mean / (dim * math.log(2)),
                      perplexity=_exp(mean / dim), num_examples=len(nll), dim=dim, unit=_check_unit(unit))


def _exp(v: float) -> float:
    """exp(v), infinity past float64's range (a density's NLL of badly scaled data can exceed 709 nats/dim)."""
    return math.exp(v) if v < 709.0 else math.inf


def evaluate(model: ARModel, data: Any, context: Any = None, batch_size: int = EVAL_BATCH_SIZE, progress: bool = False,
             member: Member = None, unit: str | None = None, desc: str = "eval") -> EvalResult:
    """Exact NLL of ``model`` on ``data`` ``(N, *shape)``: nats/example, bits/dim, perplexity.

    ``context``: the labels ``(N,)`` (or context tensors) of a conditional model. For an ensemble,
    ``member=k`` evaluates member k alone (a sequence: the ensemble of those members). ``unit``:
    for sequence data, what one variable is (``token_unit(ds)``: ``"char"``, ``"byte"``,
    ``"token"``), so that the result reads per token (``bits/char``) rather than per window.
    ``progress``: a progress bar over the batches, labelled ``desc``."""
    unit = _check_unit(unit)
    return summarize(per_example_nll(model, data, context, batch_size, progress, desc=desc, member=member),
                     model.dim, unit)


def class_log_likelihoods(model: ARModel, data: Any, batch_size: int = EVAL_BATCH_SIZE, progress: bool = False) -> torch.Tensor:
    """log p(x | y) in nats for every example and every class of a class-conditional model,
    ``(N, *shape)`` -> ``(N, Y)`` float64 (one pass over the data per class)."""
    if not getattr(model, "num_classes", None):
        raise InputError(f"{model.name}: the Bayes classifier needs a class-conditional model (num_classes=Y)")
    return torch.stack([-per_example_nll(model, data, y, batch_size, progress, desc=f"class {y + 1}/{model.num_classes}")
                        for y in range(model.num_classes)], 1)


@dataclass(frozen=True)
class ClassifierResult:
    """Result of :func:`bayes_classify`. ``log_posterior`` ``(N, Y)``: log p(y | x), nats."""

    accuracy: float | None  # argmax_y p(x | y) p(y) against the true labels (None without labels)
    nll_given_label_nats: float | None  # -log p(x | y_true), per example
    nll_marginal_nats: float  # -log sum_y p(x | y) p(y): the conditional model as a model of x alone
    num_examples: int
    num_classes: int
    log_posterior: torch.Tensor

    def as_dict(self) -> dict[str, float | int | None]:
        return {k: v for k, v in asdict(self).items() if k != "log_posterior"}


def bayes_classify(model: ARModel, data: Any, labels: Any = None, prior: Any = None, batch_size: int = EVAL_BATCH_SIZE,
                   progress: bool = False) -> ClassifierResult:
    """A class-conditional model as a generative classifier: p(y | x) ∝ p(x | y) p(y).

    ``prior``: p(y) ``(Y,)`` (e.g. the training labels' frequencies; default uniform). ``labels``
    ``(N,)``: the true classes, for the accuracy and the NLL given the label. The marginal NLL
    -log Σ_y p(x | y) p(y) is an exact likelihood of x, comparable with an unconditional model's.
    """
    ll = class_log_likelihoods(model, data, batch_size, progress)  # (N, Y)
    y_count = ll.shape[1]
    if prior is None:
        log_prior = torch.full((y_count,), -math.log(y_count), dtype=torch.float64)
    else:
        p = torch.as_tensor(prior, dtype=torch.float64).reshape(-1)
        if p.shape != (y_count,) or not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise InputError(f"prior must be {y_count} non-negative probabilities (one per class), got shape {tuple(p.shape)}")
        log_prior = (p / p.sum()).log()
    joint = ll + log_prior  # log p(x, y)
    marginal = torch.logsumexp(joint, 1)  # log p(x)
    posterior = joint - marginal[:, None]
    accuracy = given = None
    if labels is not None:
        y = torch.as_tensor(labels).long().reshape(-1).cpu()
        if y.shape != (len(ll),) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= y_count)):
            raise InputError(f"labels must be {len(ll)} class indices in 0..{y_count - 1}")
        accuracy = float((posterior.argmax(1) == y).double().mean())
        given = float(-ll[torch.arange(len(y)), y].mean())
    return ClassifierResult(accuracy, given, float(-marginal.mean()), len(ll), y_count, posterior)


@dataclass(frozen=True)
class StreamResult:
    """Result of :func:`evaluate_stream`: per-token figures over a whole token stream (``unit``:
    what a token is, as in :class:`EvalResult`)."""

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    num_tokens: int
    window: int
    stride: int
    unit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        if self.unit is None:
            del out["unit"]
        return out

    def __str__(self) -> str:
        u = self.unit or "token"
        return (f"{self.nats_per_token:.4f} nats/{u} | {self.bits_per_token:.4f} bits/{u} | "
                f"perplexity {self.perplexity:.4f} per {u} | {self.num_tokens} {u}s, window {self.window}, "
                f"stride {self.stride}")


def evaluate_stream(model: ARModel, stream: torch.Tensor, stride: int | None = None, batch_size: int = 256,
                    progress: bool = False, unit: str | None = None) -> StreamResult:
    """Token-weighted cross-entropy of a sequence model over a long 1-D ``stream`` of token ids.

    Windows of the model's length T start every ``stride`` tokens; the first window scores all its
    tokens, every later window only its last ``stride`` tokens, so each token is scored exactly
    once and (after the first window) with at least ``T - stride`` tokens of context. ``stride = T``
    scores independent windows; smaller strides give more context at more cost. Tokens past the
    last full window are not scored. ``unit``: what a token is (``"char"``, ...), for the summary.
    """
    unit = _check_unit(unit)
    if model.shape != (model.dim,):
        raise InputError(f"evaluate_stream needs a sequence model of shape (T,), got {model.shape}")
    t = model.dim
    stride = t if stride is None else stride
    if not 1 <= stride <= t:
        raise InputError(f"stride must be in 1..{t} (the model's window), got {stride}")
    stream = torch.as_tensor(stream).long().reshape(-1)
    if len(stream) < t:
        raise InputError(f"the stream has {len(stream)} tokens, fewer than one window of {t}")
    starts = torch.arange(0, len(stream) - t + 1, stride)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.inference_mode():
            for b in tqdm(range(0, len(starts), batch_size), disable=not progress, desc="eval", leave=False):
                s = starts[b:b + batch_size]
                windows = stream[s.unsqueeze(1) + torch.arange(t)]
                nll = -log_prob_per_variable(model, windows).double().cpu()  # (B, T)
                first = 1 if b == 0 else 0  # the very first window is scored whole
                total += float(nll[:first].sum()) + float(nll[first:, t - stride:].sum())
                count += first * t + (len(s) - first) * stride
    finally:
        model.train(was_training)
    mean = total / count
    return StreamResult(nats_per_token=mean, bits_per_token=mean / math.log(2), perplexity=_exp(mean),
                        num_tokens=count, window=t, stride=stride, unit=unit)
