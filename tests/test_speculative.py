"""Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the samples follow the target
exactly whatever the draft (chi-squared tests on a tiny space), the multi-position cache pass equals
the one-position steps, and the statistics add up."""

from __future__ import annotations

import itertools

import pytest
import torch

import chainrule
from chainrule.errors import InputError
from chainrule.inference.processors import process, processors
from chainrule.inference.speculative import FunctionDraft, speculative_generate

scipy_stats = pytest.importorskip("scipy.stats")

K, T = 3, 5  # tokens, window (the chi-squared tests: 2 tokens, 8 continuations)


def _random(name: str, seed: int, scale: float = 0.8, **kw):
    torch.manual_seed(seed)
    model = chainrule.create_model(name, (T,), K, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model.eval()


def _target():
    return _random("transformer", 0, num_layers=2, num_heads=2, embed_dim=8)


def _exact(model, prompt, new, chain=(), k=K):
    """p(continuation | prompt) of every continuation of ``new`` tokens, under the filtered conditionals."""
    seqs = torch.tensor([list(prompt) + list(c) for c in itertools.product(range(k), repeat=new)])
    x = torch.cat([seqs, torch.zeros(len(seqs), T - seqs.shape[1], dtype=torch.long)], 1)
    with torch.no_grad():
        logp = process(model.conditionals(x).variable_logits(None, 0), chain)  # (N, T, K)
    lp = logp.gather(-1, x.unsqueeze(-1))[..., 0][:, len(prompt):len(prompt) + new].sum(1)
    return seqs[:, len(prompt):], lp.exp().double()


@pytest.mark.parametrize("draft_kind, options", [("lstm", {}), ("uniform", {}),
                                                  ("transformer", {"temperature": 1.6, "top_p": 0.97})])
def test_samples_follow_the_target_exactly(draft_kind, options):
    k = 2
    torch.manual_seed(0)
    target = chainrule.create_model("transformer", (T,), k, num_layers=2, num_heads=2, embed_dim=8)
    with torch.no_grad():
        for p in target.parameters():
            p.normal_(0, 0.8)
    target.eval()
    if draft_kind == "uniform":
        draft = FunctionDraft(lambda ctx: torch.zeros(k))
    elif draft_kind == "lstm":
        draft = chainrule.create_model("lstm", (T,), k, hidden_size=6)
    else:
        draft = chainrule.create_model("transformer", (T,), k, num_layers=1, num_heads=1, embed_dim=4)
    prompt, new, n = [1], 3, 600
    seqs, p = _exact(target, prompt, new, processors(**options), k=k)
    index = {tuple(s.tolist()): i for i, s in enumerate(seqs)}
    counts = torch.zeros(len(seqs))
    g = torch.Generator().manual_seed(3)
    accepted = 0
    for _ in range(n):
        toks, stats = speculative_generate(target, draft, prompt, new, gamma=2, generator=g, **options)
        counts[index[tuple(toks)]] += 1
        accepted += stats.accepted
    assert counts[p == 0].sum() == 0  # what the filters remove is never drawn
    keep = p * n >= 5  # chi-squared cells with enough expectation; the rest (if any mass) pooled
    rest = (~keep) & (p > 0)
    obs = torch.cat([counts[keep], counts[rest].sum().reshape(1)]) if rest.any() else counts[keep]
    exp = torch.cat([p[keep], p[rest].sum().reshape(1)]) if rest.any() else p[keep]
    exp = exp / exp.sum() * n
    assert len(exp) >= 4  # a test with some freedom
    pvalue = scipy_stats.chisquare(obs.numpy(), exp.numpy()).pvalue
    assert pvalue > 1e-3, f"speculative samples do not follow the target (p = {pvalue:.2e})"
    assert 0 < accepted  # the drafts were used, not only the target's own draws


def test_a_wrong_sampler_fails_the_same_test():
    """The test above can fail: accepting every drafted token (no rejection rule) samples the draft."""
    target, draft = _target(), _random("lstm", 1, hidden_size=6)
    seqs, p = _exact(target, [1], 3)
    seqs_d, q = _exact(draft, [1], 3)
    assert torch.equal(seqs, seqs_d)
    counts = torch.bincount(torch.multinomial(q.float(), 800, replacement=True, generator=torch.Generator().manual_seed(0)),
                            minlength=len(q)).double()
    assert scipy_stats.chisquare(counts.numpy(), (p / p.sum() * 800).numpy()).pvalue < 1e-3


def test_step_many_equals_steps():
    model = _random("transformer", 5, num_layers=2, num_heads=2, embed_dim=8)
    x = torch.randint(0, K, (3, T))
    with torch.no_grad():
        full = model(x)
        state = model.init_state(3)
        first, state = model.step(state, 0, None)
        rest, state = model.step_many(state, 1, x[:, :T - 1])
    torch.testing.assert_close(torch.cat([first.unsqueeze(1), rest], 1), full, atol=1e-5, rtol=0)


def test_stats_and_errors():
    target, draft = _target(), _target()  # the draft is the target: every token accepted
    toks, stats = speculative_generate(target, draft, [0], 4, gamma=3, generator=torch.Generator().manual_seed(0))
    assert len(toks) == 4 and stats.acceptance_rate == pytest.approx(1.0, abs=1e-6)
    assert stats.new_tokens == 4 and stats.rounds == 1 and stats.tokens_per_round == 4
    toks, stats = speculative_generate(target, FunctionDraft(lambda c: torch.zeros(K)), [], 5, gamma=2,
                                       generator=torch.Generator().manual_seed(0))
    assert len(toks) == 5 and stats.drafted >= stats.accepted and stats.new_tokens == 5
    with pytest.raises(InputError, match="window"):
        speculative_generate(target, draft, [0, 1], 4)
    with pytest.raises(InputError, match="gamma"):
        speculative_generate(target, draft, [0], 2, gamma=0)
    with pytest.raises(InputError, match="share the tokens"):
        speculative_generate(target, chainrule.create_model("lstm", (T,), K + 1, hidden_size=4), [0], 2)
    with pytest.raises(InputError, match="FunctionDraft"):
        speculative_generate(target, chainrule.create_model("wavenet", (T,), K), [0], 2)


def test_cli_generate_with_a_draft(tmp_path, capsys):
    from chainrule.cli import main
    from chainrule.text.tokenizers import CharTokenizer

    tok = CharTokenizer("abc", specials=())
    target, draft = _target(), _random("lstm", 1, hidden_size=6)
    target.save(tmp_path / "t", extra={"tokenizer": tok.to_dict()})
    draft.save(tmp_path / "d", extra={"tokenizer": tok.to_dict()})
    assert main(["generate", str(tmp_path / "t"), "--draft", str(tmp_path / "d"), "--prompt", "a",
                 "--max-new-tokens", "4", "--gamma", "2", "--seed", "1"]) == 0
    out = capsys.readouterr()
    want, _ = speculative_generate(target, draft, [0], 4, gamma=2, generator=torch.Generator().manual_seed(1))
    assert out.out == "a" + tok.decode(want) + "\n" and "drafted tokens accepted" in out.err
