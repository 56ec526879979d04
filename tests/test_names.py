"""One vocabulary for the public API (README, "Names"): ``prompt`` is what sampling continues,
``context`` what a distribution is conditioned on, ``generator`` the random stream, ``fit`` learns.
The former spellings still work for one release, warn, and give the same results."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

import chainrule
from chainrule.errors import InputError
from chainrule.inference import beam, sampling
from chainrule.lm.ngram import NgramLM
from chainrule.models.base import AutoregressiveModel
from chainrule.models.ensemble import Ensemble
from chainrule.text import tokenizers
from chainrule.text.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer

# (callable, the parameters it must have): every public function that continues given values
CONTINUING = [
    (AutoregressiveModel.sample, {"prompt", "context", "generator"}),
    (AutoregressiveModel.beam_search, {"prompt", "context"}),
    (sampling.sample, {"prompt", "context", "generator"}),
    (sampling.sample_with_state, {"prompt", "context", "generator"}),
    (sampling.generate, {"prompt", "context", "generator"}),
    (beam.beam_search, {"prompt"}),
    (beam.search_model, {"prompt", "context"}),
    (beam.generate_beam, {"prompt", "context"}),
    (NgramLM.generate, {"prompt", "generator"}),
]
FORMER = {"prefix", "text_or_iterator"}  # spellings that moved; "context" is checked below


def params(func) -> set[str]:
    return set(inspect.signature(func).parameters)


@pytest.mark.parametrize("func,names", CONTINUING, ids=lambda f: getattr(f, "__qualname__", ""))
def test_continuing_functions_say_prompt(func, names):
    got = params(func)
    assert names <= got, f"{func.__qualname__} lacks {names - got}"
    assert not got & FORMER, f"{func.__qualname__} still has {got & FORMER}"


def test_context_means_conditioning_only():
    # the n-gram LM's generate used to take the prompt as context=; its context stays the history h
    # of p(w | h) in log_prob / next_log_probs, as a model's context is what it is conditioned on
    assert "context" not in params(NgramLM.generate)
    assert "context" in params(NgramLM.log_prob) and "context" in params(AutoregressiveModel.log_prob)


def test_no_public_signature_uses_a_former_name():
    """A sweep over the public functions and methods of the modules a user calls."""
    bad, checked = [], 0
    owners = [sampling, beam, tokenizers, AutoregressiveModel, Ensemble, NgramLM, BPETokenizer, CharTokenizer,
              WordTokenizer]
    for owner in owners:
        for name, member in inspect.getmembers(owner, callable):
            if name.startswith("_") or inspect.isclass(member) \
                    or not (getattr(member, "__module__", None) or "").startswith("chainrule"):
                continue  # torch's nn.Module methods (named_modules(prefix=)) are not ours to name
            if name == "train" and owner is BPETokenizer or name == "check_prefix":
                continue  # the deprecated aliases themselves
            try:
                got = params(member)
            except (TypeError, ValueError):
                continue
            checked += 1
            if got & FORMER:
                bad.append(f"{getattr(owner, '__name__', owner)}.{name}: {sorted(got & FORMER)}")
    assert not bad, bad
    assert checked > 40  # the sweep saw the API, not an empty list


def test_tokenizers_learn_with_fit():
    for cls in (CharTokenizer, WordTokenizer, BPETokenizer):
        fit = inspect.getattr_static(cls, "fit")
        assert isinstance(fit, classmethod), cls
        assert list(inspect.signature(cls.fit).parameters)[0] == "text", cls


def test_sample_prefix_warns_and_draws_the_same():
    torch.manual_seed(0)
    model = chainrule.create_model("lstm", (6,), 5, hidden_size=8)
    prompt = torch.tensor([3, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the chosen spelling never warns
        new = model.sample(4, prompt=prompt, generator=torch.Generator().manual_seed(3))
    with pytest.warns(DeprecationWarning, match=r"prefix=.*deprecated.*prompt=") as rec:
        old = model.sample(4, prefix=prompt, generator=torch.Generator().manual_seed(3))
    assert rec[0].filename == __file__  # the warning points at the line to change
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning):
        old_fn = sampling.sample(model, 4, prefix=prompt, generator=torch.Generator().manual_seed(3))
    assert torch.equal(new, old_fn)
    with pytest.raises(InputError, match="not both"):
        model.sample(2, prompt=prompt, prefix=prompt)


def test_ensemble_sample_prefix_warns_and_draws_the_same():
    torch.manual_seed(0)
    model = chainrule.create_model("nade", (5,), 3, hidden_size=4, num_orders=2)
    prompt = torch.tensor([2])
    new = model.sample(3, prompt=prompt, generator=torch.Generator().manual_seed(1), member=1)
    with pytest.warns(DeprecationWarning, match="prompt="):
        old = model.sample(3, prefix=prompt, generator=torch.Generator().manual_seed(1), member=1)
    assert torch.equal(new, old)


def test_beam_search_prefix_warns_and_finds_the_same():
    torch.manual_seed(0)
    model = chainrule.create_model("transformer", (5,), 3, num_layers=1, num_heads=1, embed_dim=8)
    new = model.beam_search(4, prompt=torch.tensor([2, 1]))
    with pytest.warns(DeprecationWarning, match="prompt="):
        old = model.beam_search(4, prefix=torch.tensor([2, 1]))
    assert [(x.tolist(), lp) for x, lp, _ in new] == [(x.tolist(), lp) for x, lp, _ in old]
    hyps = beam.generate_beam(model, [2, 1], 2, beam_width=3)
    with pytest.warns(DeprecationWarning, match="prompt_log_prob"):
        assert hyps[0].prefix_log_prob == hyps[0].prompt_log_prob
    with pytest.warns(DeprecationWarning, match="check_prompt"):
        assert torch.equal(sampling.check_prefix(model, 2, [2, 1]), sampling.check_prompt(model, 2, [2, 1]))


def test_ngram_generate_context_warns_and_generates_the_same():
    rng = np.random.default_rng(0)
    lm = NgramLM(3, "kneser-ney").fit([[f"w{int(i)}" for i in rng.integers(0, 6, 8)] for _ in range(50)])
    new = lm.generate(12, prompt=["w1", "w2"], generator=torch.Generator().manual_seed(5))
    with pytest.warns(DeprecationWarning, match=r"context=.*prompt="):
        old = lm.generate(12, context=["w1", "w2"], generator=torch.Generator().manual_seed(5))
    assert new == old
    assert lm.generate(12, ["w1", "w2"], generator=torch.Generator().manual_seed(5)) == new  # positional as before


def test_bpe_train_warns_and_learns_the_same():
    pytest.importorskip("tokenizers")
    text = "the cat sat on the mat; the cat ate the rat. " * 20
    new = BPETokenizer.fit(text, vocab_size=300)
    with pytest.warns(DeprecationWarning, match=r"BPETokenizer.train.*BPETokenizer.fit"):
        old = BPETokenizer.train(text, vocab_size=300)
    assert new.to_dict() == old.to_dict()
    with pytest.warns(DeprecationWarning):
        by_keyword = BPETokenizer.train(text_or_iterator=text, vocab_size=300)
    assert by_keyword.to_dict() == new.to_dict()
    assert tokenizers.make_tokenizer("bpe", text, vocab_size=300).to_dict() == new.to_dict()


def test_ngram_log_prob_is_the_one_spelling_and_the_former_ones_warn():
    """NgramLM says log_prob like every model; logprob / logprobs / next_logprobs / sentence_logprob(s)
    still work, with a DeprecationWarning, and give the same numbers."""
    lm = NgramLM(2, "kneser-ney").fit([["a", "b", "a"], ["b", "b", "a"], ["a", "a"]])
    rows = lm.ngram_rows([["a", "b"]])
    pairs = [(lm.log_prob("b", ["a"]), lambda: lm.logprob("b", ["a"])),
             (lm.log_probs(rows), lambda: lm.logprobs(rows)),
             (lm.next_log_probs(["a"]), lambda: lm.next_logprobs(["a"])),
             (lm.sentence_log_prob(["a", "b"]), lambda: lm.sentence_logprob(["a", "b"])),
             (lm.sentence_log_probs([["a", "b"]]), lambda: lm.sentence_logprobs([["a", "b"]]))]
    for new, old in pairs:
        with pytest.warns(DeprecationWarning, match="log_prob"):
            assert np.array_equal(np.asarray(old()), np.asarray(new))
