"""Beam search against Hugging Face's ``generate(num_beams=W, do_sample=False)`` on tiny random
GPT-2s read into chainrule: the same ranked list of finished hypotheses (tokens and scores) with end
tokens, length penalties, early stopping, minimum lengths and stop strings."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from chainrule.errors import InputError  # noqa: E402
from chainrule.inference.beam import beam_search, generate_beam  # noqa: E402
from chainrule.interop.huggingface import load_gpt2  # noqa: E402
from chainrule.text.tokenizers import CharTokenizer  # noqa: E402

LETTERS = "abcdefghijklmnopqrst"  # 20 one-character tokens, id i = LETTERS[i]
V = len(LETTERS)
BOS = V - 1  # the start token of the GPT-2 (chainrule's start vector is its embedding)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers GPT-2, the same read by chainrule, its HF tokenizer, chainrule's tokenizer)."""
    torch.manual_seed(11)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=BOS, eos_token_id=BOS)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # peaked, varied next-token distributions, so that end tokens are drawn
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        hf.transformer.wte.weight.mul_(4.0)
        # end tokens 4 and 7 about e^2 times likelier (+2 on their logits through ln_f's bias), so
        # that hypotheses end at many lengths
        b = hf.transformer.ln_f.bias
        hf.transformer.wte.weight[[4, 7]] += 2.0 * b / b.square().sum()
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    wl = tokenizers.Tokenizer(tokenizers.models.WordLevel({c: i for i, c in enumerate(LETTERS)}, unk_token="a"))
    wl.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    wl.decoder = tokenizers.decoders.Fuse()  # tokens joined without spaces, as the text is
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=wl)
    return hf, load_gpt2(path), hf_tok, CharTokenizer(LETTERS, specials=())


# (W, end tokens, length penalty, early stopping, min new tokens, max new tokens, prompt, stop strings)
CONFIGS = [
    (3, [4], 1.0, False, 0, 8, [1, 2], ()),
    (4, [4], 0.0, False, 0, 8, [1, 2], ()),
    (4, [4, 7], 1.0, False, 0, 9, [3], ()),
    (2, [4, 7], 2.0, True, 0, 8, [5, 6], ()),
    (3, [7], -0.5, "never", 0, 8, [0], ()),
    (5, [4], 1.0, True, 2, 10, [9, 1], ()),
    (3, [4, 2, 7], 1.0, "never", 0, 7, [8], ()),
    (4, [7], 0.5, False, 3, 8, [2, 2], ()),
    (3, None, 1.0, False, 0, 6, [1], ()),
    (3, [4], 1.0, False, 0, 8, [1, 2], ("ce", "h", "k")),
    (4, None, 1.0, False, 0, 9, [3, 5], ("a", "st", "m", "dc")),
    (2, [7], 0.0, False, 0, 10, [6], ("bc", "q")),
]


def _hf_ranked(hf, hf_tok, prompt, w, eos, lp, es, mn, mx, stops):
    kw = dict(stop_strings=list(stops), tokenizer=hf_tok) if stops else {}
    ids = torch.tensor([[BOS] + prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=w, do_sample=False, num_return_sequences=w,
                      max_new_tokens=mx, min_new_tokens=mn, eos_token_id=eos, pad_token_id=BOS, length_penalty=lp,
                      early_stopping=es, return_dict_in_generate=True, output_scores=True, **kw)
    return out.sequences[:, 1 + len(prompt):], out.sequences_scores


@pytest.mark.parametrize("config", CONFIGS, ids=[f"c{i}" for i in range(len(CONFIGS))])
def test_beam_equals_transformers_generate(models, config):
    hf, ours, hf_tok, tok = models
    w, eos, lp, es, mn, mx, prompt, stops = config
    seqs, scores = _hf_ranked(hf, hf_tok, prompt, w, eos, lp, es, mn, mx, stops)
    hyps = generate_beam(ours, prompt, mx, w, eos_id=eos, length_penalty=lp, early_stopping=es, min_new_tokens=mn,
                         stop_strings=stops, tokenizer=tok)
    assert 1 <= len(hyps) <= w
    for i, h in enumerate(hyps):
        got = seqs[i].tolist()
        assert got[:len(h.tokens)] == h.tokens, f"rank {i}"
        assert all(t in (BOS, -1) for t in got[len(h.tokens):])  # the rest is padding (-1 without end tokens)
        assert h.score == pytest.approx(float(scores[i]), abs=2e-4)
        # log_prob is the model's own log-probability of the continuation
        full = torch.tensor([prompt + h.tokens])
        ctx = torch.cat([full, torch.zeros(1, ours.dim - full.shape[1], dtype=torch.long)], 1)
        with torch.no_grad():
            lp_all = ours.log_prob_per_variable(ctx)[0, len(prompt):full.shape[1]].sum()
        assert h.log_prob == pytest.approx(float(lp_all), abs=1e-4)
    assert all(float(s) < -1e8 for s in scores[len(hyps):])  # HF fills missing ranks with placeholders


def test_modes_differ_only_with_end_tokens(models):
    """Without end tokens "hf" and "shrink" are one search; with them the shrinking beam, which
    retires finished hypotheses, ranks differently (the defect the default mode fixes)."""
    _, ours, _, _ = models
    for prompt in ([1, 2], [5]):
        a = generate_beam(ours, prompt, 7, 3, length_penalty=1.0)
        b = generate_beam(ours, prompt, 7, 3, length_penalty=1.0, mode="shrink")
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)  # batches of other sizes
    differ = 0
    for first in range(V - 1):
        a = generate_beam(ours, [first], 8, 3, eos_id=[4, 7], length_penalty=1.0)
        b = generate_beam(ours, [first], 8, 3, eos_id=[4, 7], length_penalty=1.0, mode="shrink")
        differ += [h.tokens for h in a] != [h.tokens for h in b]
    assert differ > 0


def test_beam_options_are_checked(models):
    _, ours, _, tok = models
    with pytest.raises(InputError, match="mode"):
        generate_beam(ours, [1], 4, 2, mode="fast")
    with pytest.raises(InputError, match="early_stopping"):
        generate_beam(ours, [1], 4, 2, early_stopping="always")
    with pytest.raises(InputError, match="tokenizer"):
        generate_beam(ours, [1], 4, 2, stop_strings=["a"])
    with pytest.raises(InputError, match="eos_id"):
        generate_beam(ours, [1], 4, 2, eos_id=["x"])
    with pytest.raises(InputError, match="min_length"):
        beam_search(lambda s, last, i: (torch.zeros(s.shape[0], 3), s), torch.zeros(1, 1), 2, 3, min_length=-1)


def test_min_length_blocks_the_end_token():
    table = torch.tensor([0.9, 0.05, 0.05]).log()  # token 0 ends and is by far the likeliest

    def step(state, last, i):
        return table.expand(state.shape[0], 3), state

    hyps = beam_search(step, torch.zeros(1, 1), 2, 6, eos_id=0, min_length=3)
    assert all(len(h.tokens) >= 4 or h.tokens[-1] != 0 for h in hyps)
    assert hyps[0].tokens[-1] == 0 and len(hyps[0].tokens) == 4
    assert hyps[0].log_prob == pytest.approx(3 * math.log(0.05) + math.log(0.9))
