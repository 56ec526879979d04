"""Count-based n-gram language models with the classic smoothers, vectorized with NumPy.

An order-``n`` model factorizes a sentence ``w_1 .. w_L`` (``w_{L+1} = </s>``) as
``p(w_1 .. w_L </s>) = prod_{t=1}^{L+1} p(w_t | history_t)``. Every word and the final ``</s>`` is
*predicted* (``L + 1`` events per sentence, all counted in perplexities); ``<s>`` only ever appears
in contexts and is never predicted. Two padding conventions (``NgramLM(..., padding=...)``):

- ``"srilm"`` (the default; SRILM's ``ngram-count``/``ngram``, KenLM's ``lmplz``/``query``): one
  ``<s>`` on the left and one ``</s>`` on the right, ``<s> w_1 .. w_L </s>``. The history of ``w_t``
  is the last ``min(n - 1, t)`` tokens of ``<s> w_1 .. w_{t-1}``, so the n-grams near the start of a
  sentence are shorter (trigram: ``p(w_1 | <s>) p(w_2 | <s> w_1) p(w_3 | w_1 w_2) ..``), and
  training counts every k-gram (k = 1..n) of the padded sentences that ends on a predicted token.
  ``<s>`` is a context only: its unigram has probability 0 (log10 -99 in ARPA files) and carries a
  backoff weight. With Kneser-Ney, the lower-order n-grams that begin with ``<s>`` keep their raw
  counts instead of continuation counts, since nothing can precede ``<s>`` (``lmplz``'s
  ``adjust_counts``: "anything that begins with <s> has full non adjusted count"); they take part in
  the count-of-counts of their order, from which the discounts are estimated. These are exactly the
  log-probabilities that ``kenlm.Model(arpa).score(" ".join(s), bos=True, eos=True)`` gives on the
  file :meth:`NgramLM.to_arpa` writes.
- ``"nltk"`` (exactly NLTK's ``pad_both_ends(s, n)``): ``n - 1`` ``<s>`` on the left and ``n - 1``
  ``</s>`` on the right, ``<s> .. <s> w_1 .. w_L </s> .. </s>``, and every token is predicted by the
  order-n distribution (trigram: ``p(w_1 | <s> <s>) p(w_2 | <s> w_1) ..``). Training counts every
  k-gram of the padded sentence as NLTK does, so ``</s>`` also follows ``</s>`` (a unigram model keeps
  one ``</s>``, where ``pad_both_ends(s, 1)`` adds none, so that it still predicts the end).
  Sentence scores and perplexities are of ``p(w_1 .. w_L </s>)`` (``L + 1`` events) in both
  conventions: the further ``</s>`` are continuations of a finished sentence, which NLTK multiplies in
  only when a user scores the n-grams of the padded sentence (score those rows with
  :meth:`NgramLM.log_probs`). Models saved before chainrule-ngram-3 were padded with one ``</s>``
  and keep their counts.

Scored n-grams are handled as rows of ``n`` ids over the sentence padded with ``n - 1`` ``<s>`` in
both conventions (:meth:`NgramLM.ngram_rows`); with ``"srilm"`` every token of a context before its
last ``<s>`` is ignored, so the row ``<s> <s> w_1`` means ``p(w_1 | <s>)``.

Vocabulary (closed): the tokens seen at least ``min_count`` times in training (or a given list),
plus ``<unk>`` (id 0), ``<s>`` (id 1) and ``</s>`` (id 2). Out-of-vocabulary tokens map to ``<unk>``
both in training and in evaluation, so ``<unk>`` is an ordinary predicted token.

**Which set sums to 1.** For every smoother except ``"mle"`` and ``"stupid-backoff"``, ``p(. | h) > 0`` on every token of
the *predicted set* ``P = vocabulary \\ {<s>}`` (``|P| = V - 1``), for every context ``h``, seen or
not, and ``sum_{w in P} p(w | h) = 1``; ``p(<s> | h) = 0``. The NLTK-compatible variants
(``nltk_compatible=True``, ``"kneser-ney-nltk"``) reproduce NLTK's definitions instead, which give
``<s>`` probability mass and are not always normalized (see :class:`NgramLM`).

Counting
--------
Tokens are mapped to int ids (counting: one dictionary look-up per distinct token, then a gather;
scoring: one look-up per token; single characters via their code points); the padded id stream is viewed as n-gram rows with
``numpy.lib.stride_tricks.sliding_window_view``; every k-gram (k = 1..n) is encoded as one int64
key and counted with ``np.unique(..., return_inverse=True, return_counts=True)`` (a dense
``np.bincount`` when the key range is small, e.g. unigrams or characters); sorted keys + counts are
kept per order and looked up for many queries at once through a hash table (:class:`_KeyIndex`,
O(1) per query). Sentences are scored as one padded stream through tables built for it on first use
(:class:`_StreamTables`): per order a collision-free hash-and-displace table (:class:`_DisplaceHash`:
one probe per query, no probing loop) with the level's parameters stored per slot, each j-gram
looked up once, every level applied to all positions at once without selections (the sparse high
orders only where their context is present); token strings map to ids through one dictionary of
the vocabulary and of the unseen words met before. There is no Python-level loop over tokens or
n-grams, only over the orders. A plain base-``V`` key
``sum_i w_i V^(k-i)`` overflows int64 for ``V^5`` once ``V > 6208`` (Tiny Shakespeare has ~9k word
types at min_count 2), so the key is mixed-radix:
``key(w_1..w_k) = w_1 * M_{k-1} + rank_{k-1}(w_2..w_k)``, base ``V`` in the first token and the
rank of the suffix among the ``M_{k-1}`` distinct (k-1)-grams for the rest (``key = w`` for
unigrams). It is exact, ordered, and bounded by ``V * #tokens``; the same chain gives the ranks of
all suffixes of a batch of queries in ``n`` vectorized look-ups.

Smoothers
---------
References: S. F. Chen and J. Goodman, "An empirical study of smoothing techniques for language
modeling", Computer Speech and Language 13:359-394, 1999 (C&G; Section 2 describes the classic
smoothers, Section 3 modified Kneser-Ney); Jelinek & Mercer 1980; Katz 1987; Witten & Bell 1991;
Kneser & Ney 1995. Notation: ``c(h w)`` counts, ``c(h .) = sum_w c(h w)``, ``N_r(h .)`` = number of
words with ``c(h w) = r``, ``N_{1+}(h .)`` = number with ``c(h w) > 0``, ``h'`` = ``h`` without its
first (oldest) token, ``n_r`` = number of n-grams of one order seen exactly r times, ``|P| = V - 1``.

- ``"mle"``: ``p(w|h) = c(h w) / c(h .)`` (0 for an unseen context).
- ``"laplace"``/``"lidstone"`` (add-one / add-k): ``p(w|h) = (c(h w) + k) / (c(h .) + k |P|)``.
- ``"jelinek-mercer"``: ``p(w|h) = sum_j lambda_j p_ML^(j)(w|h)`` over orders ``j = n..1`` and the
  uniform ``1/|P|`` (``lambdas`` highest order first, summing to 1). Written recursively
  ``p_k = mu_k p_ML^(k) + (1 - mu_k) p_{k-1}``, ``mu_k = lambda_k / sum_{j<=k} lambda_j``; an unseen
  context drops its order and renormalizes the remaining weights.
- ``"witten-bell"`` (interpolated):
  ``p(w|h) = (c(h w) + N_{1+}(h .) p(w|h')) / (c(h .) + N_{1+}(h .))``; below unigrams: uniform.
- ``"katz"``: ``p(w|h) = d_r r / c(h .)`` if ``r = c(h w) > 0``, else ``alpha(h) p(w|h')``, with
  Good-Turing ratios for ``r <= k`` (k = 5)
  ``d_r = (r*/r - (k+1) n_{k+1}/n_1) / (1 - (k+1) n_{k+1}/n_1)``, ``r* = (r+1) n_{r+1}/n_r``,
  ``d_r = 1`` for ``r > k``, and the normalizing backoff weight
  ``alpha(h) = (1 - sum_{w: c(hw)>0} p(w|h)) / (1 - sum_{w: c(hw)>0} p(w|h'))``.
- ``"kneser-ney"``: interpolated modified Kneser-Ney:
  ``p(w|h) = max(c(h w) - D(c(h w)), 0) / c(h .) + gamma(h) p(w|h')``,
  ``gamma(h) = (D_1 N_1(h .) + D_2 N_2(h .) + D_3+ N_3+(h .)) / c(h .)``,
  ``Y = n_1/(n_1 + 2 n_2)``, ``D_1 = 1 - 2Y n_2/n_1``, ``D_2 = 2 - 3Y n_3/n_2``,
  ``D_3+ = 3 - 4Y n_4/n_3`` per order; lower orders use continuation counts
  ``N_{1+}(. h w)`` in place of ``c(h w)`` (with ``padding="srilm"``: the raw counts for n-grams
  beginning with ``<s>``, see above), and the discounts of an order come from the count-of-counts
  of these adjusted counts; the unigram level interpolates with uniform ``1/|P|``. With
  ``padding="srilm"`` and ``min_count=1`` this is ``lmplz``'s estimate (KenLM, default options)
  wherever ``lmplz`` accepts the data; where the count-of-counts give no valid discounts ``lmplz``
  stops (or, with ``--discount_fallback``, uses 0.5/1/1.5) and this falls back to one discount.
- ``"kneser-ney-nltk"``: NLTK's ``KneserNeyInterpolated`` (one fixed discount, default 0.1); with
  ``padding="srilm"``, n-grams beginning with ``<s>`` keep their raw counts as in ``"kneser-ney"``
  (NLTK's continuation count of such an n-gram would be 0).
- ``"absolute-discounting"`` (interpolated; Ney, Essen & Kneser 1994; C&G Section 2.6):
  ``p(w|h) = max(c(h w) - D, 0) / c(h .) + D N_{1+}(h .) / c(h .) p(w|h')`` with one discount
  ``D`` in (0, 1] (default 0.75) at every order, raw counts at every order (unlike Kneser-Ney's
  continuation counts); the unigram level interpolates with uniform ``1/|P|``. With
  ``nltk_compatible=True``: NLTK's ``AbsoluteDiscountingInterpolated`` (padding-inclusive counts,
  the unigram MLE as base, no uniform floor).
- ``"stupid-backoff"`` (Brants et al., "Large language models in machine translation", EMNLP 2007):
  **scores, not probabilities** — ``S(w|h) = c(h w) / c(h .)`` if ``c(h w) > 0``, else
  ``alpha S(w|h')`` (default ``alpha = 0.4``, also for a context never seen), ``S(w) = c(w) / N``.
  They do not sum to 1 over the tokens, so :meth:`NgramLM.perplexity` refuses them;
  :meth:`NgramLM.log_probs`, ``sentence_log_prob`` and friends return log-scores, and ``generate``
  samples from the scores renormalized over the vocabulary. ``nltk_compatible=True`` uses NLTK's
  padding-inclusive counts (NLTK's ``StupidBackoff``).

Any context never seen in training contributes nothing: ``p(w|h) = p(w|h')`` (for "mle" 0, for
Laplace/Lidstone uniform).

ARPA files (``to_arpa``/``from_arpa``) hold log10 probabilities and backoff weights with the usual
semantics ``p(w|h) = p*(h w)`` if listed, else ``bow(h) p(w|h')``, and the SRILM/KenLM sentence
convention: one ``<s>`` as the first context, n-grams beginning with ``<s>`` used only at sentence
starts. :meth:`NgramLM.to_arpa` writes every model (either padding) so that KenLM's ordinary
``score(s, bos=True, eos=True)`` equals :meth:`NgramLM.sentence_log_prob` / ln 10.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from chainrule.errors import DataError, InputError, renamed_parameters, warn_deprecated
from chainrule.io.checkpoint import atomic_write

logger = logging.getLogger(__name__)

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIALS = (UNK, BOS, EOS)

SMOOTHERS = ("mle", "laplace", "lidstone", "jelinek-mercer", "witten-bell", "katz", "kneser-ney", "kneser-ney-nltk",
             "absolute-discounting", "stupid-backoff")
#: smoothers that give scores, not probabilities (no perplexity, no ARPA file)
SCORE_SMOOTHERS = ("stupid-backoff",)
#: options each smoother accepts
_OPTIONS: dict[str, tuple[str, ...]] = {
    "mle": ("nltk_compatible",),
    "laplace": ("nltk_compatible",),
    "lidstone": ("k", "nltk_compatible"),
    "jelinek-mercer": ("lambdas",),
    "witten-bell": ("nltk_compatible",),
    "katz": ("max_discounted_count",),
    "kneser-ney": ("discount",),
    "kneser-ney-nltk": ("discount",),
    "absolute-discounting": ("discount", "nltk_compatible"),
    "stupid-backoff": ("alpha", "nltk_compatible"),
}
#: smoothers whose distributions can be written as an ARPA backoff model
ARPA_SMOOTHERS = ("jelinek-mercer", "witten-bell", "katz", "kneser-ney", "kneser-ney-nltk", "absolute-discounting", "arpa")
#: sentence padding conventions (see the module docstring); the first is the default
PADDINGS = ("srilm", "nltk")

_FORMAT = "chainrule-ngram-3"  # 2: + "padding" (format-1 models have NLTK padding); 3: nltk padding has n-1 </s>
_FORMATS_READ = ("chainrule-ngram-1", "chainrule-ngram-2", _FORMAT)
_CONFIG = "ngram.json"
#: The largest n-gram order accepted (KenLM's builds stop at 6 by default; SRILM's practice is below 10).
MAX_ORDER = 32
_ARRAYS = "ngram.npz"
_LOG10 = math.log(10.0)
_ARPA_ZERO = -99.0  # log10 of "probability 0" in ARPA files (SRILM's convention)


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted perplexity of a set of sentences.

    ``cross_entropy_nats_per_token = -(1/num_tokens) sum log p``, ``perplexity = exp(...)``;
    ``num_tokens`` counts the words plus one ``</s>`` per sentence (``<s>`` is not counted);
    ``num_oov`` the words mapped to ``<unk>``; ``vocab_size`` includes ``<unk>``, ``<s>``, ``</s>``.
    """

    perplexity: float
    cross_entropy_nats_per_token: float
    num_tokens: int
    num_oov: int
    vocab_size: int
    num_sentences: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"perplexity {self.perplexity:.4f} | cross-entropy {self.cross_entropy_nats_per_token:.4f} nats/token | "
                f"{self.num_tokens} tokens ({self.num_oov} OOV) | {self.num_sentences} sentences | vocab {self.vocab_size}")


