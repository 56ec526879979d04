"""The one sampling loop: ancestral sampling, with a prompt (the first values) or observed values, and text generation.

    for i in 0..G-1:   params_i, state = model.step(state, i, x_{o(i-1)})     (the model's cache)
                       x_{o(i)} ~ head(params_i)                                (or the given value)

Every way of drawing from a model goes through :func:`sample_with_state`, so ``model.sample(n,
prompt=p)`` and ``generate(model, p, ...)`` make the same draws from the same generator. The
generator must live on the model's device (:func:`default_generator` makes one there; the command
line's ``--seed S`` is ``generator=default_generator(model, S)``).

- ``prompt``: the values of the first k groups *in the model's order*, kept fixed (for text: the
  token ids to continue; ``prefix=`` is its deprecated spelling);
- ``observed=(values, mask)``: any observed subset. Models that take any order put the observed
  groups first (:func:`chainrule.orderings.observed_first`) and sample the rest exactly from the
  conditional of that order; the others need the observed part to be a prefix of their order.
- decoding filters (temperature, top-k, top-p; :mod:`chainrule.inference.processors`) apply to
  discrete heads, one variable at a time inside a group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from chainrule.contract import ARModel
from chainrule.errors import InputError, renamed_parameters, warn_deprecated
from chainrule.inference.processors import choose, processors
from chainrule.orderings import observed_first
from chainrule.inference.streaming import next_window, stream_tokens


def default_generator(model: ARModel, seed: int = 0) -> torch.Generator:
    """A seeded ``torch.Generator`` on the model's device (CUDA generators for a model on a GPU)."""
    return torch.Generator(device=model.device).manual_seed(seed)


def _check_generator(model: ARModel, generator: torch.Generator | None) -> None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != model.device.type:
            raise InputError(f"the generator is on {generator.device} but the model on {model.device}: "
                             "make it with torch.Generator(device=model.device) (or default_generator(model, seed))")


def draw(dist: Any, chain: Sequence[Callable], generator: torch.Generator | None,
         ids: torch.Tensor | None = None) -> torch.Tensor:
    """One draw of each group from a group distribution, ``(*batch, S)``: exact without filters,
    else variable by variable from the filtered conditionals (``ids`` ``(*batch, t)``: the values
    drawn before, for processors that read the history)."""
    if not chain:
        return dist.sample(generator)
    first = dist.variable_logits(None, 0)
    vals = torch.zeros(*first.shape[:-1], dist.group_size, dtype=torch.long, device=first.device)
    for j in range(dist.group_size):
        logits = first if j == 0 else dist.variable_logits(vals, j)
        vals[..., j] = choose(logits, chain, generator, ids=ids if j == 0 else None)
    return vals


def sample_with_state(model: ARModel, n: int, context: Any, call: dict[str, Any], generator: torch.Generator | None,
                      prompt: torch.Tensor | None = None, chain: Sequence[Callable] = (),
                      num_steps: int | None = None, progress: bool = False) -> torch.Tensor:
    """The loop itself, for one member / order (``call``): returns the groups ``(n, G, S)``.

    ``prompt`` ``(n, k, S)``: values of the first k groups in the order (primed through the cache,
    as :func:`check_prompt` returns them); ``num_steps``: stop after this many groups (the rest stays 0);
    ``progress``: a progress bar over the groups.
    """
    order = model.resolve_order(**call).tolist()
    g, s = model.num_groups, model.group_size
    steps = g if num_steps is None else num_steps
    dtype = torch.long if model.head.discrete else model.float_dtype
    xg = torch.zeros(n, g, s, dtype=dtype, device=model.device)
    state = model.init_state(n, context, **call)
    k = 0 if prompt is None else prompt.shape[1]
    prev = None
    history = s == 1 and any(getattr(p, "needs_ids", False) for p in chain)  # repetition processors read it
    for i in tqdm(range(steps), desc=f"sampling {n}", unit="step", disable=not progress, leave=False):
        params, state = model.step(state, i, prev)
        ids = xg[:, order[:i], 0] if history else None
        vals = prompt[:, i] if i < k else draw(model.head(params), chain, generator, ids).to(dtype)
        xg[:, order[i]] = vals
        prev = vals
    return xg


