"""Tokenizers with one protocol: characters, bytes, words and byte-level BPE.

Every tokenizer turns a ``str`` into a list of integer ids in ``0..vocab_size-1`` and back:

- :class:`CharTokenizer`: one id per character; the vocabulary is the sorted set of distinct
  characters of a training text (:meth:`CharTokenizer.fit`).
- :class:`ByteTokenizer`: ids ``0..255`` are the UTF-8 bytes of the text; needs no training and is
  lossless for every string.
- :class:`WordTokenizer`: words split on whitespace (or by a regular expression), vocabulary from
  word counts (:meth:`WordTokenizer.fit`); decoding joins words with single spaces, so it is *not*
  lossless.
- :class:`BPETokenizer`: byte-level BPE trained with the Hugging Face ``tokenizers`` library
  (:meth:`BPETokenizer.fit`; optional dependency: ``pip install "chainrule[bpe]"``); lossless for
  every string.

Every tokenizer that learns a vocabulary does so with the classmethod ``fit(text, ...)`` (as
:meth:`chainrule.lm.ngram.NgramLM.fit` and the trainer's ``fit`` do); ``BPETokenizer.train`` is
its deprecated spelling.

Special tokens
--------------
Special tokens (``specials``, default ``("<bos>", "<eos>")``) get the ids *after* the base
vocabulary, in the order given: a :class:`ByteTokenizer` with the default specials has
``special_tokens == {"<bos>": 256, "<eos>": 257}`` and ``vocab_size == 258``. The names
``"<bos>"``, ``"<eos>"``, ``"<pad>"`` and ``"<unk>"`` have the roles exposed by :attr:`bos_id`,
:attr:`eos_id`, :attr:`pad_id` and :attr:`unk_id`; any other special string is allowed too (e.g.
``"<sep>"``) and is only reachable by id. Text is never scanned for special strings by the char,
byte and BPE tokenizers (the text ``"<bos>"`` is encoded as its characters / bytes); the word
tokenizer maps a word equal to a special string to that special (so corpora such as Penn Treebank,
which write ``<unk>`` literally, keep their unknown words).

``decode(ids, skip_special=True)`` drops every special token except ``<unk>``, which stands for
content and is rendered as the string ``"<unk>"``; with ``skip_special=False`` every special is
rendered as its string.

Files
-----
:meth:`Tokenizer.save` writes one JSON file (never a pickle) with ``"format":
"chainrule-tokenizer"``, a format ``"version"`` and a ``"kind"`` (``"char"``, ``"byte"``, ``"word"``
or ``"bpe"``); a BPE file embeds the Hugging Face tokenizer's own JSON as a string.
:func:`load_tokenizer` reads any of them back. :meth:`Tokenizer.to_dict` and
:func:`tokenizer_from_dict` give the same content as a dict, e.g. to store it in a checkpoint.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import re
import tempfile
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from chainrule.errors import DataError, InputError, UnknownNameError, warn_deprecated

if TYPE_CHECKING:  # pragma: no cover - only for type checkers
    import tokenizers as hf_tokenizers

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "DEFAULT_SPECIALS",
    "FORMAT",
    "FORMAT_VERSION",
    "TOKENIZER_KINDS",
    "Tokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "make_tokenizer",
    "tokenizer_from_dict",
]

logger = logging.getLogger(__name__)

#: Value of the ``"format"`` field of every tokenizer file chainrule writes.
FORMAT = "chainrule-tokenizer"
#: Version of the file layout; files with a higher version are refused.
FORMAT_VERSION = 1
#: Special tokens a tokenizer gets unless told otherwise.
DEFAULT_SPECIALS: tuple[str, ...] = ("<bos>", "<eos>")

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"

_BPE_INSTALL_HINT = 'BPETokenizer needs the Hugging Face "tokenizers" package: pip install "chainrule[bpe]"'
_MAX_REPORTED = 5  # how many offending characters / ids an error message lists


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _check_text(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}")
    return text


def _check_specials(specials: object) -> list[str]:
    """Validate a ``specials`` argument: a sequence of distinct, non-empty strings."""
    if isinstance(specials, str):
        raise InputError(
            f"specials must be a sequence of token strings such as ('<bos>', '<eos>'), "
            f"not the single string {specials!r}"
        )
    if specials is None:
        return []
    try:
        result = list(specials)  # type: ignore[call-overload]
    except TypeError:
        raise InputError(
            f"specials must be a sequence of token strings such as ('<bos>', '<eos>'), "
            f"got {type(specials).__name__}"
        ) from None
    for s in result:
        if not isinstance(s, str) or not s:
            raise InputError(f"every special token must be a non-empty str, got {s!r} in {result!r}")
    duplicates = sorted({s for s in result if result.count(s) > 1})
    if duplicates:
        raise InputError(f"special tokens must be distinct; repeated: {duplicates}")
    return result


def _char_repr(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"{ch!r} (U+{ord(ch):04X}{' ' + name if name else ''})"


def _as_id_list(ids: object) -> list[int]:
    """Turn a sequence of ints (list, tuple, 1-D tensor or array) into a list of Python ints."""
    if isinstance(ids, (str, bytes)):
        raise InputError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
        ndim = getattr(ids, "ndim", 1)
        if ndim != 1:
            raise InputError(f"ids must be one-dimensional, got an array of shape {tuple(ids.shape)}")  # type: ignore[attr-defined]
        ids = ids.tolist()  # type: ignore[attr-defined]
    try:
        items = list(ids)  # type: ignore[call-overload]
    except TypeError:
        raise InputError(f"ids must be a sequence of ints, got {type(ids).__name__}") from None
    out: list[int] = []
    for pos, i in enumerate(items):
        if isinstance(i, bool):
            raise InputError(f"ids must be ints, got the bool {i!r} at position {pos}")
        try:
            out.append(operator.index(i))
        except TypeError:
            raise InputError(f"ids must be ints, got {i!r} ({type(i).__name__}) at position {pos}") from None
    return out


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# the protocol
# --------------------------------------------------------------------------------------------------


class Tokenizer(ABC):
    """Common protocol of every chainrule tokenizer.

    A tokenizer has a *base vocabulary* of ``n`` tokens with ids ``0..n-1`` (characters, bytes,
    words or BPE pieces) followed by its special tokens with ids ``n..vocab_size-1``.
    Subclasses implement the base vocabulary; this class handles specials, validation, decoding
    of mixed sequences and serialization.
    """

    #: Value of the ``"kind"`` field in saved files.
    kind: ClassVar[str]

    def __init__(self, specials: Sequence[str] = DEFAULT_SPECIALS) -> None:
        self._specials: list[str] = _check_specials(specials)
        base = self._base_size()
        self._special_tokens: dict[str, int] = {s: base + k for k, s in enumerate(self._specials)}
        self._id_to_special: dict[int, str] = {i: s for s, i in self._special_tokens.items()}
        for s in self._specials:
            if self._base_token_to_id(s) is not None:
                raise InputError(
                    f"special token {s!r} is also a regular token of this {type(self).__name__}; "
                    f"choose special strings that do not occur in the vocabulary, e.g. '<bos>'"
                )

    # ---- to be implemented by subclasses -----------------------------------------------------

    @abstractmethod
    def _base_size(self) -> int:
        """Number of non-special tokens (ids ``0..n-1``)."""

    @abstractmethod
    def _encode_base(self, text: str) -> list[int]:
        """Ids of ``text`` (no bos/eos)."""

    @abstractmethod
    def _decode_base(self, ids: list[int]) -> str:
        """Text of a run of base ids (all in ``0..n-1``)."""

    @abstractmethod
    def _base_id_to_token(self, i: int) -> str:
        """Token string of base id ``i``."""

    @abstractmethod
    def _base_token_to_id(self, token: str) -> int | None:
        """Base id of a token string, or None."""

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """Kind-specific fields of :meth:`to_dict` (everything except format, version, kind, specials)."""

    @classmethod
    @abstractmethod
    def _from_payload(cls, data: dict[str, Any], specials: list[str]) -> Tokenizer:
        """Inverse of :meth:`_payload`; raise :class:`DataError` on malformed content."""

    def _join(self, pieces: list[str]) -> str:
        """Join decoded segments (runs of base tokens and rendered specials)."""
        return "".join(pieces)

    # ---- sizes and specials --------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, base vocabulary plus special tokens."""
        return self._base_size() + len(self._specials)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token strings and their ids, e.g. ``{"<bos>": 256, "<eos>": 257}`` (a copy)."""
        return dict(self._special_tokens)

    @property
    def bos_id(self) -> int | None:
        """Id of ``<bos>``, or None if this tokenizer has none."""
        return self._special_tokens.get(BOS)

    @property
    def eos_id(self) -> int | None:
        """Id of ``<eos>``, or None if this tokenizer has none."""
        return self._special_tokens.get(EOS)

    @property
    def pad_id(self) -> int | None:
        """Id of ``<pad>``, or None if this tokenizer has none."""
        return self._special_tokens.get(PAD)

    @property
    def unk_id(self) -> int | None:
        """Id of ``<unk>``, or None if this tokenizer has none."""
        return self._special_tokens.get(UNK)

    def _require_special(self, token: str, option: str) -> int:
        i = self._special_tokens.get(token)
        if i is None:
            raise InputError(
                f"{option}=True but this {type(self).__name__} has no {token} token "
                f"(its special tokens: {self._specials or 'none'}); create it with "
                f"specials=(..., {token!r}) to use {option}"
            )
        return i

    # ---- encode / decode -----------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text``, optionally preceded by ``<bos>`` and followed by ``<eos>``.

        Raises:
            InputError: ``text`` is not a str, cannot be encoded (see the subclass), or
                ``add_bos`` / ``add_eos`` is requested but the tokenizer lacks that token.
        """
        _check_text(text)
        bos = self._require_special(BOS, "add_bos") if add_bos else None
        eos = self._require_special(EOS, "add_eos") if add_eos else None
        ids = self._encode_base(text)
        if bos is not None:
            ids.insert(0, bos)
        if eos is not None:
            ids.append(eos)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of a sequence of ids (a list, tuple, or 1-D tensor / array of ints).

        With ``skip_special=True`` special tokens other than ``<unk>`` are dropped; ``<unk>`` and,
        with ``skip_special=False``, every special token are rendered as their strings.

        Raises:
            InputError: an id is not an int or lies outside ``[0, vocab_size)``.
        """
        id_list = _as_id_list(ids)
        self._check_ids(id_list)
        base = self._base_size()
        pieces: list[str] = []
        run: list[int] = []
        for i in id_list:
            if i < base:
                run.append(i)
                continue
            if run:
                pieces.append(self._decode_base(run))
                run = []
            token = self._id_to_special[i]
            if skip_special and token != UNK:
                continue
            pieces.append(token)
        if run:
            pieces.append(self._decode_base(run))
        return self._join(pieces)

    def _check_ids(self, ids: list[int]) -> None:
        n = self.vocab_size
        bad = [(pos, i) for pos, i in enumerate(ids) if not 0 <= i < n]
        if bad:
            shown = ", ".join(f"{i} at position {pos}" for pos, i in bad[:_MAX_REPORTED])
            more = f" (and {len(bad) - _MAX_REPORTED} more)" if len(bad) > _MAX_REPORTED else ""
            raise InputError(
                f"cannot decode id(s) outside the vocabulary: {shown}{more}; "
                f"this {type(self).__name__} has vocab_size={n}, so ids must be in [0, {n - 1}]"
            )

    # ---- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text``: ``[id_to_token(i) for i in encode(text)]``."""
        return [self.id_to_token(i) for i in self.encode(text)]

    def id_to_token(self, i: int) -> str:
        """Token string of id ``i``.

        Raises:
            InputError: ``i`` is not an int in ``[0, vocab_size)``.
        """
        (i,) = _as_id_list([i])
        self._check_ids([i])
        if i >= self._base_size():
            return self._id_to_special[i]
        return self._base_id_to_token(i)

    def token_to_id(self, token: str) -> int:
        """Id of a token string (a special token or a base token).

        Raises:
            UnknownNameError: the token is not in the vocabulary.
        """
        _check_text(token, "token")
        if token in self._special_tokens:
            return self._special_tokens[token]
        i = self._base_token_to_id(token)
        if i is None:
            raise UnknownNameError(
                f"token {token!r} is not in the vocabulary of this {type(self).__name__} "
                f"(vocab_size={self.vocab_size}, special tokens: {self._specials or 'none'})"
            )
        return i

    # ---- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description; :func:`tokenizer_from_dict` rebuilds the tokenizer."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": self.kind,
            "specials": list(self._specials),
            **self._payload(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to one JSON file (atomically) and return its path."""
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path} is a directory; give a file name such as {path / 'tokenizer.json'}")
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.debug("saved %r to %s", self, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a saved tokenizer; on a subclass, also check that the file holds that kind."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise DataError(f"{path} holds a {type(tok).__name__} (kind {tok.kind!r}), not a {cls.__name__}")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={self._specials})"


# --------------------------------------------------------------------------------------------------
# characters
# --------------------------------------------------------------------------------------------------


class CharTokenizer(Tokenizer):
    """One id per character; ids ``0..n-1`` are the vocabulary characters in sorted order.

    Build it with :meth:`fit` or from an explicit character list. Encoding a character outside the
    vocabulary maps it to ``<unk>`` if the tokenizer has one (``unk=True`` or ``"<unk>"`` among the
    specials), and otherwise raises :class:`InputError` naming the characters and positions.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str], specials: Sequence[str] = DEFAULT_SPECIALS, unk: bool = False) -> None:
        if isinstance(chars, str):
            chars = list(chars)
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise InputError(f"chars must be single characters, got {c!r}")
        self._chars: list[str] = sorted(set(chars))
        if not self._chars:
            raise DataError("cannot build a vocabulary from an empty text (no characters given)")
        self._char_to_id: dict[str, int] = {c: i for i, c in enumerate(self._chars)}
        specials = _check_specials(specials)
        if _check_bool(unk, "unk") and UNK not in specials:
            specials.append(UNK)
        super().__init__(specials)

    @classmethod
    def fit(cls, text: str, specials: Sequence[str] = DEFAULT_SPECIALS, unk: bool = False) -> CharTokenizer:
        """Vocabulary = the distinct characters of ``text``, sorted.

        Raises:
            DataError: ``text`` is empty.
        """
        _check_text(text)
        if not text:
            raise DataError("cannot build a vocabulary from an empty text")
        tok = cls(set(text), specials=specials, unk=unk)
        logger.info("CharTokenizer: %d characters + %d special tokens", len(tok._chars), len(tok._specials))
        return tok

    @property
    def chars(self) -> list[str]:
        """The vocabulary characters in id order (a copy)."""
        return list(self._chars)

    def _base_size(self) -> int:
        return len(self._chars)

    def _encode_base(self, text: str) -> list[int]:
        table = self._char_to_id
        try:
            return [table[c] for c in text]
        except KeyError:
            pass
        unk = self.unk_id
        if unk is not None:
            return [table.get(c, unk) for c in text]
        bad = [(pos, c) for pos, c in enumerate(text) if c not in table]
        distinct = sorted({c for _, c in bad})
        shown = ", ".join(f"{_char_repr(c)} at position {pos}" for pos, c in bad[:_MAX_REPORTED])
        more = f" (and {len(bad) - _MAX_REPORTED} more)" if len(bad) > _MAX_REPORTED else ""
        raise InputError(
            f"CharTokenizer cannot encode {len(bad)} character(s) outside its vocabulary of "
            f"{len(self._chars)} characters ({len(distinct)} distinct): {shown}{more}; "
            f"to fix, fit the tokenizer (CharTokenizer.fit) on a text that contains them, "
            f"create it with unk=True to map them to <unk>, or use ByteTokenizer, which encodes any string"
        )

    def _decode_base(self, ids: list[int]) -> str:
        chars = self._chars
        return "".join(chars[i] for i in ids)

    def _base_id_to_token(self, i: int) -> str:
        return self._chars[i]

    def _base_token_to_id(self, token: str) -> int | None:
        return self._char_to_id.get(token)

    def _payload(self) -> dict[str, Any]:
        return {"chars": "".join(self._chars)}

    @classmethod
    def _from_payload(cls, data: dict[str, Any], specials: list[str]) -> CharTokenizer:
        chars = data.get("chars")
        if not isinstance(chars, str) or not chars:
            raise DataError('a "char" tokenizer file needs a non-empty string field "chars"')
        return cls(chars, specials=specials)


