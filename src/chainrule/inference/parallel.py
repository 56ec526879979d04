"""Parallel decoding for models that can predict *any* remaining variable from a prefix (σ-GPT).

A model with ``parallel_pass`` (:class:`chainrule.models.sigma_gpt.SigmaGPT`) evaluates, in one
pass over its cache, the conditional p(x_j | prefix) of any set of remaining variables j (one
"query" token each) and, at the same time, the chain of conditionals along a sequence of new
tokens (causal). Two decoders use it; both draw every sample in its own order: a fresh uniformly
random one (``order=None``, σ-GPT's choice) or the one given, after the observed variables
(``observed=(values, mask)``: any subset, as :func:`chainrule.inference.sampling.sample`).

**burst_sample — exact.** σ-GPT's token-based rejection sampling (Pannatier et al. 2024, §3.3), a
speculative sampler (Leviathan et al. 2023; Chen et al. 2023) whose draft is the model itself:

1. *draft*: with the prefix x_<L known (L variables in the sample's order o), one pass gives
   q_w = p(x_o(L+w) | x_<L) for the next W variables; draw d_w ~ q_w independently;
2. *verify*: one causal pass over d_0..d_{W-1} gives p_w = p(x_o(L+w) | x_<L, d_<w), the
   conditionals ancestral sampling would use had it drawn d_<w;
3. for w = 0, 1, ...: accept d_w with probability min(1, p_w(d_w) / q_w(d_w)); at the first
   rejection draw x_o(L+w) from the residual r_w ∝ max(0, p_w - q_w) and stop (the later drafts
   were drawn beside a value that is now gone). q_0 = p_0, so the first is always accepted.

Why the output is *exactly* ancestral sampling in order o: for one position with draft
distribution q and target p, P(output = x) = q(x) min(1, p(x)/q(x)) + P(reject) r(x)
= min(q(x), p(x)) + (1 - sum_y min(q(y), p(y))) max(0, p(x) - q(x)) / sum_y max(0, p(y) - q(y)),
and 1 - sum_y min(q, p) = sum_y max(0, p - q), so P(output = x) = min(q, p)(x) + max(0, p - q)(x)
= p(x). Given that d_<w were all accepted, d_w is a fresh draw from q_w (the drafts are drawn
independently) and the uniform deciding it is fresh, so the rule applies to every position in
turn with p_w the true conditional given the *accepted* values: by induction each variable is drawn
from p(x_o(i) | x_o(<i)), which is ancestral sampling. The order itself is drawn before any value
(independent of them), so with ``order=None`` the output is ancestral sampling in a uniformly
random order (the model's mixture over orders; its equality is tested by chi-square against
that mixture, and against exp(log_prob(x, order=o)) for a fixed order).

The pass count: a verify pass also carries the draft queries of the *next* W variables as if
every draft were accepted; when they all are, those queries are exactly the next draft and the
draft pass is skipped. Each iteration therefore costs 1 or 2 passes and places >= 1 variable
(against ancestral sampling's one pass per variable); ``return_stats=True`` reports passes per
sample.

**parallel_sample — approximate, not the model's distribution.** MaskGIT / MAR-style decoding
(Chang et al. 2022; Li et al. 2024): in S steps, step t draws the next k_t variables of the order
(a cosine or linear schedule) *independently* from their conditionals given the prefix, one pass
per step. Variables drawn in the same step ignore each other, so the samples follow a different,
more factorized distribution than exp(log_prob); the smaller S, the further. With S = G (one
variable a step) it is ancestral sampling. Measure the gap with ``log_prob`` of its samples
(``benchmarks/any_order_decoding.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.inference.sampling import _check_generator, observed_groups
from chainrule.orderings import inverse

SCHEDULES = ("cosine", "linear")


def _network(model: ARModel, member: int | None, order: Any) -> tuple[Any, Any]:
    """The network doing the passes (an ensemble's shared model) and the order asked for."""
    if getattr(model, "num_members", 1) > 1:
        if member is not None and order is None:
            order = model.orders[model._member(member)]
        model = model.model
    elif member not in (None, 0):
        raise InputError(f"member= applies to ensembles; {model.name!r} is a single model")
    if not hasattr(model, "parallel_pass"):
        raise InputError(f"parallel decoding needs a model that predicts any remaining variable from a prefix "
                         f"(sigma_gpt); {model.name!r} does not")
    if not model.head.discrete or model.group_size != 1:
        raise InputError("parallel decoding draws one discrete variable per conditional: it needs discrete data "
                         "and group_shape=None")
    return model, order


def _setup(model: ARModel, n: int, context: Any, generator: torch.Generator | None, observed: Any,
           order: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-sample orders ``(n, G)`` (observed first), the known count ``(n,)``, the values ``(n, G)``
    and the context features."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    _check_generator(model, generator)
    g, dev = model.num_groups, model.device
    ctx = model.context_features(context, n)
    if observed is None:
        x = torch.zeros(n, g, dtype=torch.long, device=dev)
        seen = torch.zeros(n, g, dtype=torch.bool, device=dev)
    else:
        vg, seen = observed_groups(model, n, observed)
        x = vg[..., 0].long() * seen
    if order is None:  # a uniformly random order per sample, drawn before any value
        key = torch.rand(n, g, generator=generator, device=dev)
    else:
        key = inverse(model.resolve_order(order)).to(dev).float().expand(n, g) / g
    o = torch.argsort(key + 2.0 * (~seen), dim=1)  # observed groups first, each part in its order
    return o, seen.sum(1), x, ctx


class _Passes:
    """The passes of one decoding run: builds each pass's tokens and attention pattern."""

    def __init__(self, model: ARModel, o: torch.Tensor, ctx: torch.Tensor | None, capacity: int) -> None:
        self.model, self.o, self.g = model, o, model.num_groups
        self.state = model.parallel_state(o.shape[0], ctx, capacity)
        self.slots = torch.arange(capacity, device=o.device)
        self.calls = 0

    def __call__(self, xv: torch.Tensor, start: torch.Tensor, nc: torch.Tensor, w: int) -> torch.Tensor:
        """Log-probabilities ``(n, w, K)`` of ``w`` tokens per sample after its ``start`` known
        variables: the first ``nc[b]`` causal (sequence indices start..start+nc-1, reading the
        values ``xv``), the others queries for the variables after them (all reading the last of
        them, attending to the prefix and the causal tokens, and each to itself)."""
        g, o = self.g, self.o
        ww = torch.arange(w, device=o.device).unsqueeze(0)
        causal = ww < nc.unsqueeze(1)
        read_idx = torch.where(causal, start.unsqueeze(1) + ww, (start + nc).unsqueeze(1)) - 1  # (n, w)
        read = torch.where(read_idx >= 0, o.gather(1, read_idx.clamp(0, g - 1)), -1)
        target = o.gather(1, (start.unsqueeze(1) + ww).clamp(max=g - 1))
        values = xv.gather(1, read.clamp(min=0)).unsqueeze(-1)
        limit = start.unsqueeze(1) + torch.minimum(ww + 1, nc.unsqueeze(1))  # (n, w)
        own = start.unsqueeze(1) + ww
        slots = self.slots[:int(own.max()) + 1]  # attend over the slots in use only
        allowed = (slots < limit.unsqueeze(-1)) | (slots == own.unsqueeze(-1))
        params = self.model.parallel_pass(self.state, values, read, target, start, allowed)
        self.calls += 1
        return self.model.head(params).variable_logits(None, 0)  # (n, w, K), normalized


def _scratch(x: torch.Tensor) -> torch.Tensor:
    """Values ``(n, G)`` with a scratch column G where the unused entries of a padded batch go."""
    return torch.cat([x, torch.zeros_like(x[:, :1])], 1)


def _draw(logp: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw from each row of log-probabilities ``(..., K)``."""
    k = logp.shape[-1]
    flat = logp.reshape(-1, k).float().exp()
    return torch.multinomial(flat, 1, generator=generator).view(logp.shape[:-1])


def burst_sample(model: ARModel, n: int, context: Any = None, generator: torch.Generator | None = None, *,
                 observed: tuple[Any, Any] | None = None, order: Any = None, window: int = 16,
                 member: int | None = None, return_stats: bool = False) -> Any:
    """Exact parallel sampling: σ-GPT's token-based rejection ("burst") sampling (module docstring).

    Args:
        n: number of samples.
        context: a conditional model's class label(s) or context tensor.
        generator: a ``torch.Generator`` on the model's device.
        observed: ``(values, mask)``: any observed subset, kept (as :func:`sample`).
        order: None (default): each sample in a fresh uniformly random order (after the observed
            variables) — ancestral sampling in a random order; an order spec: that order (then the
            output is distributed exactly as ``exp(log_prob(x, order=...))``).
        window: W, the variables drafted per iteration.
        member: an ensemble's member whose order to use (the network is shared).
        return_stats: also return ``{"passes": (n,) passes per sample, "model_calls": int,
            "iterations": (n,)}``.

    Returns:
        ``(n, *shape)`` samples (and the stats).
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise InputError(f"window must be a positive integer, got {window!r}")
    return _run(model, member, order, n, context, generator, observed, return_stats,
                lambda net, o, known, x, ctx: _burst(net, o, known, x, ctx, generator, window))


def _run(model: ARModel, member: int | None, order: Any, n: int, context: Any, generator: torch.Generator | None,
         observed: tuple[Any, Any] | None, return_stats: bool, loop: Callable[..., tuple[torch.Tensor, dict[str, Any]]]
         ) -> Any:
    """What both samplers do around their loop: the network in eval mode under inference mode, the
    orders and observed values set up, the ``(n, g + 1)`` scratch grid handed to ``loop(net, o, known,
    x, ctx)``, and its result cut back to ``(n, *shape)``."""
    net, order = _network(model, member, order)
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            o, known, x, ctx = _setup(net, n, context, generator, observed, order)
            x, stats = loop(net, o, known, _scratch(x), ctx)
    finally:
        net.train(was_training)
    out = x[:, :-1].reshape(n, *net.shape).clone()
    return (out, stats) if return_stats else out


def _burst(net: Any, o: torch.Tensor, known: torch.Tensor, x: torch.Tensor, ctx: torch.Tensor | None,
           generator: torch.Generator | None, window: int) -> tuple[torch.Tensor, dict[str, Any]]:
    n, g = o.shape
    dev = o.device
    w = min(window, g)
    passes = _Passes(net, o, ctx, capacity=g + 2 * w + 1)
    length = known.clone()  # L per sample
    rows = torch.arange(n, device=dev)
    ww = torch.arange(w, device=dev)
    per_sample = torch.zeros(n, dtype=torch.long, device=dev)
    iterations = torch.zeros(n, dtype=torch.long, device=dev)
    # first pass: the observed prefix (causal) and the first draft's queries
    kmax = int(known.max())
    q = passes(x, torch.zeros_like(length), known, kmax + w)
    q = q[rows.unsqueeze(1), (known.unsqueeze(1) + ww).clamp(max=kmax + w - 1)]  # (n, w, K): the queries
    per_sample += 1
    fresh = torch.ones(n, dtype=torch.bool, device=dev)  # q holds the drafts of the current prefix
    while True:
        active = length < g
        if not bool(active.any()):
            break
        if not bool(fresh[active].all()):
            need = active & ~fresh
            qn = passes(x, length, torch.zeros_like(length), w)
            q = torch.where(need.view(-1, 1, 1), qn, q)
            per_sample += need
        wb = torch.clamp(g - length, max=w) * active  # drafted this iteration, per sample
        valid = ww.unsqueeze(0) < wb.unsqueeze(1)  # (n, w)
        d = _draw(q, generator)  # (n, w)
        pos = o.gather(1, (length.unsqueeze(1) + ww).clamp(max=g - 1))  # the drafted variables
        xv = x.clone()
        xv.scatter_(1, torch.where(valid, pos, g), d)  # column g: scratch for the unused drafts
        # verify pass: the drafts (causal) + the next draft's queries, as if all were accepted
        out = passes(xv, length, wb, 2 * w)
        p, q_next = out[:, :w], out[:, w:]
        per_sample += active
        iterations += active
        lp, lq = p.gather(-1, d.unsqueeze(-1))[..., 0], q.gather(-1, d.unsqueeze(-1))[..., 0]
        u = torch.rand(n, w, generator=generator, device=dev)
        accept = (u.log() < (lp - lq).float()) | (ww == 0)  # q_0 = p_0: always accepted
        accept &= valid
        m = torch.where(accept.all(1), wb, (~accept).float().argmax(1))  # accepted drafts per sample
        keep = ww.unsqueeze(0) < m.unsqueeze(1)
        x.scatter_(1, torch.where(keep, pos, g), d)
        rejected = active & (m < wb)
        if bool(rejected.any()):
            r = rejected.nonzero().squeeze(1)
            pm, qm = p[r, m[r]].float().exp(), q[r, m[r]].float().exp()  # (k, K)
            resid = (pm - qm).clamp(min=0)
            resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, pm)  # p == q cannot reject; guard rounding
            x[r, pos[r, m[r]]] = torch.multinomial(resid, 1, generator=generator)[:, 0]
        length = length + torch.where(rejected, m + 1, m)
        fresh = active & ~rejected
        q = torch.where(fresh.view(-1, 1, 1), q_next, q)
    return x, {"passes": per_sample.cpu(), "iterations": iterations.cpu(), "model_calls": passes.calls}


def schedule_counts(remaining: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many variables each of ``steps`` steps fills when ``remaining`` are missing (each >= 1,
    summing to ``remaining``). "cosine" (MaskGIT): after step t a fraction cos(pi/2 (t+1)/S) is still
    missing, so early steps fill few and late steps many; "linear": equal shares."""
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if remaining == 0:
        return []
    s = max(1, min(steps, remaining))
    counts, filled = [], 0
    for t in range(s):
        frac = (t + 1) / s
        target = remaining * frac if schedule == "linear" else remaining * (1 - math.cos(math.pi / 2 * frac))
        target = max(filled + 1, min(round(target), remaining - (s - 1 - t)))  # >= 1 now, >= 1 left per later step
        counts.append(target - filled)
        filled = target
    return counts


def parallel_sample(model: ARModel, n: int, steps: int, context: Any = None, generator: torch.Generator | None = None,
                    *, observed: tuple[Any, Any] | None = None, order: Any = None, schedule: str = "cosine",
                    member: int | None = None, return_stats: bool = False) -> Any:
    """APPROXIMATE parallel decoding (MaskGIT / MAR style): NOT the model's distribution.

    In ``steps`` passes, step t draws the next k_t variables of each sample's order independently
    from their conditionals given what is already drawn (``schedule``: "cosine" or "linear"
    counts, :func:`schedule_counts`). Variables drawn in one step do not see each other, so the
    samples are not distributed as ``exp(log_prob)``; ``steps`` = the number of variables is
    ancestral sampling. For exact parallel sampling use :func:`burst_sample`.

    Args: ``n``, ``context``, ``generator``, ``observed``, ``order``, ``member`` as :func:`burst_sample`;
    ``steps``: the number of passes S (1 <= S; more than the missing variables is the same as
    one per step). Returns ``(n, *shape)`` (and ``{"passes": (n,), "model_calls": int}`` with ``return_stats``).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    return _run(model, member, order, n, context, generator, observed, return_stats,
                lambda net, o, known, x, ctx: _parallel(net, o, known, x, ctx, generator, steps, schedule))


def _parallel(net: Any, o: torch.Tensor, known: torch.Tensor, x: torch.Tensor, ctx: torch.Tensor | None,
              generator: torch.Generator | None, steps: int, schedule: str) -> tuple[torch.Tensor, dict[str, Any]]:
    n, g = o.shape
    dev = o.device
    counts = torch.zeros(n, steps, dtype=torch.long)
    for b, k in enumerate(known.tolist()):
        c = schedule_counts(g - k, steps, schedule)
        counts[b, :len(c)] = torch.tensor(c, dtype=torch.long)
    counts = counts.to(dev)
    passes = _Passes(net, o, ctx, capacity=g + 2 * int(counts.max().clamp(min=1)) + int(known.max()) + 1)
    length, nc = torch.zeros_like(known), known.clone()  # the first pass: the observed prefix (causal)
    per_sample = torch.zeros(n, dtype=torch.long, device=dev)
    for t in range(steps):
        k = counts[:, t]
        if not bool((k > 0).any()):
            break
        wq = int(k.max())
        w = int(nc.max()) + wq
        logp = passes(x, length, nc, w)  # causal: the last step's draws; queries: this step's
        ww = torch.arange(wq, device=dev)
        idx = (nc.unsqueeze(1) + ww).clamp(max=w - 1)
        q = logp.gather(1, idx.unsqueeze(-1).expand(-1, -1, logp.shape[-1]))  # (n, wq, K)
        d = _draw(q, generator)
        start = length + nc  # the known count before this step
        take = ww.unsqueeze(0) < k.unsqueeze(1)
        pos = o.gather(1, (start.unsqueeze(1) + ww).clamp(max=g - 1))
        x.scatter_(1, torch.where(take, pos, g), d)
        per_sample += k > 0
        length, nc = start, k
    return x, {"passes": per_sample.cpu(), "model_calls": passes.calls}