def _check_memory(model: ARModel, n: int) -> None:
    """Refuse ``n`` samples whose values alone (int64) would not fit this machine's memory, before
    anything is allocated (``n = 10**12`` is a typo, not a request): draw them in batches."""
    from chainrule.data.formats import memory_bytes

    memory = memory_bytes()
    need = n * int(getattr(model, "dim", 1)) * 8
    if memory is not None and need > memory // 2:
        raise InputError(f"n={n:,} samples of {model.dim:,} values need {need / 1e9:.3g} GB, more than this machine's "
                         f"memory allows ({memory / 1e9:.3g} GB); draw them in batches of fewer")


@renamed_parameters(prefix="prompt")
def sample(model: ARModel, n: int, context: Any = None, generator: torch.Generator | None = None, *,
           prompt: torch.Tensor | None = None, observed: tuple[Any, Any] | None = None,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           chain: Sequence[Callable] | None = None, order: Any = None, member: int | None = None,
           progress: bool = False, **options: Any) -> torch.Tensor:
    """Draw ``n`` samples by ancestral sampling, ``(n, *shape)``.

    Args:
        n: number of samples.
        context: a conditional model's class label(s) (one for all, or ``(n,)``) or context tensor.
        generator: a ``torch.Generator`` on the model's device, for reproducible draws.
        prompt: values of the first k groups in the model's order: ``(k,)`` or ``(n, k)`` for one
            variable per group, ``(k, S)`` or ``(n, k, S)`` otherwise; sampling continues after them
            (a text model's prompt: its token ids). Formerly ``prefix=`` (deprecated).
        observed: ``(values, mask)``: ``values`` ``(*shape)`` or ``(n, *shape)`` and a boolean
            ``mask`` of the same shape (True = observed). See the module docstring.
        temperature, top_k, top_p: decoding filters for discrete data (temperature 0 = greedy); the
            defaults sample the model's own distribution exactly. ``chain``: a processor list instead.
        order: an order over groups (models that take any order). ``member``: for an ensemble, draw
            from that member only; by default each sample picks a member uniformly.
        progress: show a progress bar over the sampling steps (tqdm, on stderr).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    _check_memory(model, n)
    _check_generator(model, generator)
    chain = list(chain) if chain is not None else processors(temperature, top_k, top_p)
    if chain and not model.head.discrete:
        raise InputError("temperature/top-k/top-p apply to discrete data; this model is real-valued")
    if prompt is not None and observed is not None:
        raise InputError("give prompt= or observed=, not both")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ctx = model.normalize_context(context, n)
            members = getattr(model, "num_members", 1)
            if members > 1 and member is None:
                if order is not None or observed is not None:
                    raise InputError("an ensemble's members have their own orders: pass member=k together with "
                                     "order= or observed=")
                xg = _sample_mixture(model, n, ctx, generator, prompt, chain, progress)
            else:
                call = {"order": order, **options} if members == 1 else {"member": member, "order": order, **options}
                if members == 1 and member not in (None, 0):
                    raise InputError(f"member= applies to ensembles; {model.name!r} is a single model")
                if observed is not None:
                    xg = _sample_observed(model, n, ctx, call, generator, observed, chain, progress)
                else:
                    pre = None if prompt is None else check_prompt(model, n, prompt)
                    xg = sample_with_state(model, n, ctx, call, generator, pre, chain, progress=progress)
            x = model.groups.scatter(xg).reshape(n, *model.shape)
    finally:
        model.train(was_training)
    # A normal tensor, not an inference tensor: callers may feed samples to log_prob with autograd.
    return x.clone()


def _sample_mixture(model: ARModel, n: int, ctx: torch.Tensor | None, generator: torch.Generator | None,
                    prompt: Any, chain: Sequence[Callable], progress: bool = False) -> torch.Tensor:
    """Each sample picks a member uniformly, then is drawn from that member."""
    k = model.num_members
    which = torch.randint(k, (n,), generator=generator, device=model.device)
    pre = None if prompt is None else check_prompt(model, n, prompt)
    dtype = torch.long if model.head.discrete else model.float_dtype
    out = torch.zeros(n, model.num_groups, model.group_size, dtype=dtype, device=model.device)
    for m in range(k):
        idx = (which == m).nonzero().squeeze(-1)
        if idx.numel():
            out[idx] = sample_with_state(model, idx.numel(), None if ctx is None else ctx[idx], {"member": m},
                                         generator, None if pre is None else pre[idx], chain, progress=progress)
    return out


def check_prompt(model: ARModel, n: int, prompt: Any) -> torch.Tensor:
    """A prompt (the values of the first k groups) as ``(n, k, S)``, checked against the model's values."""
    s = model.group_size
    try:
        p = torch.as_tensor(prompt, device=model.device)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"prompt must be a tensor of values, got {type(prompt).__name__}") from None
    if s == 1 and p.dim() in (1, 2):
        p = p.unsqueeze(-1)
    if p.dim() == 2:
        p = p.unsqueeze(0).expand(n, -1, -1)
    if p.dim() != 3 or p.shape[0] != n or p.shape[2] != s:
        want = "(k,) or (n, k)" if s == 1 else f"(k, {s}) or (n, k, {s})"
        raise InputError(f"prompt must have shape {want} with n = {n}, got {tuple(torch.as_tensor(prompt).shape)}")
    if p.shape[1] > model.num_groups:
        raise InputError(f"prompt has {p.shape[1]} groups but an example has only {model.num_groups}")
    # validate the values as data: pad to full examples with zeros
    full = torch.zeros(n, model.num_groups, s, dtype=p.dtype, device=model.device)
    full[:, : p.shape[1]] = p
    model.validate(model.groups.scatter(full).reshape(n, *model.shape))
    return p.long() if model.head.discrete else p.to(model.float_dtype)