# --------------------------------------------------------------------------------------------------
# bytes
# --------------------------------------------------------------------------------------------------


def _byte_token(b: int) -> str:
    return chr(b) if 0x20 <= b <= 0x7E else f"<0x{b:02X}>"


_BYTE_TOKENS: list[str] = [_byte_token(b) for b in range(256)]
_BYTE_TOKEN_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class ByteTokenizer(Tokenizer):
    """Ids ``0..255`` are the UTF-8 bytes of the text; special tokens follow from id 256.

    Lossless: ``decode(encode(s)) == s`` for every ``str`` without lone surrogates (those cannot be
    written in UTF-8 and raise :class:`InputError`). Decoding a byte sequence that is not valid
    UTF-8 (e.g. a model sample, or a multi-byte character cut by a special token) does not fail:
    invalid bytes become U+FFFD (``errors="replace"``).

    Token strings (:meth:`tokenize`, :meth:`id_to_token`): printable ASCII bytes (0x20-0x7E) are
    the character itself, every other byte is written ``<0xAB>``; :meth:`token_to_id` accepts both
    forms (``"a"`` and ``"<0x61>"``).
    """

    kind = "byte"

    def __init__(self, specials: Sequence[str] = DEFAULT_SPECIALS) -> None:
        super().__init__(specials)

    def _base_size(self) -> int:
        return 256

    def _encode_base(self, text: str) -> list[int]:
        try:
            return list(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise InputError(
                f"text cannot be encoded as UTF-8: {_char_repr(text[e.start])} at position {e.start} "
                f"is a lone surrogate; expected a str of valid Unicode characters "
                f"(e.g. read files with errors='replace')"
            ) from None

    def _decode_base(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def _base_id_to_token(self, i: int) -> str:
        return _BYTE_TOKENS[i]

    def _base_token_to_id(self, token: str) -> int | None:
        if len(token) == 1 and 0x20 <= ord(token) <= 0x7E:
            return ord(token)
        m = _BYTE_TOKEN_RE.fullmatch(token)
        return int(m.group(1), 16) if m else None

    def _payload(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_payload(cls, data: dict[str, Any], specials: list[str]) -> ByteTokenizer:
        return cls(specials=specials)


# --------------------------------------------------------------------------------------------------
# words
# --------------------------------------------------------------------------------------------------


class WordTokenizer(Tokenizer):
    """Words split on whitespace (or by a regular expression); ``<unk>`` for unknown words.

    ``pattern=None`` splits on runs of whitespace (``str.split()``); otherwise the tokens are
    ``re.findall(pattern, text)`` (empty matches dropped), e.g. ``r"\\w+|[^\\w\\s]"`` separates
    punctuation. With ``lowercase=True`` text is lowercased before splitting (when fitting and
    encoding).

    Ids ``0..n-1`` are the words, most frequent first (ties alphabetical); ``<unk>`` is always among
    the special tokens. A word equal to a special string (e.g. a literal ``<unk>`` in the corpus)
    maps to that special.

    Not lossless: :meth:`decode` joins tokens with single spaces, so whitespace is normalized
    (and case is lost with ``lowercase=True``, punctuation is space-separated with a pattern).
    """

    kind = "word"

    def __init__(
        self,
        words: Iterable[str],
        specials: Sequence[str] = DEFAULT_SPECIALS,
        lowercase: bool = False,
        pattern: str | None = None,
    ) -> None:
        if isinstance(words, str):
            raise InputError("words must be a list of word strings, not a single str (use WordTokenizer.fit(text))")
        self._words: list[str] = list(words)
        for w in self._words:
            if not isinstance(w, str) or not w:
                raise InputError(f"every word must be a non-empty str, got {w!r}")
        duplicates = sorted({w for w, n in Counter(self._words).items() if n > 1})
        if duplicates:
            raise InputError(f"words must be distinct; repeated: {duplicates[:_MAX_REPORTED]}")
        self._word_to_id: dict[str, int] = {w: i for i, w in enumerate(self._words)}
        self._lowercase = _check_bool(lowercase, "lowercase")
        self._pattern = pattern
        self._regex: re.Pattern[str] | None = None
        if pattern is not None:
            if not isinstance(pattern, str):
                raise InputError(f"pattern must be a regular expression string or None, got {type(pattern).__name__}")
            try:
                self._regex = re.compile(pattern)
            except re.error as e:
                raise InputError(f"pattern {pattern!r} is not a valid regular expression: {e}") from None
        specials = _check_specials(specials)
        if UNK not in specials:
            specials.append(UNK)
        super().__init__(specials)

    @classmethod
    def fit(
        cls,
        text: str,
        min_count: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = DEFAULT_SPECIALS,
        lowercase: bool = False,
        pattern: str | None = None,
    ) -> WordTokenizer:
        """Vocabulary of the words of ``text`` occurring at least ``min_count`` times.

        Args:
            text: training text.
            min_count: rarer words are left out (they encode to ``<unk>``).
            max_size: keep at most this many words (the most frequent; specials not counted).
            specials: special tokens; ``"<unk>"`` is added if absent.
            lowercase: lowercase the text before splitting.
            pattern: regular expression whose matches are the tokens (None: split on whitespace).

        Raises:
            DataError: ``text`` is empty or no word is frequent enough.
            InputError: bad ``min_count``, ``max_size`` or ``pattern``.
        """
        _check_text(text)
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise InputError(f"min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise InputError(f"max_size must be None or an int >= 1, got {max_size!r}")
        if not text:
            raise DataError("cannot build a vocabulary from an empty text")
        # an empty instance does the splitting, so fit and encode split identically
        splitter = cls([], specials=specials, lowercase=lowercase, pattern=pattern)
        counts = Counter(w for w in splitter._split(text) if w not in splitter._special_tokens)
        if not counts:
            raise DataError(
                "cannot build a vocabulary: the text contains no words"
                + (f" matching pattern {pattern!r}" if pattern is not None else " (only whitespace)")
            )
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        words = [w for w, n in ranked if n >= min_count]
        if not words:
            raise DataError(
                f"cannot build a vocabulary: no word occurs min_count={min_count} times "
                f"(the most frequent, {ranked[0][0]!r}, occurs {ranked[0][1]} times); lower min_count"
            )
        if max_size is not None:
            words = words[:max_size]
        tok = cls(words, specials=specials, lowercase=lowercase, pattern=pattern)
        logger.info(
            "WordTokenizer: %d of %d distinct words (min_count=%d, max_size=%s) + %d special tokens",
            len(words), len(counts), min_count, max_size, len(tok._specials),
        )
        return tok

    @property
    def words(self) -> list[str]:
        """The vocabulary words in id order (a copy)."""
        return list(self._words)

    def _split(self, text: str) -> list[str]:
        if self._lowercase:
            text = text.lower()
        if self._regex is None:
            return text.split()
        return [w for w in self._regex.findall(text) if isinstance(w, str) and w]

    def _base_size(self) -> int:
        return len(self._words)

    def _encode_base(self, text: str) -> list[int]:
        table, specials, unk = self._word_to_id, self._special_tokens, self._special_tokens[UNK]
        return [table[w] if w in table else specials.get(w, unk) for w in self._split(text)]

    def _decode_base(self, ids: list[int]) -> str:
        words = self._words
        return " ".join(words[i] for i in ids)

    def _join(self, pieces: list[str]) -> str:
        return " ".join(p for p in pieces if p)

    def _base_id_to_token(self, i: int) -> str:
        return self._words[i]

    def _base_token_to_id(self, token: str) -> int | None:
        return self._word_to_id.get(token)

    def _payload(self) -> dict[str, Any]:
        return {"words": list(self._words), "lowercase": self._lowercase, "pattern": self._pattern}

    @classmethod
    def _from_payload(cls, data: dict[str, Any], specials: list[str]) -> WordTokenizer:
        words, lowercase, pattern = data.get("words"), data.get("lowercase", False), data.get("pattern")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError('a "word" tokenizer file needs a field "words" holding a list of strings')
        if not isinstance(lowercase, bool) or not (pattern is None or isinstance(pattern, str)):
            raise DataError('a "word" tokenizer file needs "lowercase" true/false and "pattern" a string or null')
        try:
            return cls(words, specials=specials, lowercase=lowercase, pattern=pattern)
        except InputError as e:
            raise DataError(f"corrupt word tokenizer file: {e}") from None


# --------------------------------------------------------------------------------------------------
# byte-level BPE (Hugging Face tokenizers)
# --------------------------------------------------------------------------------------------------


def _import_hf() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ImportError(_BPE_INSTALL_HINT) from None
    return tokenizers


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained with the Hugging Face ``tokenizers`` library.

    Create it with :meth:`fit`. The text is split GPT-2 style (byte-level pre-tokenizer with
    ``add_prefix_space=False``, no normalizer) and decoded by the byte-level decoder, so
    ``decode(encode(s)) == s`` exactly for every ``str`` without lone surrogates (which raise
    :class:`InputError`). Bytes that are not valid UTF-8 (possible in samples) decode to U+FFFD.

    The chainrule special tokens are *not* added to the Hugging Face tokenizer: they take the ids
    after its vocabulary and are never matched in text. Token strings (:meth:`tokenize`) are the
    library's byte-level pieces, where e.g. a space is shown as ``"Ġ"``.

    Constructing it directly from another ``tokenizers.Tokenizer`` is possible, but the round-trip
    guarantee then depends on that tokenizer's configuration.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: hf_tokenizers.Tokenizer, specials: Sequence[str] = DEFAULT_SPECIALS) -> None:
        tokenizers = _import_hf()
        if not isinstance(hf_tokenizer, tokenizers.Tokenizer):
            raise InputError(f"hf_tokenizer must be a tokenizers.Tokenizer, got {type(hf_tokenizer).__name__}")
        self._hf = hf_tokenizer
        self._size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        super().__init__(specials)

    @classmethod
    def fit(
        cls,
        text: str | Iterable[str],
        vocab_size: int = 1000,
        min_frequency: int = 2,
        specials: Sequence[str] = DEFAULT_SPECIALS,
    ) -> BPETokenizer:
        """Train a byte-level BPE vocabulary on a text or an iterable of texts.

        Args:
            text: a str, or an iterable of str (e.g. lines, documents).
            vocab_size: maximal total vocabulary size *including* the special tokens; at least
                256 + len(specials). The result is smaller when the text offers too few merges
                that occur ``min_frequency`` times.
            min_frequency: a pair is merged only if it occurs at least this often.
            specials: special tokens (ids after the BPE vocabulary).

        Raises:
            DataError: the text is empty.
            InputError: bad ``vocab_size`` / ``min_frequency`` / input type.
            ImportError: the ``tokenizers`` package is missing.
        """
        specials = _check_specials(specials)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise InputError(
                f"vocab_size must be an int >= {256 + len(specials)} (256 byte tokens + "
                f"{len(specials)} special tokens), got {vocab_size!r}"
            )
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise InputError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
        if isinstance(text, str):
            texts: Iterable[str] = [text]
        elif isinstance(text, Iterable) and not isinstance(text, (bytes, bytearray)):
            texts = text
        else:
            raise InputError(f"text must be a str or an iterable of str, got {type(text).__name__}")
        tokenizers = _import_hf()
        from tokenizers import decoders, models, pre_tokenizers, trainers

        total = 0

        def checked() -> Iterator[str]:
            nonlocal total
            for k, t in enumerate(texts):
                if not isinstance(t, str):
                    raise InputError(f"text must yield str, got {type(t).__name__} at item {k}")
                total += len(t)
                if t:
                    yield t

        hf = tokenizers.Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
        hf.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - len(specials),
            min_frequency=min_frequency,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(checked(), trainer=trainer)
        if total == 0:
            raise DataError("cannot build a vocabulary from an empty text")
        tok = cls(hf, specials=specials)
        logger.info(
            "BPETokenizer: %d BPE tokens (%d merges) + %d special tokens from %d characters",
            tok._size, tok._size - 256, len(specials), total,
        )
        return tok

    @classmethod
    def train(
        cls,
        text_or_iterator: str | Iterable[str],
        vocab_size: int = 1000,
        min_frequency: int = 2,
        specials: Sequence[str] = DEFAULT_SPECIALS,
    ) -> BPETokenizer:
        """Deprecated spelling of :meth:`fit` (the same arguments and result)."""
        warn_deprecated("BPETokenizer.train", "BPETokenizer.fit")
        return cls.fit(text_or_iterator, vocab_size=vocab_size, min_frequency=min_frequency, specials=specials)

    @property
    def hf_tokenizer(self) -> hf_tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (without the chainrule special tokens)."""
        return self._hf

    def _base_size(self) -> int:
        return self._size

    def _encode_base(self, text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"text cannot be encoded as UTF-8: {_char_repr(text[e.start])} at position {e.start} "
                f"is a lone surrogate; expected a str of valid Unicode characters"
            ) from None
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def _decode_base(self, ids: list[int]) -> str:
        return self._hf.decode(ids, skip_special_tokens=False)

    def _base_id_to_token(self, i: int) -> str:
        token = self._hf.id_to_token(i)
        if token is None:  # pragma: no cover - only with a non-contiguous foreign vocabulary
            raise InputError(f"id {i} has no token in the underlying Hugging Face vocabulary")
        return token

    def _base_token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def _payload(self) -> dict[str, Any]:
        return {"hf_tokenizer": self._hf.to_str()}

    @classmethod
    def _from_payload(cls, data: dict[str, Any], specials: list[str]) -> BPETokenizer:
        hf_json = data.get("hf_tokenizer")
        if not isinstance(hf_json, str):
            raise DataError('a "bpe" tokenizer file needs a string field "hf_tokenizer" (the Hugging Face JSON)')
        tokenizers = _import_hf()
        try:
            hf = tokenizers.Tokenizer.from_str(hf_json)
        except Exception as e:  # the library raises plain Exception subclasses
            raise DataError(f'the "hf_tokenizer" field of a "bpe" tokenizer file cannot be parsed: {e}') from None
        return cls(hf, specials=specials)


# --------------------------------------------------------------------------------------------------
# module functions
# --------------------------------------------------------------------------------------------------

_CLASSES: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "byte": ByteTokenizer,
    "word": WordTokenizer,
    "bpe": BPETokenizer,
}
#: The tokenizer kinds, as accepted by :func:`make_tokenizer` and stored in files.
TOKENIZER_KINDS: tuple[str, ...] = tuple(_CLASSES)


def _describe_foreign(data: object) -> str:
    """A short guess at what a JSON document that is not a chainrule tokenizer is."""
    if isinstance(data, dict):
        if "model" in data and ("pre_tokenizer" in data or "added_tokens" in data or "normalizer" in data):
            model = data.get("model")
            mtype = model.get("type") if isinstance(model, dict) else None
            return (
                f"a Hugging Face tokenizers file (tokenizer.json{', model ' + str(mtype) if mtype else ''})"
            )
        if data and all(isinstance(k, str) for k in data) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in data.values()
        ):
            return f"a token-to-id vocabulary of {len(data)} entries (such as a GPT-2 / BPE vocab.json)"
        if "format" in data:
            return f'a JSON object with "format": {data.get("format")!r}'
        keys = ", ".join(repr(k) for k in list(data)[:_MAX_REPORTED])
        return f"a JSON object with keys {keys}{', ...' if len(data) > _MAX_REPORTED else ''}"
    if isinstance(data, list):
        return f"a JSON list of {len(data)} items"
    return f"a JSON {type(data).__name__}"


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output.

    Raises:
        DataError: ``data`` is not a chainrule tokenizer description, has an unknown kind or a
            newer format version, or is malformed.
    """
    expected = f'a chainrule tokenizer ("format": "{FORMAT}", "kind" one of {list(TOKENIZER_KINDS)})'
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"not a chainrule tokenizer: found {_describe_foreign(data)}; expected {expected}")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DataError(f'corrupt chainrule tokenizer: "version" must be a positive int, got {version!r}')
    if version > FORMAT_VERSION:
        raise DataError(
            f"chainrule tokenizer format version {version} is newer than this chainrule supports "
            f"(up to {FORMAT_VERSION}); upgrade chainrule"
        )
    kind = data.get("kind")
    cls = _CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DataError(f"unknown chainrule tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}")
    try:
        specials = _check_specials(data.get("specials", []))
    except InputError as e:
        raise DataError(f'corrupt chainrule tokenizer: bad "specials": {e}') from None
    try:
        return cls._from_payload(data, specials)
    except InputError as e:
        raise DataError(f"corrupt chainrule {kind!r} tokenizer: {e}") from None


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer written by :meth:`Tokenizer.save`.

    Raises:
        DataError: the file is missing, is not JSON, is not a chainrule tokenizer (e.g. a plain
            Hugging Face ``tokenizer.json`` or a GPT-2 ``vocab.json``), has an unknown kind or is
            malformed.
        ImportError: a BPE tokenizer is loaded without the ``tokenizers`` package.
    """
    path = Path(path)
    expected = f'a chainrule tokenizer JSON file ("format": "{FORMAT}", written by Tokenizer.save)'
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"no tokenizer file at {path}; expected {expected}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory; expected {expected}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file (not UTF-8, perhaps a pickle or binary model); expected {expected}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); expected {expected}") from None
    try:
        tok = tokenizer_from_dict(data)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    logger.debug("loaded %r from %s", tok, path)
    return tok


def _factory(kind: str) -> Callable[..., Tokenizer]:
    return {
        "char": CharTokenizer.fit,
        "byte": lambda text, **options: ByteTokenizer(**options),
        "word": WordTokenizer.fit,
        "bpe": BPETokenizer.fit,
    }[kind]


_OPTIONS: dict[str, tuple[str, ...]] = {
    "char": ("specials", "unk"),
    "byte": ("specials",),
    "word": ("min_count", "max_size", "specials", "lowercase", "pattern"),
    "bpe": ("vocab_size", "min_frequency", "specials"),
}


def make_tokenizer(kind: str, text: str, **options: Any) -> Tokenizer:
    """Build a tokenizer of the given kind from a training text (for the command line).

    ``"char"`` → :meth:`CharTokenizer.fit`, ``"byte"`` → :class:`ByteTokenizer` (``text`` is not
    needed and ignored), ``"word"`` → :meth:`WordTokenizer.fit`, ``"bpe"`` →
    :meth:`BPETokenizer.fit`; ``options`` are passed on.

    Raises:
        UnknownNameError: unknown ``kind`` (the message lists the kinds).
        InputError: an option the kind does not accept.
        DataError: empty training text (except for ``"byte"``).
    """
    if kind not in _CLASSES:
        raise UnknownNameError(f"unknown tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}")
    unknown = sorted(set(options) - set(_OPTIONS[kind]))
    if unknown:
        raise InputError(
            f"tokenizer kind {kind!r} does not accept option(s) {unknown}; "
            f"its options are {list(_OPTIONS[kind])}"
        )
    _check_text(text)
    return _factory(kind)(text, **options)