@dataclass
class _Level:
    """Parameters of one order k: ``a`` per k-gram (table rank), ``g`` per context ((k-1)-gram rank;
    one entry for k = 1), ``has`` which k-grams are explicit (backoff levels), and the mode:
    ``interp``: ``p_k = a + g p_{k-1}``; ``backoff``: ``p_k = a if has else g p_{k-1}``;
    ``g_unseen``: the ``g`` of a context absent from the table (1: defer to the lower order)."""

    a: np.ndarray
    g: np.ndarray
    mode: str = "interp"
    has: np.ndarray | None = None
    g_unseen: float = 1.0


# ---------------------------------------------------------------------- helpers
def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query in the sorted ``keys``, -1 where absent (vectorized binary search: the
    specification :class:`_KeyIndex` is tested against)."""
    if keys.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, pos, -1)


class _KeyIndex:
    """The index of int64 queries in sorted, distinct, non-negative ``keys`` (-1 where absent), in
    O(1) per query: what :func:`_lookup` computes with a binary search, whose log2(M) dependent
    cache misses per query were half the time of scoring a corpus.

    Dense key ranges (unigrams: the token ids) get a direct table ``lut[key] = index``; others an
    open-addressing hash table with linear probing at load <= 1/2 (Fibonacci hashing: the high bits
    of ``key * 2^64/phi``), built and probed with vectorized rounds: each round every unresolved
    query (key) reads (claims) its next slot, so there are as many rounds as the longest probe
    sequence, and most queries resolve in the first. Memory: 16 bytes per slot, 2-4 slots per key
    (built on first use, per order, not saved).
    """

    _MUL = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        m = keys.size
        top = int(keys[-1]) + 1 if m else 0
        self.lut: np.ndarray | None = None
        if top <= 4 * m + 1024:
            self.lut = np.full(max(top, 1), -1, dtype=np.int64)
            self.lut[keys] = np.arange(m, dtype=np.int64)
            return
        bits = max(4, int(2 * m - 1).bit_length())  # 2^bits >= 2 m
        self.mask, self.shift = (1 << bits) - 1, np.uint64(64 - bits)
        self.slot_keys = np.full(1 << bits, -1, dtype=np.int64)
        self.slot_vals = np.zeros(1 << bits, dtype=np.int64)
        pending = np.arange(m, dtype=np.int64)
        pos = self._hash(keys)
        while pending.size:
            p = pos[pending]
            free = self.slot_keys[p] == -1
            slots, first = np.unique(p[free], return_index=True)  # one key per free slot: the first claimant
            won = pending[free][first]
            self.slot_keys[slots] = keys[won]
            self.slot_vals[slots] = won
            placed = np.zeros(m, dtype=bool)
            placed[won] = True
            pending = pending[~placed[pending]]
            pos[pending] = (pos[pending] + 1) & self.mask  # every slot passed is taken for good

    def _hash(self, q: np.ndarray) -> np.ndarray:
        h = np.ascontiguousarray(q, dtype=np.int64).view(np.uint64) * self._MUL  # wraps modulo 2^64
        h >>= self.shift
        return h.view(np.int64)

    def find(self, q: np.ndarray) -> np.ndarray:
        """Index of each query ``q`` (non-negative int64, any shape) in ``keys``, -1 where absent."""
        if self.lut is not None:
            inside = q < self.lut.size
            return np.where(inside, self.lut[np.where(inside, q, 0)], -1)
        qa = q.reshape(-1)
        pos = self._hash(qa)
        found = self.slot_keys[pos]
        hit = found == qa
        out = np.where(hit, self.slot_vals[pos], -1)  # most queries end at their first slot
        active = np.flatnonzero((found != -1) & ~hit)  # an occupied slot of another key: probe the next one
        qa, pos = qa[active], (pos[active] + 1) & self.mask
        while active.size:
            found = self.slot_keys[pos]
            hit = found == qa
            out[active[hit]] = self.slot_vals[pos[hit]]
            on = (found != -1) & ~hit  # an occupied slot of another key: probe the next one
            active, qa, pos = active[on], qa[on], (pos[on] + 1) & self.mask
        return out.reshape(q.shape)


#: one slot of an order's scoring table (:class:`_StreamTables`): the key, the level's ``a`` and
#: ``K``, and the ``g`` of the n-gram as a context one order up; 32 bytes, two per cache line
_RECORD = np.dtype([("key", "<i8"), ("a", "<f8"), ("g", "<f8"), ("k", "<f8")])


class _DisplaceHash:
    """A collision-free hash table of distinct non-negative int64 keys: every key has a slot of its
    own, found with *one* probe and no probing loop (hash and displace: D. Belazzougui, F. C.
    Botelho, M. Dietzfelbinger, "Hash, displace, and compress", ESA 2009). A key's bucket
    ``b`` and home ``h`` come from the bits of ``key * 2^64/phi`` (Fibonacci hashing); its slot is
    ``h XOR disp[b]``, where the displacement ``disp[b]`` of each bucket (~3 keys) is chosen at
    build time so that no two keys share a slot. A query reads ``disp`` and the key in its one
    slot; a different key there (or none) means absent.

    The slot index is what scoring uses as a key's rank (parameters are stored per slot), so a
    look-up is: one multiply, two shifts, two gathers, one compare. Load ``m / size`` in (0.35,
    0.7]. Built with vectorized rounds (all buckets of one size at once, largest first; in a round
    each bucket tries its next displacement, and of buckets that claim the same free slot the first
    wins), in a few tens of milliseconds per 100k keys.
    """

    _MULS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
             0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x94D049BB133111EB)

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        m = keys.size
        for attempt in range(4 * len(self._MULS)):
            tbits = max(2, int(m / 0.7).bit_length() + attempt // len(self._MULS))  # 2^tbits > m / 0.7
            bbits = max(1, (m // 4).bit_length())  # 2^bbits > m / 4 buckets
            self.mul = np.uint64(self._MULS[attempt % len(self._MULS)])
            self.bshift, self.hshift = np.uint64(64 - bbits), np.uint64(64 - bbits - tbits)
            self.hmask = np.uint64((1 << tbits) - 1)
            self.size = 1 << tbits
            slots = self._place(keys, 1 << bbits)
            if slots is not None:
                break
        else:  # pragma: no cover - 32 multipliers and table sizes that all fail
            raise DataError(f"cannot build a hash table for {m} n-gram keys")
        self.slots = slots  # the slot of each key
        self.slot_keys = np.full(self.size, -1, dtype=np.int64)
        self.slot_keys[slots] = keys

    def _bucket_home(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.ascontiguousarray(q, dtype=np.int64).view(np.uint64) * self.mul  # wraps modulo 2^64
        return (h >> self.bshift).view(np.int64), (h >> self.hshift) & self.hmask

    def _place(self, keys: np.ndarray, num_buckets: int) -> np.ndarray | None:
        """Choose ``disp``; return the slot of every key, or None if this hash function fails."""
        b, home = self._bucket_home(keys)
        home = home.view(np.int64)
        if np.unique(b * self.size + home).size < keys.size:
            return None  # two keys of one bucket share their home: no displacement separates them
        self.disp = np.zeros(num_buckets, dtype=np.uint16)  # small, so that it stays in cache
        order = np.argsort(b, kind="stable")
        counts = np.bincount(b, minlength=num_buckets)
        first = np.cumsum(counts) - counts
        taken = np.zeros(self.size, dtype=bool)
        for s in range(int(counts.max(initial=0)), 0, -1):  # the largest buckets first, while the table is empty
            bks = np.flatnonzero(counts == s)
            if not bks.size:
                continue
            homes = home[order[first[bks][:, None] + np.arange(s)]]  # (buckets, s)
            pending = np.arange(bks.size)
            d = 0  # every pending bucket tries the same displacement in a round
            while pending.size:
                if d >= min(self.size, 1 << 16):
                    return None
                cand_slots = homes[pending] ^ d
                free = ~taken[cand_slots].any(1)
                cand, cs = pending[free], cand_slots[free]
                if cand.size:
                    flat = cs.reshape(-1)
                    firsts = np.zeros(flat.size, dtype=bool)
                    firsts[np.unique(flat, return_index=True)[1]] = True  # the first bucket to claim a slot gets it
                    won = firsts.reshape(-1, s).all(1)
                    taken[cs[won].reshape(-1)] = True
                    self.disp[bks[cand[won]]] = d
                    done = np.zeros(bks.size, dtype=bool)
                    done[cand[won]] = True
                    pending = pending[~done[pending]]
                d += 1
        return self.find_slots(keys)

    def find_slots(self, q: np.ndarray) -> np.ndarray:
        """The slot each query would occupy (int64, any shape); the key is present iff ``slot_keys[slot] == q``."""
        b, home = self._bucket_home(q)
        home ^= np.take(self.disp, b)
        return home.view(np.int64).reshape(np.shape(q))

    def find(self, q: np.ndarray) -> np.ndarray:
        """Slot of each query key, -1 where absent."""
        s = self.find_slots(q)
        hit = np.take(self.slot_keys, s) == q
        return np.where(hit, s, -1)


class _StreamTables:
    """What scoring a stream of sentences reads, built once per model (and again when the model's
    tables or levels are replaced): per order, one hash table and the level's parameters per slot.

    **Codes.** A k-gram found in the tables has the code ``slot + 2``, its slot in the
    :class:`_DisplaceHash` of order k (for unigrams its token id); code 0 means absent, 1 (SRILM
    padding, where it matters) that the n-gram would reach before its sentence's start. An order-k
    key is ``first token * R_{k-1} + code of its (k-1)-gram suffix`` (``R_{k-1}`` = the size of the
    order-(k-1) table + 2): a present suffix gives a key >= 2, so the query of an absent suffix is
    set to 0, which no table holds, and all such queries read the same cached slot. The codes of
    all j-grams ending at every position of a stream so take one probe per order on the codes of
    the order below.

    **Parameters per slot.** Each slot of order k >= 2 is one 32-byte record (:data:`_RECORD`): the
    key, the level's ``a`` and ``K`` (backoff levels: 0 where the k-gram is listed, else 1) and the
    ``g`` of the k-gram as the context of order k + 1; one gather per order gives the check, the
    level and the next level's context (with cold caches a 32-byte record costs what one float
    does). Unigrams are small arrays indexed by code (``G`` of order 2: ``g_unseen`` at 0, 1 at 1).
    One level is then, for every position at once and with no selection,
    ``p = hit a + g_context p (hit K + 1 - hit)`` (interpolated levels: ``K = 1``; a backoff level
    whose every table entry is listed: ``K = 0``, so the factor is ``1 - hit``), where ``hit`` says
    whether the k-gram was found: a k-gram not found and an unseen context leave ``p`` unchanged when
    ``g_unseen`` is 1, exactly as the per-row path's selections do (``0 + 1 p``, and products with
    0 and 1, are exact). Where few suffixes are present (the high orders) the order is computed on
    those positions only: the queries where the suffix is present, the level where the context is
    (every k-gram found there has its context found when the tables are prefix-closed, which is
    checked when they are built).

    Memory: 32 bytes per slot, 1.4-2.9 slots per n-gram, plus the displacements (~55-60 bytes per
    n-gram in all on Tiny Shakespeare's 3- and 5-gram models).

    With SRILM padding a context is cut at its ``<s>``: the n-grams that have ``<s>`` after their
    first token are left out of the tables (a query that respects the sentence start never reads
    them), so a look-up that crosses into the previous sentence finds nothing.
    """

    #: compute an order on the positions whose suffix is present when they are fewer than this share
    SPARSE = 0.4

    def __init__(self, model: NgramLM) -> None:
        self.sources = (list(model._keys), list(model._levels), model._base, model._recursive)
        n, V = model.order, len(model.vocab)
        self.srilm = model.padding == "srilm"
        keys1 = model._keys[0].astype(np.int64)
        self.lut: np.ndarray | None = None  # token id -> unigram code, where not every id is in the table
        if not np.array_equal(keys1, np.arange(V)):
            self.lut = np.zeros(V, dtype=np.int64)
            self.lut[keys1] = keys1 + 2
        code_of = [keys1 + 2]  # per order: the code of each table entry (0: left out)
        first_tok = [keys1]  # per order: the first token of each entry
        sizes = [V]
        self.tables: list[_DisplaceHash | None] = [None]
        self.radix: list[int] = [0]
        self.closed: list[bool] = [True]  # every kept k-gram's (k-1)-gram prefix is kept too
        for k in range(2, n + 1):
            keys, mult = model._keys[k - 1], model._mult(k)
            first, suffix = keys // mult, keys % mult
            suffix_code = code_of[-1][suffix]
            keep = suffix_code > 0
            if self.srilm:
                keep &= first_tok[-1][suffix] != BOS_ID  # <s> inside the k-gram: never read
            radix = sizes[-1] + 2
            table = _DisplaceHash(first[keep] * radix + suffix_code[keep])
            code = np.zeros(keys.size, dtype=np.int64)
            code[keep] = table.slots + 2
            prefix = model._chain(model._rows(k)[keep][:, :-1])[-1]  # dense rank of each kept k-gram's prefix
            self.closed.append(bool(np.all(prefix >= 0) and np.all(code_of[-1][np.maximum(prefix, 0)] > 0)))
            self.tables.append(table)
            self.radix.append(radix)
            code_of.append(code)
            first_tok.append(first)
            sizes.append(table.size)
        self.A: list[np.ndarray] = []  # per code
        self.K: list[np.ndarray | None] = []  # per code; None: interpolated, or listed = found
        self.listed_is_found: list[bool] = []
        self.G: list[np.ndarray | float] = []  # per code of the order below
        for k in range(1, n + 1):
            lev, code = model._levels[k - 1], code_of[k - 1]
            ok = code > 0
            m = code.size
            a = lev.a if lev.a.size else np.zeros(m)
            A = np.zeros(sizes[k - 1] + 2)
            K = None
            listed_is_found = False
            if lev.mode == "backoff":
                has = lev.has if lev.a.size else np.zeros(m, dtype=bool)
                A[code[ok]] = np.where(has, a, 0.0)[ok]
                listed_is_found = bool(has[ok].all())
                if not listed_is_found:
                    K = np.ones(sizes[k - 1] + 2)
                    K[code[ok]] = np.where(has, 0.0, 1.0)[ok]
            else:
                A[code[ok]] = a[ok]
            if k == 1:
                if listed_is_found:
                    K = np.ones(V + 2)
                    K[code[ok]] = 0.0
                self.G.append(float(lev.g[0]))
            else:
                G = np.full(sizes[k - 2] + 2, float(lev.g_unseen))
                G[1] = 1.0
                if lev.g.size:
                    cc = code_of[k - 2]
                    G[cc[cc > 0]] = lev.g[cc > 0]
                self.G.append(G)
            self.A.append(A)
            self.K.append(K)
            self.listed_is_found.append(listed_is_found)
        # order k >= 2: one 32-byte record per slot: the key, a, K and the g of the k-gram as the
        # context of order k + 1, so that one gather per order serves the check, the level and the
        # next level's context (cold caches: a gather of a record costs what one of a float does)
        self.rec: list[np.ndarray | None] = [None]
        for k in range(2, n + 1):
            rec = np.zeros(sizes[k - 1], dtype=_RECORD)
            rec["key"] = self.tables[k - 1].slot_keys  # type: ignore[union-attr]
            rec["a"] = self.A[k - 1][2:]
            K = self.K[k - 1]
            rec["k"] = 1.0 if K is None else K[2:]
            if k < n:
                rec["g"] = self.G[k][2:]  # type: ignore[index]
            self.rec.append(rec)
        self.has_k = [K is not None for K in self.K]  # levels that need K (backoff levels with unlisted entries)
        for k in range(2, n + 1):  # the records hold them
            self.A[k - 1] = self.K[k - 1] = None  # type: ignore[call-overload]
            if k < n:
                self.G[k] = None  # type: ignore[call-overload]
        self.gu = [float(lev.g_unseen) for lev in model._levels]
        self.base = model._base
        self.base_zero = not model._base.any()
        self.recursive = model._recursive
        self.g_unseen_one = [lev.g_unseen == 1.0 for lev in model._levels]
        # a backoff unigram level that lists every token: p = a, whatever the base
        self.unigrams_listed = self.lut is None and self.listed_is_found[0]

    def current(self, model: NgramLM) -> bool:
        keys, levels, base, rec = self.sources
        return (len(keys) == len(model._keys) and all(a is b for a, b in zip(keys, model._keys))
                and len(levels) == len(model._levels) and all(a is b for a, b in zip(levels, model._levels))
                and base is model._base and rec == model._recursive)

    def probs(self, stream: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
        """Probabilities (scores) of the tokens at stream positions 1.. (0.. for unigram models)
        given the positions before them; ``offset`` (each position's offset in its sentence) only
        where a level must know whether it reaches before the sentence start (non-recursive
        smoothers; a ``g_unseen`` other than 1 with SRILM padding), else None. The values at
        ``<s>`` pads are meaningless (the caller sets them)."""
        n, total = len(self.G), stream.size
        lo = 1 if n > 1 else 0  # position 0 is a pad when there are contexts
        code = stream + 2 if self.lut is None else np.take(self.lut, stream)
        p0 = np.zeros(total - lo) if self.base_zero else self.base[stream[lo:]]
        c1 = code[lo:]
        p = np.take(self.A[0], c1)
        if not self.unigrams_listed:  # else p(w) = a(w) for every w
            gp = p0 * self.G[0]
            if self.K[0] is not None:
                gp *= np.take(self.K[0], c1)
            p += gp
        if not self.recursive and n > 1:
            p = p0.copy()  # a non-recursive smoother reads its top level only: no position has span 1 but pads
        elif not self.recursive:
            return p
        if n == 1:
            return p
        g = np.take(self.G[1], code)  # g of the unigram at each position, as the context of order 2
        for k in range(2, n + 1):
            if k == 2 and self.lut is None:  # every token is a unigram of the table: all present
                present, sparse = None, False
            else:
                present = code > 0  # the (k-1)-gram ending at each position is in the tables
                present[:k - 1] = False  # no k-gram ends before position k - 1
                sparse = (self.recursive and self.closed[k - 1] and self.g_unseen_one[k - 1]
                          and np.count_nonzero(present) < self.SPARSE * total)
            code, g = (self._level_sparse if sparse else self._level_full)(k, stream, code, g, present, p, p0, offset)
        return p

    def _look_up(self, k: int, stream: np.ndarray, prev: np.ndarray, at: slice | np.ndarray, present: np.ndarray | None,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The order-k records of the k-grams ending at positions ``at`` (whose suffix codes are
        ``prev[at]``): (record, found, code; the codes into ``out`` if given)."""
        if isinstance(at, slice):
            q = stream[:stream.size - k + 1] * self.radix[k - 1]
            q += prev[at]
            if present is not None:
                q *= present[at]  # an absent suffix: the query 0, in no table, one cached slot for all
        else:
            q = np.take(stream, at - (k - 1)) * self.radix[k - 1]
            q += np.take(prev, at)
        s = self.tables[k - 1].find_slots(q)  # type: ignore[union-attr]
        z = np.take(self.rec[k - 1], s)  # type: ignore[arg-type]
        hit = z["key"] == q
        s += 2
        return z, hit, np.multiply(s, hit, out=out if out is not None else s)

    def _next_g(self, k: int, z: np.ndarray, hit: np.ndarray, miss: np.ndarray, out: np.ndarray) -> None:
        """The g of each looked-up k-gram as the context of order k + 1 (its ``g_unseen`` where absent), into ``out``."""
        np.multiply(z["g"], hit, out=out)
        out += miss if self.gu[k] == 1.0 else self.gu[k] * miss

    def _level_full(self, k: int, stream: np.ndarray, prev: np.ndarray, g_prev: np.ndarray, present: np.ndarray | None,
                    p: np.ndarray, p0: np.ndarray, offset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Order k at every position k - 1.. (before them no k-gram fits: level k does not apply);
        returns the code of the k-gram at every position, and its g as a context one order up."""
        total, lo, n = stream.size, 1, len(self.G)
        code = np.empty(total, dtype=np.int64)
        code[:k - 1] = 0
        z, hit, _ = self._look_up(k, stream, prev, slice(k - 1, None), present, code[k - 1:])
        P = p[k - 1 - lo:]
        gp = g_prev[k - 2:total - 1]  # the context's g: the (k-1)-gram ending one position earlier
        if offset is not None and self.recursive and not self.g_unseen_one[k - 1]:
            gp = np.where(offset[k - 1:] >= k - 1, gp, 1.0)  # before the sentence start: not an unseen context
        gp = gp * (P if self.recursive else p0[k - 1 - lo:])
        miss = ~hit
        if self.listed_is_found[k - 1]:
            gp *= miss
        elif self.has_k[k - 1]:
            keff = z["k"] * hit
            keff += miss
            gp *= keff
        a = z["a"] * hit
        if self.recursive:
            np.add(a, gp, out=P)
        else:  # each position reads the level of its span: min(n, offset + 1)
            a += gp
            P[...] = np.where(np.minimum(n, offset[k - 1:] + 1) == k, a, P)  # type: ignore[index]
        g = np.empty(0)
        if k < n:
            g = np.empty(total)
            g[:k - 1] = self.gu[k]
            self._next_g(k, z, hit, miss, g[k - 1:])
        return code, g

    def _level_sparse(self, k: int, stream: np.ndarray, prev: np.ndarray, g_prev: np.ndarray, present: np.ndarray,
                      p: np.ndarray, p0: np.ndarray, offset: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Order k where few (k-1)-grams are present: look up the k-grams ending at those
        positions, and apply the level where the context (the (k-1)-gram one position earlier) is
        present: with prefix-closed tables every k-gram found has it, and elsewhere (g_unseen = 1)
        the level changes nothing. ``g_prev`` need only be right where ``prev`` is present."""
        total, lo, n = stream.size, 1, len(self.G)
        at = np.flatnonzero(present)
        code = np.zeros(total, dtype=np.int64)
        a_at = np.zeros(total)
        k_at = None if self.listed_is_found[k - 1] or not self.has_k[k - 1] else np.ones(total)
        g = np.empty(0)
        if k < n:
            g = np.full(total, self.gu[k])
        if at.size:
            z, hit, c = self._look_up(k, stream, prev, at, None)
            code[at] = c
            a_at[at] = z["a"] * hit
            miss = ~hit
            if k_at is not None:
                keff = z["k"] * hit
                keff += miss
                k_at[at] = keff
            if k < n:
                g_at = np.empty(at.size)
                self._next_g(k, z, hit, miss, g_at)
                g[at] = g_at
        ctx_at = np.flatnonzero(prev[:total - 1] > 0)  # positions t - 1 whose (k-1)-gram is present
        t = ctx_at + 1
        gp = np.take(g_prev, ctx_at)
        gp *= np.take(p, t - lo)
        if self.listed_is_found[k - 1]:
            gp *= np.take(code, t) == 0
        elif k_at is not None:
            gp *= np.take(k_at, t)
        a = np.take(a_at, t)
        a += gp
        p[t - lo] = a
        return code, g


def _count_keys(key: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True, return_counts=True)`` for int keys in ``[0, bound)``;
    a dense ``bincount`` when the key range is small (unigrams, characters), a sort otherwise."""
    if bound <= 4 * key.size + 1_000_000:
        dense = np.bincount(key, minlength=bound)
        keys = np.flatnonzero(dense)
        where = np.zeros(bound, dtype=np.int64)
        where[keys] = np.arange(keys.size)
        return keys.astype(np.int64), where[key], dense[keys].astype(np.int64)
    keys, inv, occ = np.unique(key, return_inverse=True, return_counts=True)
    return keys.astype(np.int64), inv.reshape(-1), occ.astype(np.int64)


def _safe_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.zeros(np.broadcast(x, y).shape)
    np.divide(x, y, out=out, where=y > 0)
    return out


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


def _validate_sentences(sentences: Iterable[Sequence[str]], what: str) -> list[Sequence[str]]:
    if isinstance(sentences, (str, bytes)):
        raise InputError(f"{what} must be an iterable of sentences (sequences of token strings), got one string; "
                         "split it into sentences of tokens first")
    try:
        sents = list(sentences)
    except TypeError as exc:
        raise InputError(f"{what} must be an iterable of sentences (sequences of token strings), got {type(sentences).__name__}") from exc
    if set(map(type, sents)) <= {list, tuple}:  # the common case, checked without a Python-level loop
        return sents
    out: list[Sequence[str]] = []
    for i, s in enumerate(sents):
        if isinstance(s, str):
            raise InputError(f"sentence {i} of {what} is a string {s[:30]!r}; expected a sequence of token strings "
                             "(e.g. line.split())")
        if not isinstance(s, (list, tuple)):
            try:
                s = list(s)
            except TypeError as exc:
                raise InputError(f"sentence {i} of {what} is a {type(s).__name__}, expected a sequence of token strings") from exc
        out.append(s)
    return out


def _flatten(sents: list[Sequence[str]], what: str) -> tuple[list[str], np.ndarray, set[str]]:
    """Sentences -> (flat token list, lengths, set of distinct tokens); every token must be a str."""
    lengths = np.fromiter(map(len, sents), dtype=np.int64, count=len(sents))
    flat = list(chain.from_iterable(sents))
    try:
        uniq = set(flat)
    except TypeError as exc:
        raise InputError(f"tokens in {what} must be strings ({exc})") from exc
    types = set(map(type, uniq))
    if not types <= {str}:
        bad = sorted(t.__name__ for t in types - {str})
        raise InputError(f"tokens in {what} must be strings, found {', '.join(bad)}")
    return flat, lengths, uniq


def _type_ids(flat: list[str], uniq: set[str], sort: bool = False) -> tuple[list[str], np.ndarray]:
    """The distinct tokens and, for every token, its index among them.

    Single characters go through their code points (one ``str.join`` + ``np.frombuffer``); other
    tokens through one ``dict`` look-up each, mapped in C (no Python-level loop)."""
    if uniq and all(len(t) == 1 for t in uniq):
        codes = np.frombuffer("".join(flat).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        type_codes = np.array(sorted(map(ord, uniq)), dtype=np.int64)
        lut = np.zeros(int(type_codes[-1]) + 1, dtype=np.int64)
        lut[type_codes] = np.arange(type_codes.size)
        return [chr(c) for c in type_codes.tolist()], lut[codes]
    types = sorted(uniq) if sort else list(uniq)
    index = {w: i for i, w in enumerate(types)}
    return types, np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=len(flat))


def _pad_stream(ids: np.ndarray, lengths: np.ndarray, num_bos: int, num_eos: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate sentences as ``<s>^num_bos w_1..w_L </s>^num_eos``; return (stream, offset in sentence)."""
    sizes = lengths + num_bos + num_eos  # pads + L + end pads
    total = int(sizes.sum())
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    stream = np.full(total, BOS_ID, dtype=np.int64)
    word_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    pos = np.repeat(starts + num_bos - word_start, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    stream[pos] = ids
    for j in range(1, num_eos + 1):
        stream[starts + sizes - j] = EOS_ID
    offset = np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)
    return stream, offset


def _as_float_list(value: Any, name: str) -> list[float]:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a list of numbers, got {value!r}") from exc
    return out


# ---------------------------------------------------------------------- the model
class NgramLM:
    """An order-``n`` n-gram language model over sentences of token strings.

    Args:
        order: n >= 1 (1 = unigram model).
        smoothing: one of :data:`SMOOTHERS` (see the module docstring for every formula):
            ``"mle"``, ``"laplace"``, ``"lidstone"``, ``"jelinek-mercer"``, ``"witten-bell"``,
            ``"katz"``, ``"kneser-ney"`` (interpolated modified KN), ``"kneser-ney-nltk"``,
            ``"absolute-discounting"`` (interpolated) or ``"stupid-backoff"`` (scores, not
            probabilities: no perplexity).
        padding: (keyword only) ``"srilm"`` (default): one ``<s>``, shorter n-grams at sentence
            starts, as SRILM and KenLM count and score them, so that exported ARPA files score the
            same under KenLM's ``score(s, bos=True, eos=True)``; ``"nltk"``: ``n - 1`` ``<s>`` and
            ``n - 1`` ``</s>``, exactly NLTK's ``pad_both_ends`` (use it to reproduce nltk.lm). See the
            module docstring.
        **options:
            ``k`` (lidstone; > 0, default 0.5);
            ``lambdas`` (jelinek-mercer; n + 1 weights >= 0 for orders n..1 and uniform, highest
            first, summing to 1, the uniform one > 0; default all equal);
            ``discount`` (kneser-ney: a single fixed discount in (0, 1) at every order instead of
            the three estimated ones; kneser-ney-nltk: NLTK's discount in [0, 1], default 0.1;
            absolute-discounting: D in (0, 1], default 0.75);
            ``alpha`` (stupid-backoff: the back-off factor > 0, default 0.4);
            ``max_discounted_count`` (katz: Good-Turing discounts counts <= this, default 5);
            ``nltk_compatible`` (mle, laplace, lidstone, witten-bell, absolute-discounting,
            stupid-backoff: reproduce nltk.lm exactly).

    NLTK compatibility (checked against nltk 3.x ``nltk/lm/{models,smoothing,api}.py``; with
    ``padding="nltk"``, NLTK fed the same padded sentences, i.e. ``padded_everygrams(n, s)``, the
    ``everygrams`` of ``<s>^(n-1) w_1..w_L </s>^(n-1)``, and the same vocabulary; NLTK's own
    ``nltk.lm`` unit tests, ported, are in ``tests/test_ngram_nltk.py``):

    - NLTK counts *every* k-gram of the padded sentence, including those that end inside the
      ``<s>`` padding (unigram ``<s>``, bigram ``<s> <s>`` ...). Our counts keep only k-grams that
      end on a predicted token, so that ``<s>`` is never predicted. Top-order counts coincide.
    - ``MLE``: identical for full-order queries.
    - ``Laplace``/``Lidstone``: NLTK divides by ``c(h .) + k * len(vocab)`` and its vocabulary
      contains ``<s>`` (for n > 1), ``</s>`` and ``<UNK>``: ``V_nltk = V`` (our V counts the
      same three symbols), so NLTK's distribution sums to 1 over the vocabulary *including*
      ``<s>``. Ours uses ``|P| = V - 1`` so it sums to 1 over the tokens that can occur.
      ``nltk_compatible=True`` uses ``V_nltk``.
    - ``WittenBellInterpolated``: same recursion, but NLTK's lowest order is the unigram MLE (a word
      never seen in training, e.g. ``<unk>`` with min_count 1, gets probability 0) and its lower-order
      counts include the padding k-grams. Ours ends in the uniform distribution.
      ``nltk_compatible=True`` reproduces NLTK.
    - ``KneserNeyInterpolated`` = ``"kneser-ney-nltk"``: one discount D for all orders; the top order
      ``max(c(h w) - D, 0)/c(h .)``; lower orders ``max(N1+(. h w) - D, 0)/N1+(. h .)``; gamma(h) =
      ``D * #{w: c(h w) > 0} / (same denominator)`` with the *raw* follower count; an unseen context
      (no raw counts) defers to the next lower order; the unigram level is
      ``N1+(. w)/N1+(. .)`` with no uniform floor — all with NLTK's padding-inclusive counts. Where
      NLTK would divide by zero (a context seen only before padding) we defer to the lower order.
      This definition is not normalized in general and may give 0 to words without continuation.

    - ``AbsoluteDiscountingInterpolated`` = ``"absolute-discounting"`` with ``nltk_compatible=True``;
      ``StupidBackoff`` = ``"stupid-backoff"`` with ``nltk_compatible=True``.

    The NLTK-compatible variants are therefore excluded from the "sums to 1, positive" guarantee, and
    so is ``"stupid-backoff"`` (scores, see :attr:`gives_probabilities`).
    """

    def __init__(self, order: int, smoothing: str = "kneser-ney", *, padding: str = "srilm", **options: Any) -> None:
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or not 1 <= order <= MAX_ORDER:
            raise InputError(f"order must be an integer n in 1..{MAX_ORDER} (1 = unigram; beyond {MAX_ORDER} words of "
                             f"context every n-gram of a text is unique), got {order!r}")
        if not isinstance(smoothing, str) or smoothing not in SMOOTHERS + ("arpa",):
            raise InputError(f"unknown smoothing {smoothing!r}; choose one of: {', '.join(SMOOTHERS)}")
        if not isinstance(padding, str) or padding not in PADDINGS:
            raise InputError(f"unknown padding {padding!r}; choose 'srilm' (one <s>, as SRILM/KenLM) or "
                             "'nltk' (n-1 <s>, as NLTK's pad_both_ends)")
        self.order = int(order)
        self.smoothing = smoothing
        self.padding = padding
        self.options = self._check_options(smoothing, dict(options))
        self.metadata: dict[str, Any] = {}
        self.vocab: list[str] = []
        self._keys: list[np.ndarray] = []
        self._counts: dict[str, list[np.ndarray]] = {}
        self._levels: list[_Level] = []
        self._base = np.zeros(0)
        self._recursive = True
        self._fitted = False

    # ------------------------------------------------------------------ options
    def _check_options(self, smoothing: str, options: dict[str, Any]) -> dict[str, Any]:
        allowed = _OPTIONS.get(smoothing, ())
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            hint = f"it accepts: {', '.join(allowed)}" if allowed else "it takes no options"
            if smoothing == "laplace" and "k" in unknown:
                hint = "laplace is add-one; use smoothing='lidstone' with k=... for add-k"
            raise InputError(f"unknown option(s) {', '.join(unknown)} for smoothing {smoothing!r}; {hint}")
        out: dict[str, Any] = {}
        n = self.order
        if "nltk_compatible" in allowed:
            out["nltk_compatible"] = bool(options.get("nltk_compatible", False))
        if smoothing == "lidstone":
            k = options.get("k", 0.5)
            if isinstance(k, bool) or not isinstance(k, (int, float, np.floating, np.integer)) or not math.isfinite(k) or k <= 0:
                raise InputError(f"lidstone needs k > 0 (the pseudo-count added to every count), got {k!r}")
            out["k"] = float(k)
        if smoothing == "jelinek-mercer":
            lam = options.get("lambdas")
            if lam is None:
                lam = [1.0 / (n + 1)] * (n + 1)
            if isinstance(lam, (str, bytes)):
                raise InputError(f"lambdas must be a list of {n + 1} numbers, got {lam!r}")
            lam = _as_float_list(lam, "lambdas")
            if len(lam) != n + 1:
                raise InputError(f"jelinek-mercer of order {n} needs {n + 1} lambdas (orders {n}..1, then uniform; "
                                 f"highest first), got {len(lam)}")
            if any(not math.isfinite(x) or x < 0 for x in lam) or abs(sum(lam) - 1.0) > 1e-6:
                raise InputError(f"lambdas must be >= 0 and sum to 1, got {lam} (sum {sum(lam):.6g})")
            if lam[-1] <= 0:
                raise InputError(f"the last lambda (weight of the uniform distribution) must be > 0 so that every token "
                                 f"has positive probability, got {lam}")
            out["lambdas"] = lam
        if smoothing == "katz":
            m = options.get("max_discounted_count", 5)
            if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
                raise InputError(f"max_discounted_count must be an integer >= 1, got {m!r}")
            out["max_discounted_count"] = int(m)
        if smoothing == "kneser-ney" and options.get("discount") is not None:
            d = options["discount"]
            if isinstance(d, bool) or not isinstance(d, (int, float, np.floating)) or not 0 < d < 1:
                raise InputError(f"kneser-ney discount must be a number in (0, 1), got {d!r}")
            out["discount"] = float(d)
        if smoothing == "absolute-discounting":
            d = options.get("discount", 0.75)
            if isinstance(d, bool) or not isinstance(d, (int, float, np.floating)) or not 0 < d <= 1:
                raise InputError(f"absolute-discounting discount must be a number in (0, 1], got {d!r}")
            out["discount"] = float(d)
        if smoothing == "stupid-backoff":
            a = options.get("alpha", 0.4)
            if isinstance(a, bool) or not isinstance(a, (int, float, np.floating)) or not math.isfinite(a) or a <= 0:
                raise InputError(f"stupid-backoff alpha (the factor of a backed-off score) must be a number > 0, got {a!r}")
            out["alpha"] = float(a)
        if smoothing == "kneser-ney-nltk":
            d = options.get("discount", 0.1)
            if isinstance(d, bool) or not isinstance(d, (int, float, np.floating)) or not 0 <= d <= 1:
                raise InputError(f"kneser-ney-nltk discount must be in [0, 1] (as in NLTK), got {d!r}")
            if n < 2:
                raise InputError("kneser-ney-nltk needs order >= 2 (NLTK's unigram KN score divides by the bigram count)")
            out["discount"] = float(d)
        return out

    @property
    def nltk_compatible(self) -> bool:
        return self.smoothing == "kneser-ney-nltk" or bool(self.options.get("nltk_compatible", False))

    @property
    def gives_probabilities(self) -> bool:
        """False for ``"stupid-backoff"``, whose scores are not a probability distribution."""
        return self.smoothing not in SCORE_SMOOTHERS

    @property
    def _num_eos(self) -> int:
        """How many ``</s>`` training sentences end with: 1 (srilm) or n - 1 (nltk; at least 1)."""
        return 1 if self.padding == "srilm" else max(1, self.order - 1)

    @property
    def _num_bos(self) -> int:
        """How many ``<s>`` training sentences are padded with: 1 (srilm; 0 for unigram models, where
        ``<s>`` is the context of nothing) or n - 1 (nltk)."""
        return min(1, self.order - 1) if self.padding == "srilm" else self.order - 1

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary entries, including ``<unk>``, ``<s>`` and ``</s>``."""
        return len(self.vocab)

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        state = f"vocab {len(self.vocab)}" if self._fitted else "not fitted"
        return f"NgramLM(order={self.order}, smoothing={self.smoothing!r}, padding={self.padding!r}{opts}) [{state}]"

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise InputError("this NgramLM is not fitted; call fit(sentences) first (or NgramLM.load / NgramLM.from_arpa)")

    # ------------------------------------------------------------------ vocabulary
    def _set_vocab(self, vocab: list[str]) -> None:
        self.vocab = vocab
        self._index = {w: i for i, w in enumerate(vocab)}

    def _map(self, flat: list[str], uniq: set[str]) -> np.ndarray:
        """Token strings -> int64 ids, OOV -> ``<unk>``: characters through their code points (one
        look-up per distinct token, then a gather), other tokens one dictionary look-up each."""
        if uniq and all(len(t) == 1 for t in uniq):
            types, tid = _type_ids(flat, uniq)
            return np.fromiter(map(self._index.get, types, repeat(UNK_ID)), dtype=np.int64, count=len(types))[tid]
        return np.fromiter(map(self._index.get, flat, repeat(UNK_ID)), dtype=np.int64, count=len(flat))

    def token_id(self, token: str) -> int:
        """Id of ``token`` (``<unk>``'s id 0 if out of vocabulary)."""
        self._require_fitted()
        if not isinstance(token, str):
            raise InputError(f"tokens must be strings, got {type(token).__name__}")
        return self._index.get(token, UNK_ID)

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Token strings -> int64 ids (OOV -> ``<unk>``)."""
        self._require_fitted()
        flat, _, uniq = _flatten(_validate_sentences([tokens], "tokens"), "tokens")
        return self._map(flat, uniq)

    # ------------------------------------------------------------------ fitting
    def fit(self, sentences: Iterable[Sequence[str]], min_count: int = 1, vocabulary: Iterable[str] | None = None) -> NgramLM:
        """Count all k-grams (k = 1..n) of the training sentences and compute the smoother's parameters.

        Each sentence is padded with one ``<s>`` and one ``</s>`` (``padding="srilm"``) or with
        ``n - 1`` of each (``padding="nltk"``, NLTK's ``pad_both_ends``).
        The vocabulary is ``vocabulary`` if given, else the tokens seen ``>= min_count`` times, plus
        ``<unk>``, ``<s>``, ``</s>``; other tokens count as ``<unk>``. ``<s>``/``</s>`` may not
        appear inside a sentence. Returns ``self``.
        """
        if self.smoothing == "arpa":
            raise InputError("a model read from an ARPA file cannot be refitted; create NgramLM(order, smoothing) instead")
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise InputError(f"min_count must be an integer >= 1, got {min_count!r}")
        sents = _validate_sentences(sentences, "the training corpus")
        if not sents:
            raise DataError("the training corpus is empty (0 sentences); fit needs at least one sentence")
        flat, lengths, uniq = _flatten(sents, "the training corpus")
        if BOS in uniq or EOS in uniq:
            raise InputError(f"training sentences contain the reserved padding symbols {BOS!r}/{EOS!r}; remove them "
                             "(padding is added automatically)")
        if vocabulary is not None:
            if isinstance(vocabulary, (str, bytes)):
                raise InputError("vocabulary must be an iterable of token strings, got one string")
            voc = list(vocabulary)
            if not all(isinstance(w, str) for w in voc):
                raise InputError("vocabulary must contain only strings")
            words = sorted(set(voc) - set(SPECIALS))
        types, tid = _type_ids(flat, uniq, sort=True)
        if vocabulary is None:
            counts = np.bincount(tid, minlength=len(types))
            words = [types[i] for i in np.flatnonzero(counts >= min_count).tolist() if types[i] not in SPECIALS]
        self._set_vocab(list(SPECIALS) + words)
        ids = np.fromiter(map(self._index.get, types, repeat(UNK_ID)), dtype=np.int64, count=len(types))[tid]
        self._count(ids, lengths)
        self.metadata.update({"train_sentences": int(lengths.size), "train_tokens": int(lengths.sum() + lengths.size),
                              "min_count": int(min_count)})
        self._build()
        self._fitted = True
        logger.info("fitted %s on %d sentences (%d tokens), vocabulary %d", self, lengths.size,
                    int(lengths.sum()), len(self.vocab))
        return self

    def _count(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Fill the per-order tables: sorted keys, event counts (k-grams ending on a predicted token),
        occurrence counts (every k-gram inside a padded sentence, NLTK's counts) and prefix ranks."""
        n, V = self.order, len(self.vocab)
        stream, offset = _pad_stream(ids, lengths, self._num_bos, self._num_eos)
        ext = np.concatenate([np.full(n - 1, BOS_ID, dtype=np.int64), stream])
        windows = sliding_window_view(ext, n)  # windows[t] = the n tokens ending at stream position t
        event = offset >= self._num_bos  # k-grams that end on a predicted token
        keys_all, ev_all, occ_all, prefix_all = [], [], [], []
        rank_prev = np.zeros(0, dtype=np.int64)
        for k in range(1, n + 1):
            # positions where a k-gram inside the padded sentence ends (all of them for k = 1)
            pos = np.flatnonzero(offset >= k - 1) if k > 1 else np.arange(stream.size)
            column = windows[:, n - k]  # strided view: the token k-1 places back
            if k == 1:
                key, bound = stream, V
            else:
                mult = keys_all[-1].size
                if mult * V >= 2 ** 62:
                    raise DataError(f"too many distinct {k - 1}-grams ({mult}) x vocabulary ({V}) for int64 keys")
                key, bound = column[pos] * mult + rank_prev[pos], V * mult
            keys, inv, occ = _count_keys(key, bound)
            if k == 1:
                rank = inv
            else:
                rank = np.full(stream.size, -1, dtype=np.int64)
                rank[pos] = inv
            ev = np.bincount(inv[event[pos]], minlength=keys.size).astype(np.int64)
            prefix = np.zeros(keys.size, dtype=np.int64)
            if k > 1:  # the (k-1)-gram ending one position earlier (the same for every occurrence)
                prefix[inv] = rank_prev[pos - 1]
            keys_all.append(keys)
            ev_all.append(ev)
            occ_all.append(occ)
            prefix_all.append(prefix)
            rank_prev = rank
        self._keys = keys_all
        self._counts = {"ev": ev_all, "occ": occ_all, "prefix": prefix_all}

    # ------------------------------------------------------------------ table look-ups
    def _mult(self, k: int) -> int:
        """M_{k-1}: the radix of the suffix rank in order-k keys (1 for unigrams)."""
        return 1 if k == 1 else self._keys[k - 2].size

    def _chain(self, rows: np.ndarray) -> list[np.ndarray]:
        """Ranks of the last j tokens of every row in the order-j table, for j = 1..m (-1 = absent)."""
        m = rows.shape[1]
        out: list[np.ndarray] = []
        if m == 0:
            return out
        r = self._key_index(1).find(rows[:, -1])
        out.append(r)
        for j in range(2, m + 1):
            ok = r >= 0
            q = rows[:, m - j] * self._mult(j) + np.where(ok, r, 0)
            r = np.where(ok, self._key_index(j).find(q), -1)
            out.append(r)
        return out

    def _key_index(self, k: int) -> _KeyIndex:
        """The O(1) index of the order-k table, built on first use (and again when the table is replaced)."""
        cache: dict[int, _KeyIndex] = self.__dict__.setdefault("_key_indexes", {})
        index = cache.get(k)
        if index is None or index.keys is not self._keys[k - 1]:
            index = cache[k] = _KeyIndex(self._keys[k - 1])
        return index

    def _rows(self, k: int) -> np.ndarray:
        """The order-k table decoded back to id rows ``(M_k, k)``."""
        rows = self._keys[0][:, None]
        for j in range(2, k + 1):
            mult, keys = self._mult(j), self._keys[j - 1]
            rows = np.column_stack([keys // mult, rows[keys % mult]])
        return rows

    # ------------------------------------------------------------------ smoothers
    def _build(self, quiet: bool = False) -> None:
        """Compute the per-order parameters ``a``, ``g`` (and ``has``) and the base distribution."""
        n, V = self.order, len(self.vocab)
        uniform = np.full(V, 1.0 / (V - 1))
        uniform[BOS_ID] = 0.0
        nltk = self.nltk_compatible
        c_all = self._counts["occ"] if nltk else self._counts["ev"]
        prefix = self._counts["prefix"]
        levels: list[_Level] = []
        self._levels = levels
        self._recursive = True
        sm = self.smoothing

        def ctx_sum(k: int, values: np.ndarray) -> np.ndarray:
            return np.bincount(prefix[k - 1], weights=values, minlength=self._mult(k)).astype(np.float64)

        def bos_first(k: int) -> np.ndarray:
            """Which order-k entries (k >= 2) begin with <s> and so, with SRILM padding, have no
            continuation count (nothing precedes <s>): Kneser-Ney keeps their raw counts (lmplz)."""
            if self.padding != "srilm" or k < 2:
                return np.zeros(self._keys[k - 1].size, dtype=bool)
            return self._keys[k - 1] // self._mult(k) == BOS_ID

        if sm == "mle":
            self._recursive, self._base = False, np.zeros(V)
            for k in range(1, n + 1):
                c = c_all[k - 1]
                tot = ctx_sum(k, c)
                levels.append(_Level(_safe_div(c, tot[prefix[k - 1]]), np.where(tot > 0, 0.0, 1.0)))
        elif sm in ("laplace", "lidstone"):
            kk = 1.0 if sm == "laplace" else self.options["k"]
            self._recursive = False
            if nltk:
                v_eff = V if n > 1 else V - 1
                self._base = np.full(V, 1.0 / v_eff)
                if n == 1:
                    self._base[BOS_ID] = 0.0
            else:
                v_eff, self._base = V - 1, uniform
            for k in range(1, n + 1):
                c = c_all[k - 1]
                den = ctx_sum(k, c) + kk * v_eff
                levels.append(_Level(c / den[prefix[k - 1]], kk * v_eff / den))
        elif sm == "jelinek-mercer":
            lam = self.options["lambdas"]  # [lambda_n, ..., lambda_1, lambda_0]
            self._base = uniform
            for k in range(1, n + 1):
                lam_k = lam[n - k]
                below = sum(lam[n - k:])
                mu = lam_k / below if below > 0 else 0.0
                c = c_all[k - 1]
                tot = ctx_sum(k, c)
                levels.append(_Level(mu * _safe_div(c, tot[prefix[k - 1]]), np.where(tot > 0, 1.0 - mu, 1.0)))
        elif sm == "witten-bell":
            self._base = np.zeros(V) if nltk else uniform
            for k in range(1, n + 1):
                c = c_all[k - 1]
                tot = ctx_sum(k, c)
                nplus = ctx_sum(k, (c > 0).astype(np.float64))
                if nltk and k == 1:  # NLTK's base: the unigram MLE, no uniform floor
                    levels.append(_Level(_safe_div(c, tot[0]), np.zeros(1)))
                    continue
                den = tot + nplus
                levels.append(_Level(_safe_div(c, den[prefix[k - 1]]), np.where(tot > 0, _safe_div(nplus, den), 1.0)))
        elif sm == "kneser-ney":
            self._base = uniform
            ev = self._counts["ev"]
            for k in range(1, n + 1):
                if k == n:
                    c = ev[k - 1]
                else:  # continuation counts N1+(. h w): distinct left extensions seen in training
                    nxt = self._keys[k]
                    c = np.bincount(nxt % self._keys[k - 1].size, weights=(ev[k] > 0),
                                    minlength=self._keys[k - 1].size).astype(np.int64)
                    c = np.where(bos_first(k), ev[k - 1], c)
                d1, d2, d3 = self._kn_discounts(c, k, quiet)
                disc = np.array([0.0, d1, d2, d3])[np.minimum(c, 3)]
                tot = ctx_sum(k, c)
                num_g = ctx_sum(k, disc * (c > 0))
                a = _safe_div(np.maximum(c - disc, 0.0), tot[prefix[k - 1]])
                levels.append(_Level(a, np.where(tot > 0, _safe_div(num_g, tot), 1.0)))
        elif sm == "kneser-ney-nltk":
            d = self.options["discount"]
            self._base = np.zeros(V)
            occ = self._counts["occ"]
            for k in range(1, n + 1):
                if k < n:
                    cont = np.bincount(self._keys[k] % self._keys[k - 1].size,
                                       minlength=self._keys[k - 1].size).astype(np.float64)
                    cont = np.where(bos_first(k), occ[k - 1], cont)
                if k == 1:
                    levels.append(_Level(cont / cont.sum(), np.zeros(1)))
                    continue
                raw = occ[k - 1]
                raw_tot = ctx_sum(k, raw)
                nplus = ctx_sum(k, (raw > 0).astype(np.float64))
                if k == n:
                    c, tot = raw.astype(np.float64), raw_tot
                else:
                    c, tot = cont, ctx_sum(k, cont)
                seen = (raw_tot > 0) & (tot > 0)
                a = np.where(seen[prefix[k - 1]], _safe_div(np.maximum(c - d, 0.0), tot[prefix[k - 1]]), 0.0)
                levels.append(_Level(a, np.where(seen, _safe_div(d * nplus, tot), 1.0)))
        elif sm == "absolute-discounting":
            d = self.options["discount"]
            self._base = np.zeros(V) if nltk else uniform
            for k in range(1, n + 1):
                c = c_all[k - 1]
                tot = ctx_sum(k, c)
                if nltk and k == 1:  # NLTK's base: the unigram MLE, no uniform floor
                    levels.append(_Level(_safe_div(c, tot[0]), np.zeros(1)))
                    continue
                nplus = ctx_sum(k, (c > 0).astype(np.float64))
                a = _safe_div(np.maximum(c - d, 0.0), tot[prefix[k - 1]])
                levels.append(_Level(a, np.where(tot > 0, _safe_div(d * nplus, tot), 1.0)))
        elif sm == "stupid-backoff":
            alpha = self.options["alpha"]
            self._base = np.zeros(V)
            for k in range(1, n + 1):
                c = c_all[k - 1]
                tot = ctx_sum(k, c)
                rel = _safe_div(c, tot[prefix[k - 1]])
                if k == 1:  # S(w) = c(w) / N
                    levels.append(_Level(rel, np.zeros(1)))
                else:  # a context never seen backs off with alpha too (Brants et al. 2007; NLTK)
                    levels.append(_Level(rel, np.full(tot.size, alpha), mode="backoff", has=c > 0, g_unseen=alpha))
        elif sm == "katz":
            self._build_katz(uniform, quiet)
        else:  # pragma: no cover - arpa models set their levels when read
            raise InputError(f"cannot build smoothing {sm!r}")

    def _kn_discounts(self, c: np.ndarray, k: int, quiet: bool) -> tuple[float, float, float]:
        """Modified-KN discounts D1, D2, D3+ of one order from its count-of-counts (C&G 1999, Section 3).

        Valid if n1..n4 > 0 and 0 < D_j < j; with SRILM padding ``lmplz``'s rule instead: n1, n2,
        n3 > 0 and 0 < D_j <= j, so n4 = 0 (D3+ = 3) is accepted as ``lmplz`` accepts it."""
        if "discount" in self.options:
            d = self.options["discount"]
            return d, d, d
        nr = np.bincount(np.minimum(c[c > 0], 5), minlength=6)
        n1, n2, n3, n4 = (int(x) for x in nr[1:5])
        lmplz = self.padding == "srilm"
        if min(n1, n2, n3) > 0 and (n4 > 0 or lmplz):
            y = n1 / (n1 + 2 * n2)
            d1, d2, d3 = 1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3
            if 0 < d1 < 1 and 0 < d2 < 2 and (0 < d3 <= 3 if lmplz else 0 < d3 < 3):
                return d1, d2, d3
        d = n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5
        if not quiet:
            logger.warning("kneser-ney: the count-of-counts of order %d (n1=%d, n2=%d, n3=%d, n4=%d) give invalid modified-KN "
                           "discounts (too little data); using a single discount D=%.4f", k, n1, n2, n3, n4, d)
        return d, d, d

    def _build_katz(self, uniform: np.ndarray, quiet: bool) -> None:
        """Katz backoff with Good-Turing discounts (C&G 1999, Section 2), normalized backoff weights.

        The unigram level spreads the discounted mass uniformly over ``P``. Where Good-Turing is
        invalid (some n_r = 0, or a ratio d_r outside (0, 1]) absolute discounting
        ``(r - D)/c(h .)``, ``D = n1/(n1 + 2 n2)`` (0.5 if n1 or n2 is 0) is used for that order; a
        context whose counts are all above the discounted range (no mass left for unseen words) is
        discounted with the same D; a context followed by every token of P is renormalized.
        """
        n, V = self.order, len(self.vocab)
        kmax = self.options["max_discounted_count"]
        ev, prefix = self._counts["ev"], self._counts["prefix"]
        self._base = uniform
        num_p = V - 1
        for k in range(1, n + 1):
            c = ev[k - 1]
            mult = self._mult(k)
            nr = np.bincount(c[c > 0], minlength=kmax + 2)
            n1, n2 = int(nr[1]), int(nr[2])
            d_abs = n1 / (n1 + 2 * n2) if n1 > 0 and n2 > 0 else 0.5
            ratios = None
            if all(nr[r] > 0 for r in range(1, kmax + 2)):
                common = (kmax + 1) * nr[kmax + 1] / n1
                if common < 1:
                    r = np.arange(1, kmax + 1)
                    dr = ((r + 1) * nr[r + 1] / (r * nr[r]) - common) / (1 - common)
                    if np.all((dr > 0) & (dr <= 1)):
                        ratios = np.concatenate([[0.0], dr])
            if ratios is None:
                if not quiet:
                    logger.warning("katz: Good-Turing estimates of order %d are invalid on this data (count-of-counts %s); "
                                   "using absolute discounting with D=%.4f", k, nr[1:kmax + 2].tolist(), d_abs)
                disc_c = np.maximum(c - d_abs, 0.0)
            else:
                disc_c = np.where(c <= kmax, ratios[np.minimum(c, kmax)] * c, c).astype(np.float64)
            tot = np.bincount(prefix[k - 1], weights=c, minlength=mult).astype(np.float64)
            nplus = np.bincount(prefix[k - 1], weights=(c > 0), minlength=mult)
            q = _safe_div(disc_c, tot[prefix[k - 1]])
            left = 1.0 - np.bincount(prefix[k - 1], weights=q, minlength=mult)
            # contexts with nothing left for the unseen words (all counts > kmax): absolute discounting
            nomass = (tot > 0) & (left <= 1e-12) & (nplus < num_p)
            if nomass.any():
                sel = nomass[prefix[k - 1]]
                q = np.where(sel, _safe_div(np.maximum(c - d_abs, 0.0), tot[prefix[k - 1]]), q)
                left = 1.0 - np.bincount(prefix[k - 1], weights=q, minlength=mult)
            if k == 1:
                self._levels.append(_Level(q, np.array([max(float(left[0]), 0.0)])))
                continue
            # alpha(h) = left(h) / (1 - sum over seen followers of p_{k-1}(w | h'))
            seen = c > 0
            rows = self._rows(k)
            lower = np.zeros(c.size)
            if seen.any():
                lower[seen] = self._probs(rows[seen][:, 1:])
            den = 1.0 - np.bincount(prefix[k - 1], weights=lower, minlength=mult)
            full = (tot > 0) & ((nplus >= num_p) | (den <= 1e-12))
            if full.any():  # every token follows h: renormalize, nothing to back off to
                s = np.bincount(prefix[k - 1], weights=q, minlength=mult)
                q = np.where(full[prefix[k - 1]], _safe_div(q, s[prefix[k - 1]]), q)
            alpha = np.where(tot > 0, _safe_div(np.maximum(left, 0.0), np.maximum(den, 1e-300)), 1.0)
            alpha[full] = 0.0
            self._levels.append(_Level(q, alpha, mode="backoff", has=seen))

    # ------------------------------------------------------------------ scoring
    def _probs(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities of the last column given the others, rows ``(N, m)`` of ids, m <= n.

        With SRILM padding a context is cut before its last ``<s>`` (``<s> <s> w`` and ``x <s> w``
        are ``p(w | <s>)``: the sentence starts there, nothing before it counts); rows are grouped
        by where their context starts (at most n - 1 groups, no per-row Python loop)."""
        m = rows.shape[1]
        if self.padding == "srilm" and m > 2:
            is_bos = rows[:, 1:-1] == BOS_ID
            if is_bos.any():
                start = np.where(is_bos.any(1), m - 2 - np.argmax(is_bos[:, ::-1], axis=1), 0)
                out = np.empty(rows.shape[0])
                for j in np.unique(start).tolist():
                    sel = start == j
                    out[sel] = self._probs_flat(rows[sel, j:])
                return out
        return self._probs_flat(rows)

    def _probs_flat(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`_probs` without the SRILM cut: every column of the context is used."""
        m = rows.shape[1]
        ranks = self._chain(rows)
        ctx = self._chain(rows[:, :-1])
        p = self._base[rows[:, -1]].astype(np.float64)
        for k in (range(1, m + 1) if self._recursive else [m]):
            lev = self._levels[k - 1]
            r = ranks[k - 1]
            found = r >= 0
            rr = np.where(found, r, 0)
            if k == 1:
                g = np.full(rows.shape[0], float(lev.g[0]))
            else:
                cr = ctx[k - 2]
                g = (np.where(cr >= 0, lev.g[np.where(cr >= 0, cr, 0)], lev.g_unseen) if lev.g.size
                     else np.full(rows.shape[0], lev.g_unseen))
            a = np.where(found, lev.a[rr], 0.0) if lev.a.size else np.zeros(rows.shape[0])
            if lev.mode == "interp":
                p = a + g * p
            else:
                has = found & lev.has[rr] if lev.a.size else found
                p = np.where(has, a, g * p)
        return p

    def log_probs(self, ids_ngrams: np.ndarray) -> np.ndarray:
        """Natural-log probabilities of many n-grams at once.

        ``ids_ngrams``: int array ``(N, m)`` of token ids (see :meth:`encode`), the last column the
        predicted token, the others its context (oldest first). Rows longer than n use their last n
        ids; shorter rows (m < n) are scored with the order-m distribution of the model. With
        ``padding="srilm"`` the context starts at its last ``<s>`` (so ``<s> <s> w`` is ``<s> w``).
        Returns ``(N,)`` float64 (``-inf`` for probability 0); for ``"stupid-backoff"`` the log of
        its scores, which are not probabilities.
        """
        self._require_fitted()
        arr = np.asarray(ids_ngrams)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise InputError(f"ids_ngrams must be an int array (N, m) with m >= 1, got shape {arr.shape}")
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= len(self.vocab)):
            raise InputError(f"ids_ngrams must hold integer token ids in [0, {len(self.vocab)}), got dtype {arr.dtype} "
                             f"and range [{arr.min()}, {arr.max()}]")
        arr = arr[:, -self.order:].astype(np.int64)
        if arr.shape[0] == 0:
            return np.zeros(0)
        return _log(self._probs(arr))

    def log_prob(self, token: str, context: Sequence[str] = ()) -> float:
        """Natural log of p(token | context). The context is used as given, truncated to its last
        n - 1 tokens; for sentence starts include the ``<s>`` padding: ``("<s>",)`` with
        ``padding="srilm"`` (anything before a ``<s>`` is ignored, so ``("<s>", "<s>")`` is the
        same), ``("<s>",) * (n - 1)`` with ``padding="nltk"``. A shorter context is scored with the
        corresponding lower-order distribution."""
        self._require_fitted()
        if isinstance(context, str):
            raise InputError(f"context must be a sequence of tokens, got the string {context!r}; use e.g. {context.split()!r}")
        ids = np.append(self.encode(list(context)), self.token_id(token))
        return float(self.log_probs(ids[None, -self.order:])[0])

    #: how many out-of-vocabulary strings the token cache keeps (beyond the vocabulary) before it starts over
    _OOV_CACHE = 200_000

    def _encode_sentences(self, sentences: Iterable[Sequence[str]], what: str) -> tuple[np.ndarray, np.ndarray]:
        """Sentences -> (int64 ids of all their tokens, one sentence after another; lengths).

        Single characters go through their code points. Other tokens take one look-up each, in C,
        in a dictionary of the vocabulary and of the out-of-vocabulary strings met before (-> the
        id of ``<unk>``), so that the common case needs no default and no type check: a token it
        lacks (a new word, or something that is not a string) sends the call through
        :meth:`_learn_tokens`, which checks the tokens and adds the new words."""
        sents = _validate_sentences(sentences, what)
        lengths = np.fromiter(map(len, sents), dtype=np.int64, count=len(sents))
        num = int(lengths.sum())
        first = next(chain.from_iterable(sents), None)
        ids = None
        if isinstance(first, str) and len(first) == 1:  # perhaps characters
            flat = list(chain.from_iterable(sents))
            joined = self._checked_join(flat, what)
            if len(joined) == len(flat) and "" not in flat:  # all of them: one character each
                ids = self._char_ids(joined)
        if ids is None:
            cache = self.__dict__.get("_token_cache")
            if cache is None or cache[0] is not self._index:
                # <s> and </s> map to None, which np.fromiter refuses: the slow path names them
                cache = self.__dict__["_token_cache"] = (self._index, {**self._index, BOS: None, EOS: None})
            try:
                return np.fromiter(map(cache[1].__getitem__, chain.from_iterable(sents)), dtype=np.int64, count=num), lengths
            except (KeyError, TypeError):
                flat = list(chain.from_iterable(sents))
                self._learn_tokens(flat, cache[1], what)
                if BOS in flat or EOS in flat:
                    raise InputError(f"{what} contains the reserved padding symbols {BOS!r}/{EOS!r}; remove them") from None
                ids = np.fromiter(map(cache[1].__getitem__, flat), dtype=np.int64, count=num)
        if ids.size and ((ids == BOS_ID) | (ids == EOS_ID)).any():
            raise InputError(f"{what} contains the reserved padding symbols {BOS!r}/{EOS!r}; remove them")
        return ids, lengths

    @staticmethod
    def _checked_join(flat: list[Any], what: str) -> str:
        """The tokens joined into one string; a clear error if one is not a string."""
        try:
            return "".join(flat)
        except TypeError:
            bad = sorted({type(t).__name__ for t in flat if not isinstance(t, str)})
            raise InputError(f"tokens in {what} must be strings, found {', '.join(bad)}") from None

    def _learn_tokens(self, flat: list[Any], cache: dict[str, int], what: str) -> None:
        """Check that every token is a string and add the out-of-vocabulary ones to ``cache`` as
        ``<unk>`` (starting over from the vocabulary when it has grown by :attr:`_OOV_CACHE`)."""
        self._checked_join(flat, what)
        new = set(flat).difference(cache)
        if len(cache) + len(new) > len(self._index) + self._OOV_CACHE:
            cache.clear()
            cache.update({**self._index, BOS: None, EOS: None})
            new = set(flat).difference(cache)
        cache.update(dict.fromkeys(new, UNK_ID))

    def _char_ids(self, joined: str) -> np.ndarray | None:
        """Ids of the single-character tokens joined into ``joined``, through a table indexed by
        code point (built once per vocabulary); None for strings that cannot be encoded (lone
        surrogates)."""
        try:
            codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        except UnicodeEncodeError:
            return None
        cached = self.__dict__.get("_char_lut")
        if cached is None or cached[0] is not self.vocab:
            chars = [(ord(w), i) for i, w in enumerate(self.vocab) if len(w) == 1]
            top = max((c for c, _ in chars), default=0)
            lut = np.full(top + 2, UNK_ID, dtype=np.int64)  # the last entry: every code point above the vocabulary's
            for c, i in chars:
                lut[c] = i
            cached = self.__dict__["_char_lut"] = (self.vocab, lut)
        lut = cached[1]
        return lut[np.minimum(codes, lut.size - 1)]

    def _sentence_stream(self, sentences: Iterable[Sequence[str]], what: str, num_bos: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
        """Padded sentences as one id stream ``<s>^num_bos w_1..w_L </s>`` after another (default
        ``num_bos`` n - 1): the stream ``(S,)``, each position's offset in its sentence, the scored
        positions ``(N,)`` (every word and ``</s>``), the sentence index of each, #OOV, #sentences."""
        ids, lengths = self._encode_sentences(sentences, what)
        num_bos = self.order - 1 if num_bos is None else num_bos
        if lengths.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty, 0, 0
        stream, offset = _pad_stream(ids, lengths, num_bos)  # with n - 1: rows of n ids in both conventions
        targets = np.flatnonzero(offset >= num_bos)
        sent_idx = np.repeat(np.arange(lengths.size), lengths + 1)
        return stream, offset, targets, sent_idx, int((ids == UNK_ID).sum()), lengths.size

    def _stream_bos(self) -> int:
        """The ``<s>`` that scoring reads: SRILM padding cuts every context at the last one."""
        return 1 if self.padding == "srilm" else self.order - 1

    def _sentence_rows(self, sentences: Iterable[Sequence[str]], what: str) -> tuple[np.ndarray, np.ndarray, int, int]:
        """All scored n-grams of padded sentences: rows (N, n), sentence index of each, #OOV, #sentences."""
        stream, _, targets, sent_idx, num_oov, num = self._sentence_stream(sentences, what)
        rows = stream[targets[:, None] + np.arange(1 - self.order, 1)] if num else np.zeros((0, self.order), dtype=np.int64)
        return rows, sent_idx, num_oov, num

    def _stream_tables(self) -> _StreamTables:
        """The scoring tables (:class:`_StreamTables`), built on first use and again when the
        model's tables or levels are replaced."""
        tables = self.__dict__.get("_stream_cache")
        if tables is None or not tables.current(self):
            tables = self.__dict__["_stream_cache"] = _StreamTables(self)
        return tables

    def _stream_log_probs(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Natural-log probabilities of every scored token of the sentences (``ids`` of all tokens,
        ``lengths``), the same numbers as :meth:`_probs` of their n-gram rows with less work.

        The sentences are one stream ``<s>^b w_1..w_L </s>`` after another (b = :meth:`_stream_bos`:
        one ``<s>`` with SRILM padding, which cuts the context there anyway; n - 1 with NLTK's). The
        rank of the j-gram ending at every position is looked up once per order
        (:meth:`_StreamTables.probs`) and serves both the token it ends on and, as context, the next
        one; the levels are applied to every position with no selection (see :class:`_StreamTables`).
        Returns ``(log p, starts)``: ``log p`` over the stream from position ``lo`` (1 for n > 1, the
        first position being a pad), 0 at the ``<s>`` pads, and where each sentence starts in it."""
        n, nb = self.order, self._stream_bos()
        tabs = self._stream_tables()
        sizes = lengths + (nb + 1)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        total = int(ends[-1])
        stream = np.full(total, BOS_ID, dtype=np.int64)
        word = np.ones(total, dtype=bool)
        for i in range(nb):
            word[starts + i] = False
        word[ends - 1] = False
        stream[word] = ids
        stream[ends - 1] = EOS_ID
        offset = None
        if not tabs.recursive or (tabs.srilm and not all(tabs.g_unseen_one)):  # a level must know the sentence start
            offset = np.arange(total, dtype=np.int64) - np.repeat(starts, sizes)
        p = tabs.probs(stream, offset)
        lo = 1 if n > 1 else 0
        pads = (starts[:, None] + np.arange(nb)).reshape(-1) - lo
        p[pads[pads >= 0]] = 1.0
        seg = starts - lo
        seg[0] = 0
        return _log(p), seg

    def ngram_rows(self, sentences: Iterable[Sequence[str]]) -> np.ndarray:
        """Every scored n-gram of the padded sentences as id rows ``(N, n)`` (sentence after
        sentence, ``L + 1`` rows per sentence), ready for :meth:`log_probs`. The rows are windows
        of ``<s>^(n-1) w_1..w_L </s>`` in both conventions; with ``padding="srilm"`` the leading
        ``<s>`` beyond the last one of a context are ignored when scoring."""
        self._require_fitted()
        return self._sentence_rows(sentences, "sentences")[0]

    def sentence_log_prob(self, sentence: Sequence[str]) -> float:
        """Natural log of p(w_1 .. w_L </s>) under the model's padding (see the module docstring);
        for either padding, KenLM's ``score(" ".join(sentence), bos=True, eos=True)`` on the file
        :meth:`to_arpa` writes is this divided by ln 10."""
        self._require_fitted()
        ids, lengths = self._encode_sentences([sentence], "sentence")
        return float(self._stream_log_probs(ids, lengths)[0].sum())

    def sentence_log_probs(self, sentences: Iterable[Sequence[str]]) -> np.ndarray:
        """Natural-log probability of each sentence (vectorized over all of them); log-scores for
        ``"stupid-backoff"``."""
        self._require_fitted()
        ids, lengths = self._encode_sentences(sentences, "sentences")
        if not lengths.size:
            return np.zeros(0)
        lp, seg = self._stream_log_probs(ids, lengths)
        return np.add.reduceat(lp, seg)

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> PerplexityResult:
        """Token-weighted perplexity ``exp(-sum log p / num_tokens)`` over all sentences; every word and
        one ``</s>`` per sentence count as tokens. Infinite if some token has probability 0 (MLE).
        Refused for ``"stupid-backoff"``, whose scores are not probabilities."""
        self._require_fitted()
        if not self.gives_probabilities:
            raise InputError(f"{self.smoothing} gives scores, not probabilities (they do not sum to 1 over the tokens), "
                             "so it has no perplexity; use sentence_log_probs for log-scores, or a smoother such as "
                             "kneser-ney or absolute-discounting for a perplexity")
        ids, lengths = self._encode_sentences(sentences, "the evaluation set")
        if lengths.size == 0:
            raise InputError("cannot compute a perplexity on 0 sentences")
        lp = self._stream_log_probs(ids, lengths)[0]  # 0 at the <s> pads
        num_tokens = ids.size + lengths.size
        zero = int(np.isneginf(lp).sum())
        if zero:
            hint = ("use a smoothed model, e.g. smoothing='kneser-ney', 'witten-bell' or 'lidstone'"
                    if self.smoothing == "mle" else "NLTK's definitions give 0 to tokens never seen in training; "
                    "use the default definition (nltk_compatible=False / smoothing='kneser-ney')")
            logger.warning("%d of %d test tokens have probability 0 under %s, so the perplexity is infinite; %s",
                           zero, num_tokens, self, hint)
        ce = float(-lp.sum() / num_tokens)
        ppl = math.exp(ce) if ce < 700 else math.inf
        return PerplexityResult(ppl, ce, num_tokens, int((ids == UNK_ID).sum()), len(self.vocab), len(lengths))

    # ------------------------------------------------------------------ former spellings
    # ``log_prob`` is the one spelling of a log-probability in chainrule (models, heads, n-grams);
    # the n-gram model's former ``logprob`` names still work, with a DeprecationWarning.
    def logprob(self, token: str, context: Sequence[str] = ()) -> float:
        """Deprecated spelling of :meth:`log_prob`."""
        warn_deprecated("NgramLM.logprob", "NgramLM.log_prob")
        return self.log_prob(token, context)

    def logprobs(self, ids_ngrams: np.ndarray) -> np.ndarray:
        """Deprecated spelling of :meth:`log_probs`."""
        warn_deprecated("NgramLM.logprobs", "NgramLM.log_probs")
        return self.log_probs(ids_ngrams)

    def sentence_logprob(self, sentence: Sequence[str]) -> float:
        """Deprecated spelling of :meth:`sentence_log_prob`."""
        warn_deprecated("NgramLM.sentence_logprob", "NgramLM.sentence_log_prob")
        return self.sentence_log_prob(sentence)

    def sentence_logprobs(self, sentences: Iterable[Sequence[str]]) -> np.ndarray:
        """Deprecated spelling of :meth:`sentence_log_probs`."""
        warn_deprecated("NgramLM.sentence_logprobs", "NgramLM.sentence_log_probs")
        return self.sentence_log_probs(sentences)

    def next_logprobs(self, context: Sequence[str] = ()) -> np.ndarray:
        """Deprecated spelling of :meth:`next_log_probs`."""
        warn_deprecated("NgramLM.next_logprobs", "NgramLM.next_log_probs")
        return self.next_log_probs(context)

    # ------------------------------------------------------------------ generation
    def next_log_probs(self, context: Sequence[str] = ()) -> np.ndarray:
        """Log-probabilities ``(V,)`` of every vocabulary token after ``context`` (strings, used as
        given: include ``<s>`` for sentence starts, see :meth:`log_prob`)."""
        self._require_fitted()
        return self._next_log_probs(self.encode(list(context)))

    def _next_log_probs(self, ctx: np.ndarray) -> np.ndarray:
        V = len(self.vocab)
        ctx = ctx[max(0, len(ctx) - (self.order - 1)):] if self.order > 1 else ctx[:0]
        rows = np.empty((V, ctx.size + 1), dtype=np.int64)
        rows[:, :-1] = ctx
        rows[:, -1] = np.arange(V)
        return _log(self._probs(rows))

    @renamed_parameters(context="prompt")
    def generate(self, num_tokens: int | None = None, prompt: Sequence[str] | None = (), temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, generator: Any = None,
                 max_tokens: int = 10_000) -> list[str]:
        """Sample tokens left to right from the full next-token distribution (``chainrule.inference.processors``).

        ``num_tokens=None``: one sentence, until ``</s>`` (not returned) or ``max_tokens``.
        ``num_tokens=N``: exactly N tokens; a drawn ``</s>`` is returned and starts a new sentence
        (the context restarts with the ``<s>`` padding). ``prompt``: tokens the generated text
        continues, in the current sentence (padded with ``<s>`` on the left; not returned; ``None`` = none; formerly
        ``context=``, deprecated: ``context`` names what a probability is conditioned on, as in
        :meth:`log_prob`). ``temperature`` (0 = greedy),
        ``top_k``, ``top_p`` as in :func:`chainrule.inference.processors.processors`; ``generator`` a
        ``torch.Generator`` for reproducibility. ``<s>`` is never generated. ``"stupid-backoff"``
        samples from its scores renormalized over the vocabulary. If the context was
        never seen (only possible with ``"mle"``), the context is shortened until some token has
        positive probability.
        """
        import torch

        from chainrule.inference.processors import choose, processors

        self._require_fitted()
        if num_tokens is not None and (isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens < 0):
            raise InputError(f"num_tokens must be an integer >= 0 or None (until </s>), got {num_tokens!r}")
        if isinstance(prompt, str):
            raise InputError(f"prompt must be a sequence of tokens, got the string {prompt!r}; use e.g. {prompt.split()!r}")
        prompt = () if prompt is None else prompt
        chain_ = processors(temperature, top_k, top_p)
        pad = [BOS_ID] * (self.order - 1)
        hist = pad + self.encode(list(prompt)).tolist()
        out: list[str] = []
        limit = num_tokens if num_tokens is not None else max_tokens
        while len(out) < limit:
            ctx = np.array(hist[len(hist) - (self.order - 1):] if self.order > 1 else [], dtype=np.int64)
            logp = self._next_log_probs(ctx)
            while not np.isfinite(logp).any() and ctx.size:
                ctx = ctx[1:]
                logp = self._next_log_probs(ctx)
            logp[BOS_ID] = -math.inf
            tok = int(choose(torch.from_numpy(logp), chain_, generator))
            if tok == EOS_ID:
                if num_tokens is None:
                    return out
                hist = list(pad)
            else:
                hist.append(tok)
            out.append(self.vocab[tok])
        if num_tokens is None:
            logger.warning("generate: no </s> after max_tokens=%d tokens; stopping", max_tokens)
        return out

    # ------------------------------------------------------------------ ARPA
    def to_arpa(self, path: str | os.PathLike) -> Path:
        """Write the model as an ARPA backoff file (log10 probabilities and backoff weights) in the
        SRILM/KenLM convention, so that ``kenlm.Model(path).score(" ".join(s), bos=True, eos=True)``
        equals ``sentence_log_prob(s) / ln 10`` (to the 7 significant digits written, KenLM's
        float32) and KenLM's perplexities equal :meth:`perplexity`, for either padding.

        For interpolated smoothers every n-gram seen in training is written with its exact
        probability ``p(w|h)`` and every context ``h`` with ``bow(h) = gamma(h)``, so an unlisted
        ``h w`` backs off to ``gamma(h) p(w|h')`` exactly as the interpolation does; Katz is written
        as is. The unigram ``<s>`` has log10 p = -99 (probability 0) and the backoff weight of the
        sentence-start context.

        ``padding="srilm"`` models are written as they are. ``padding="nltk"`` models score the
        start of a sentence with contexts ``<s>^j u`` (j >= 1 padding symbols, u the words so far)
        that KenLM, which starts every sentence with the one context ``<s>``, never looks up; they
        are therefore written *collapsed*: the n-gram ``<s> u w`` carries the model's
        ``p(w | <s>^(n-1-|u|) u)`` and the context ``<s> u`` the product of the backoff weights
        ``gamma(<s>^j u)`` over the padding levels, which is exact because in a padded sentence
        ``<s>^j u w`` occurs exactly where ``<s> u w`` does. No n-gram with ``<s>`` after its
        first word is written. The file then describes the model only on sentences (a query
        with ``<s>`` inside a context, or predicting ``<s>``, may differ from :meth:`log_probs`).

        Supported for: jelinek-mercer, witten-bell, katz, kneser-ney, kneser-ney-nltk (and models
        read from ARPA); MLE/Laplace/Lidstone are not backoff models and raise InputError.
        """
        self._require_fitted()
        if self.smoothing not in ARPA_SMOOTHERS:
            raise InputError(f"smoothing {self.smoothing!r} is not a backoff model and cannot be written as ARPA; "
                             f"supported: {', '.join(ARPA_SMOOTHERS[:-1])}")
        bad = [w for w in self.vocab if not w or any(ch.isspace() for ch in w)]
        if bad:
            raise InputError(f"ARPA files separate words by whitespace, so tokens that are empty or contain whitespace "
                             f"cannot be written: {bad[:5]!r}; map them to other symbols before fitting")
        path = Path(path)
        n, V = self.order, len(self.vocab)
        # the n-grams to list, per order: ordinary ones as they are, <s>^j u w collapsed to <s> u w
        parts: dict[int, list[np.ndarray]] = {k: [] for k in range(2, n + 1)}
        overlap = False  # whether collapsing can produce an n-gram twice (only with <s>^j, j >= 2)
        for big_k in range(2, n + 1):
            rows = self._rows(big_k)[self._listed(big_k)]
            not_bos = rows != BOS_ID
            lead = np.where(not_bos.any(1), np.argmax(not_bos, axis=1), big_k)  # leading <s> of each row
            for j in np.unique(lead).tolist():
                if j == big_k:  # only <s>: a padding context, represented by the unigram <s>
                    continue
                tail = rows[lead == j, j:]
                tail = tail[(tail != BOS_ID).all(1)]  # <s> after a word: no sentence has it
                if j == 0:
                    parts[big_k].append(tail)
                else:
                    parts[big_k - j + 1].append(np.column_stack([np.full(tail.shape[0], BOS_ID), tail]))
                    overlap |= j > 1
        sections: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        for k in range(1, n + 1):
            if k == 1:
                rows = np.arange(V, dtype=np.int64)[:, None]
                lp = self.log_probs(rows)
            else:
                chunks = [c for c in parts[k] if c.size]
                if not chunks:
                    rows = np.zeros((0, k), dtype=np.int64)
                elif overlap:
                    rows = np.unique(np.concatenate(chunks), axis=0)
                else:
                    rows = np.concatenate(chunks)
                lp = np.zeros(rows.shape[0])
                start = rows[:, 0] == BOS_ID
                if (~start).any():
                    lp[~start] = self.log_probs(rows[~start])
                if start.any():  # sentence starts: the full-order probability (the same row with srilm padding)
                    lp[start] = self.log_probs(np.column_stack([np.full((int(start.sum()), n - k), BOS_ID), rows[start]]))
            lp = lp / _LOG10
            bow = _log(self._arpa_bow(rows)) / _LOG10 if k < n else None
            sections.append((rows, lp, bow))
        words = np.array(self.vocab, dtype=object)
        # Written to a temporary file next to ``path`` and renamed: a failed write leaves no half file.
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self._write_arpa(tmp, sections, words)
            os.replace(tmp, path)
        except OSError as exc:
            if tmp.parent.is_dir():
                tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write the ARPA file {path}: {exc.strerror or exc}") from None
        logger.info("wrote %s (%s)", path, ", ".join(f"{k}-grams: {s[0].shape[0]}" for k, s in enumerate(sections, 1)))
        return path

    @staticmethod
    def _write_arpa(path: Path, sections: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                    words: np.ndarray) -> None:
        """The ARPA text of :meth:`to_arpa`'s ``sections`` (per order: n-gram rows, log10 p, log10 bow)."""
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("\\data\\\n")
            for k, (rows, _, _) in enumerate(sections, 1):
                fh.write(f"ngram {k}={rows.shape[0]}\n")
            for k, (rows, lp, bow) in enumerate(sections, 1):
                fh.write(f"\n\\{k}-grams:\n")
                lp = np.where(np.isfinite(lp), lp, _ARPA_ZERO)
                lp_s = np.char.mod("%.7g", np.maximum(lp, _ARPA_ZERO))
                grams = words[rows[:, 0]].astype(str) if rows.size else np.zeros(0, dtype=str)
                for j in range(1, k):
                    grams = np.char.add(np.char.add(grams, " "), words[rows[:, j]].astype(str))
                lines = np.char.add(np.char.add(lp_s, "\t"), grams) if rows.size else np.zeros(0, dtype=str)
                if bow is not None and rows.size:
                    has_bow = bow != 0
                    bow_s = np.char.mod("%.7g", np.maximum(np.where(np.isfinite(bow), bow, _ARPA_ZERO), _ARPA_ZERO))
                    lines = np.where(has_bow, np.char.add(np.char.add(lines, "\t"), bow_s), lines)
                if rows.size:
                    fh.write("\n".join(lines.tolist()))
                    fh.write("\n")
            fh.write("\n\\end\\\n")

    def _arpa_bow(self, ctx: np.ndarray) -> np.ndarray:
        """ARPA backoff weights of contexts ``ctx`` (N, k), k < n: the order-(k+1) level's gamma
        (or Katz alpha) of the context, 1 where it is absent; for a sentence-start context
        ``<s> u`` the product over the padding variants ``<s>^j u`` (j = 1..n-1-|u|), of which
        only j = 1 exists with SRILM padding (see :meth:`to_arpa`)."""
        num, k = ctx.shape
        out = np.ones(num)
        start = np.flatnonzero(ctx[:, 0] == BOS_ID) if k else np.zeros(0, dtype=np.int64)
        for j in range(1, self.order - k + 1):
            sel = np.arange(num) if j == 1 else start
            if sel.size == 0:
                break
            rows = np.column_stack([np.full((sel.size, j - 1), BOS_ID, dtype=np.int64), ctx[sel]])
            r = self._chain(rows)[-1]
            g = self._levels[k + j - 1].g
            if g.size:
                out[sel] *= np.where(r >= 0, g[np.where(r >= 0, r, 0)], 1.0)
        return out

    def _listed(self, k: int) -> np.ndarray:
        """Which order-k table entries (k >= 2) an ARPA file lists: explicit n-grams and contexts."""
        if self.smoothing == "arpa":
            listed = self._levels[k - 1].has.copy()
        else:
            c = (self._counts["occ"] if self.nltk_compatible else self._counts["ev"])[k - 1]
            listed = c > 0
        if k < self.order:  # contexts of listed (k+1)-grams carry the backoff weights
            g = self._levels[k].g
            if self.smoothing == "arpa":
                listed |= g != 1.0
                ctx = self._ctx_of(k + 1)[self._listed(k + 1)]
                listed |= np.bincount(ctx[ctx >= 0], minlength=listed.size) > 0
            else:
                c_next = (self._counts["occ"] if self.nltk_compatible else self._counts["ev"])[k]
                listed |= np.bincount(self._counts["prefix"][k], weights=c_next > 0, minlength=listed.size) > 0
        return listed

    def _ctx_of(self, k: int) -> np.ndarray:
        """Rank of each order-k entry's context (prefix) in the order-(k-1) table (-1 if absent)."""
        if "prefix" in self._counts:
            return self._counts["prefix"][k - 1]
        rows = self._rows(k)
        return self._chain(rows[:, :-1])[-1]

    @classmethod
    def from_arpa(cls, path: str | os.PathLike, padding: str | None = None) -> NgramLM:
        """Read an ARPA file into a model that scores with the ARPA backoff semantics:
        ``p(w|h) = 10^logp(h w)`` if listed, else ``10^bow(h) p(w|h')`` (``bow = 0`` if h is not listed).
        Log-probabilities <= -99 mean probability 0. A file without ``<unk>`` gets one with probability 0
        (a warning is logged). Errors raise :class:`DataError` with the line number.

        ``padding``: how sentences are scored; ``None`` (default) infers it: ``"srilm"`` (one
        ``<s>``, as SRILM and KenLM score every ARPA file) unless the file lists n-grams with
        ``<s>`` after their first word (written for ``n - 1`` ``<s>``, e.g. ``<s> <s> w`` by earlier
        chainrule versions' export of NLTK-padded models), then ``"nltk"`` with a warning that
        KenLM's ordinary scoring ignores those n-grams."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise DataError(f"cannot read ARPA file {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text: invalid byte at offset {exc.start}") from exc
        lines = text.split("\n")
        i = 0

        def err(lineno: int, msg: str) -> DataError:
            return DataError(f"{path}:{lineno}: {msg}")

        while i < len(lines) and lines[i].strip() != "\\data\\":
            if lines[i].strip():
                raise err(i + 1, f"expected the '\\data\\' header, got {lines[i].strip()[:60]!r}")
            i += 1
        if i == len(lines):
            raise err(1, "no '\\data\\' header; not an ARPA file")
        i += 1
        declared: dict[int, int] = {}
        while i < len(lines):
            s = lines[i].strip()
            if not s:
                i += 1
                continue
            if not s.startswith("ngram "):
                break
            key, _, val = s[6:].partition("=")
            try:
                k, cnt = int(key), int(val)
            except ValueError:
                raise err(i + 1, f"malformed count line {s!r}; expected 'ngram K=COUNT'") from None
            if k != len(declared) + 1 or cnt < 0:
                raise err(i + 1, f"counts must be listed for orders 1, 2, ... with non-negative values; got {s!r}")
            declared[k] = cnt
            i += 1
        if not declared:
            raise err(i + 1, "no 'ngram K=COUNT' lines after '\\data\\'")
        n = len(declared)
        sections: dict[int, tuple[list[list[str]], list[float], list[float], list[int]]] = {}
        ended = False
        while i < len(lines):
            s = lines[i].strip()
            if not s:
                i += 1
                continue
            if s == "\\end\\":
                ended = True
                break
            if not (s.startswith("\\") and s.endswith("-grams:")):
                raise err(i + 1, f"expected a section header like '\\1-grams:' or '\\end\\', got {s[:60]!r}")
            try:
                k = int(s[1:-7])
            except ValueError:
                raise err(i + 1, f"malformed section header {s!r}") from None
            if k not in declared or k in sections:
                raise err(i + 1, f"unexpected section {s!r} (declared orders 1..{n})")
            grams: list[list[str]] = []
            lps: list[float] = []
            bows: list[float] = []
            linenos: list[int] = []
            i += 1
            while i < len(lines):
                s = lines[i].strip()
                if not s:
                    i += 1
                    if len(grams) == declared[k]:
                        break
                    continue
                if s.startswith("\\"):
                    break
                parts = s.split()
                if len(parts) not in (k + 1, k + 2):
                    raise err(i + 1, f"a {k}-gram line needs 'log10prob w1 .. w{k} [log10bow]', got {len(parts)} fields: {s[:80]!r}")
                try:
                    lp = float(parts[0])
                    bw = float(parts[k + 1]) if len(parts) == k + 2 else 0.0
                except ValueError:
                    raise err(i + 1, f"non-numeric probability or backoff weight in {s[:80]!r}") from None
                if not (math.isfinite(lp) or lp == -math.inf) or lp > 1e-6 or not (math.isfinite(bw) or bw == -math.inf):
                    raise err(i + 1, f"invalid log10 probability {parts[0]} (must be <= 0) in {s[:80]!r}")
                if len(parts) == k + 2 and k == n:
                    raise err(i + 1, f"highest-order {k}-grams cannot have a backoff weight: {s[:80]!r}")
                grams.append(parts[1:k + 1])
                lps.append(lp)
                bows.append(bw)
                linenos.append(i + 1)
                i += 1
            if len(grams) != declared[k]:
                raise err(i + 1, f"section \\{k}-grams: has {len(grams)} entries but the header declares {declared[k]}")
            sections[k] = (grams, lps, bows, linenos)
        if not ended:
            raise err(len(lines), "missing '\\end\\' line (truncated file?)")
        missing = [k for k in declared if k not in sections]
        if missing:
            raise err(i + 1, f"missing sections for orders {missing}")
        # vocabulary from the unigrams; specials first
        uni = [g[0] for g in sections[1][0]]
        if len(set(uni)) != len(uni):
            seen_words: set[str] = set()
            for w, ln in zip(uni, sections[1][3]):
                if w in seen_words:
                    raise err(ln, f"duplicate unigram {w!r}")
                seen_words.add(w)
        inner_bos = [k for k in range(2, n + 1) if any(BOS in g[1:] for g in sections[k][0])]
        if padding is None:
            padding = "nltk" if inner_bos else "srilm"
            if inner_bos:
                logger.warning("%s lists %d-grams with %s after their first word (padding with n-1 %s); scoring with "
                               "padding='nltk'. KenLM's score(s, bos=True, eos=True) starts from a single %s and "
                               "gives different scores for this file", path, inner_bos[0], BOS, BOS, BOS)
        model = cls(n, "arpa", padding=padding)
        if UNK not in uni:
            logger.warning("%s has no %s unigram; unknown words get probability 0", path, UNK)
        words = [w for w in uni if w not in SPECIALS]
        model._set_vocab(list(SPECIALS) + words)
        index = model._index
        uni_set = set(uni)
        rows_k: list[np.ndarray] = []
        lp_k: list[np.ndarray] = []
        bow_k: list[np.ndarray] = []
        for k in range(1, n + 1):
            grams, lps, bows, linenos = sections[k]
            ids = np.empty((len(grams), k), dtype=np.int64)
            for r, (g, ln) in enumerate(zip(grams, linenos)):
                for j, w in enumerate(g):
                    t = index.get(w)
                    if t is None or w not in uni_set:
                        raise err(ln, f"word {w!r} of this {k}-gram is not among the unigrams")
                    ids[r, j] = t
            rows_k.append(ids)
            lp = np.array(lps, dtype=np.float64)
            lp_k.append(np.where(lp <= _ARPA_ZERO, -np.inf, lp))
            bw = np.array(bows, dtype=np.float64)
            bow_k.append(np.where(bw <= _ARPA_ZERO, -np.inf, bw))
            if k >= 2 and ids.shape[0]:
                u, cnt = np.unique(ids, axis=0, return_counts=True)
                if (cnt > 1).any():
                    dup_row = u[np.argmax(cnt > 1)]
                    r = int(np.flatnonzero((ids == dup_row).all(1))[1])
                    raise err(linenos[r], f"duplicate {k}-gram {' '.join(grams[r])!r}")
        model._from_rows(rows_k, lp_k, bow_k)
        model.metadata["source"] = str(path)
        return model

    def _from_rows(self, rows_k: list[np.ndarray], lp_k: list[np.ndarray], bow_k: list[np.ndarray]) -> None:
        """Build suffix-closed tables from listed ARPA n-grams and set backoff levels."""
        n = self.order
        # suffix closure: every suffix of a listed n-gram must be in the lower table (unlisted if new)
        allrows = [r for r in rows_k]
        for k in range(n, 1, -1):
            suf = allrows[k - 1][:, 1:]
            allrows[k - 2] = np.unique(np.concatenate([allrows[k - 2], suf]), axis=0) if suf.size else allrows[k - 2]
        self._keys = []
        for k in range(1, n + 1):
            rows = allrows[k - 1]
            if k == 1:
                keys = np.unique(rows[:, 0])
            else:
                r = self._chain(rows[:, 1:])[-1]
                keys = np.unique(rows[:, 0] * self._mult(k) + r)
            self._keys.append(keys.astype(np.int64))
        self._counts = {}
        self._levels = []
        self._base = np.zeros(len(self.vocab))
        self._recursive = True
        ranks_by_order = [self._chain(rows_k[k - 1])[-1] if rows_k[k - 1].size else np.zeros(0, dtype=np.int64)
                          for k in range(1, n + 1)]
        for k in range(1, n + 1):
            M = self._keys[k - 1].size
            a = np.zeros(M)
            has = np.zeros(M, dtype=bool)
            r = ranks_by_order[k - 1]
            a[r] = np.power(10.0, lp_k[k - 1])
            has[r] = True
            if k == 1:
                g = np.ones(1)
            else:
                g = np.ones(self._keys[k - 2].size)
                rlow = ranks_by_order[k - 2]
                g[rlow] = np.power(10.0, bow_k[k - 2])
            self._levels.append(_Level(a, g, mode="backoff", has=has))
        self._fitted = True

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save to directory ``path``: ``ngram.json`` (settings incl. ``padding``, vocabulary) +
        ``ngram.npz`` (arrays)."""
        self._require_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for k in range(1, self.order + 1):
            arrays[f"keys_{k}"] = self._keys[k - 1]
            if self.smoothing == "arpa":
                lev = self._levels[k - 1]
                arrays[f"prob_{k}"] = lev.a
                arrays[f"has_{k}"] = lev.has.astype(np.int8)
                arrays[f"bow_{k}"] = lev.g
            else:
                for name in ("ev", "occ", "prefix"):
                    arrays[f"{name}_{k}"] = self._counts[name][k - 1]
        config = {"format": _FORMAT, "order": self.order, "smoothing": self.smoothing, "padding": self.padding,
                  "options": self.options, "vocab": self.vocab, "metadata": self.metadata}
        text = json.dumps(config, indent=1, ensure_ascii=False)

        def write_arrays(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a temporary name
                np.savez_compressed(fh, **arrays)

        # each file through a temporary one and a rename: an interrupted save never leaves a half-written file
        atomic_write(path / _ARRAYS, write_arrays)
        atomic_write(path / _CONFIG, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NgramLM:
        """Load a model saved with :meth:`save` (no pickle: JSON + ``np.load(allow_pickle=False)``).
        A model saved before the padding option (format ``chainrule-ngram-1``, no ``padding``
        field) was fitted with NLTK padding and loads with ``padding="nltk"``."""
        path = Path(path)
        if not (path / _CONFIG).is_file() or not (path / _ARRAYS).is_file():
            raise DataError(f"{path} is not a saved n-gram model (expected {_CONFIG} and {_ARRAYS} in it)")
        try:
            config = json.loads((path / _CONFIG).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path / _CONFIG} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict) or config.get("format") not in _FORMATS_READ:
            raise DataError(f"{path / _CONFIG} is not a chainrule n-gram model (format {config.get('format') if isinstance(config, dict) else None!r}, "
                            f"expected one of {', '.join(map(repr, _FORMATS_READ))})")
        padding = config.get("padding", "nltk")  # models saved before the option: NLTK padding
        if padding not in PADDINGS:
            raise DataError(f"{path / _CONFIG}: unknown padding {padding!r} (expected one of {', '.join(PADDINGS)})")
        model = cls(config["order"], config["smoothing"], padding=padding, **config.get("options", {}))
        model.metadata = dict(config.get("metadata", {}))
        model._set_vocab(list(config["vocab"]))
        from chainrule.data.formats import check_npz_members

        try:  # declared sizes against the archive's, before numpy allocates them
            check_npz_members(path / _ARRAYS)
        except DataError as exc:
            raise DataError(f"{exc}; the file is damaged or is not an n-gram model's arrays: fit and save the "
                            "model again") from None
        try:  # a truncated or overwritten archive fails in zipfile or zlib, not only in numpy
            with np.load(path / _ARRAYS, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"cannot read {path / _ARRAYS} ({type(exc).__name__}: {exc}); the file is damaged or "
                            "is not an n-gram model's arrays: fit and save the model again") from None
        n = model.order
        try:
            model._keys = [arrays[f"keys_{k}"].astype(np.int64) for k in range(1, n + 1)]
            if model.smoothing == "arpa":
                model._counts = {}
                model._levels = [_Level(arrays[f"prob_{k}"], arrays[f"bow_{k}"], mode="backoff",
                                        has=arrays[f"has_{k}"].astype(bool)) for k in range(1, n + 1)]
                model._base = np.zeros(len(model.vocab))
                model._recursive = True
            else:
                model._counts = {name: [arrays[f"{name}_{k}"].astype(np.int64) for k in range(1, n + 1)]
                                 for name in ("ev", "occ", "prefix")}
                model._build(quiet=True)
        except KeyError as exc:
            raise DataError(f"{path / _ARRAYS} lacks the array {exc.args[0]!r}; the file is damaged") from exc
        model._fitted = True
        return model


# ---------------------------------------------------------------------- CLI
def read_text_sentences(path: str | os.PathLike, lowercase: bool = False) -> list[list[str]]:
    """Sentences of a UTF-8 text file: one per non-empty line, tokens split on whitespace.

    A file that is not valid UTF-8 raises :class:`DataError` naming the byte offset."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
                        f"cannot be decoded ({exc.reason}); convert the file to UTF-8") from exc
    if lowercase:
        text = text.lower()
    return [toks for toks in (line.split() for line in text.split("\n")) if toks]