def check_prefix(model: ARModel, n: int, prefix: Any) -> torch.Tensor:
    """Deprecated spelling of :func:`check_prompt`."""
    warn_deprecated("check_prefix", "check_prompt")
    return check_prompt(model, n, prefix)


def observed_groups(model: ARModel, n: int, observed: tuple[Any, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``observed=(values, mask)`` for ``n`` samples and return the values by group ``(n, G, S)``
    and which groups are observed ``(n, G)`` bool (see :func:`sample`)."""
    try:
        values, mask = observed
    except (TypeError, ValueError):
        raise InputError("observed must be a pair (values, mask)") from None
    values, _ = model.validate(values)
    if values.shape[0] == 1:
        values = values.expand(n, *model.shape)
    if values.shape[0] != n:
        raise InputError(f"observed values: expected one example or {n}, got {values.shape[0]}")
    mask = torch.as_tensor(mask, device=model.device)
    if mask.dtype != torch.bool:
        raise InputError(f"the observed mask must be boolean (True = observed), got dtype {mask.dtype}")
    if tuple(mask.shape) == model.shape:
        mask = mask.expand(n, *model.shape)
    if tuple(mask.shape) != (n, *model.shape):
        raise InputError(f"the observed mask must have the event shape {model.shape} (or (n, *shape)), got {tuple(mask.shape)}")
    gmask = model.groups.group_mask(mask.reshape(n, -1))  # (n, G)
    return model.groups.gather(values.reshape(n, -1)), gmask  # (n, G, S), (n, G)


def _sample_observed(model: ARModel, n: int, ctx: torch.Tensor | None, call: dict[str, Any],
                     generator: torch.Generator | None, observed: tuple[Any, Any],
                     chain: Sequence[Callable], progress: bool = False) -> torch.Tensor:
    vg, gmask = observed_groups(model, n, observed)
    base = model.resolve_order(**call)
    dtype = torch.long if model.head.discrete else model.float_dtype
    out = torch.zeros(n, model.num_groups, model.group_size, dtype=dtype, device=model.device)
    patterns, which = torch.unique(gmask, dim=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        rows = (which == p).nonzero().squeeze(-1)
        k = int(pattern.sum())
        if getattr(model, "any_order", False):
            order = observed_first(pattern, base)
        else:
            order = base
            if not (bool(pattern[base[:k]].all()) and not bool(pattern[base[k:]].any())):
                raise InputError(f"{model.name!r} reads its variables in a fixed order: the observed part must be a "
                                 f"prefix of that order (here: the first {k} groups in its order); models that take "
                                 "any order (nade, made, fvsbn, ...) accept any observed subset")
        out[rows] = sample_with_state(model, rows.numel(), None if ctx is None else ctx[rows], {**call, "order": order},
                                      generator, vg[rows][:, order[:k]], chain, progress=progress)
    return out


# ---------------------------------------------------------------------- text generation
def check_sequence_model(model: ARModel) -> int:
    """A left-to-right model of token ids: returns its window T."""
    if not model.head.discrete:
        raise InputError("generation works on discrete tokens; this model is real-valued")
    if getattr(model, "num_members", 1) > 1 or model.group_size != 1 or len(model.shape) != 1 \
            or not torch.equal(model.resolve_order().cpu(), torch.arange(model.dim)):
        raise InputError("generation continues a sequence left to right: it needs a single model of shape (T,) "
                         "in raster order")
    return model.dim


def generate(model: ARModel, prompt: Sequence[int] | torch.Tensor, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, sliding: bool = False, context: Any = None,
             repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
             stream: bool = False, stop_tokens: Sequence[int] = ()) -> Any:
    """Continue ``prompt`` (token ids) by ``max_new_tokens``; returns ``(num_samples, len(prompt) + new)`` on CPU.

    Within the window this is exactly ``model.sample(num_samples, prompt=prompt)`` cut after the new
    tokens (the same draws from the same generator). A continuation beyond the model's window T
    needs ``sliding=True``: each time the window fills, the model is re-primed with the last 3/4 of
    it, so tokens further back are forgotten (what a T-token model can see anyway).
    ``repetition_penalty`` / ``no_repeat_ngram_size``: the history processors of
    :mod:`chainrule.inference.processors`, given the tokens in the window (the prompt included).
    ``stream=True`` returns an iterator that yields each new position's tokens, ``(num_samples,)``,
    as they are drawn — the same tokens as without it (:mod:`chainrule.inference.streaming`).
    ``stop_tokens``: generation ends after the position at which every row has drawn one of them
    (the result is then shorter; a row that ended earlier is not cut).

    Raises:
        InputError: when prompt + new tokens exceed the context window T and ``sliding`` is off.
    """
    window = check_sequence_model(model)
    _check_generator(model, generator)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise InputError(f"num_samples must be a positive integer, got {num_samples!r}")
    prompt = torch.as_tensor(list(prompt) if not isinstance(prompt, torch.Tensor) else prompt, dtype=torch.long).reshape(-1)
    if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= model.num_values):
        raise InputError(f"prompt token ids must lie in 0..{model.num_values - 1}")
    if len(prompt) + max_new_tokens > window and not sliding:
        raise InputError(
            f"the prompt ({len(prompt)} tokens) plus {max_new_tokens} new tokens exceed the model's context window "
            f"of {window} tokens (it was trained on windows of {window}); ask for fewer tokens, or allow a sliding "
            "window (sliding=True, --sliding-window), which keeps only the most recent tokens in view"
        )
    chain = processors(temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size)
    if stream or stop_tokens:
        stop_tokens = list(stop_tokens)
        if not all(isinstance(t, int) and 0 <= t < model.num_values for t in stop_tokens):
            raise InputError(f"stop_tokens must be token ids in 0..{model.num_values - 1}, got {stop_tokens!r}")
        it = stream_tokens(model, prompt, max_new_tokens, num_samples, chain, generator, context, stop_tokens, draw=draw)
        if stream:
            return it
        return torch.cat([prompt.unsqueeze(0).expand(num_samples, -1), torch.stack(list(it), 1)], 1)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ctx = model.normalize_context(context, num_samples)
            tokens = prompt.to(model.device).unsqueeze(0).expand(num_samples, -1)
            produced = 0
            while produced < max_new_tokens:
                ctx_tokens, k, steps = next_window(tokens, window, max_new_tokens - produced)
                xg = sample_with_state(model, num_samples, ctx, {}, generator,
                                       ctx_tokens.unsqueeze(-1) if k else None, chain, num_steps=steps)
                tokens = torch.cat([tokens, xg[:, k:steps, 0]], 1)
                produced += steps - k
    finally:
        model.train(was_training)
    return tokens.cpu()
