"""Tests of chainrule.text.tokenizers: round trips, specials, errors, save/load."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainrule.errors import DataError, InputError, UnknownNameError
from chainrule.text.tokenizers import (
    FORMAT,
    TOKENIZER_KINDS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    make_tokenizer,
    tokenizer_from_dict,
)

PROPERTY = settings(max_examples=200, deadline=None)

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine!\n"
    "It was the best of times, it was the worst of times; it was the age of wisdom...\n"
    "    def encode(self, text: str) -> list[int]:\n        return [ord(c) for c in text]\n\n"
    "Numbers: 0 1 2 3 4 5 6 7 8 9, 3.14159, 2.71828, 1e-10, -42, 100%, $5.00 & #tags @names\n"
    "Français: «Où est la bibliothèque ?» — Ça coûte 12 €. Déjà vu, naïve café, cœur.\n"
    "Deutsch: Grüße aus Köln! Die Straße ist schön, Äpfel und Öl.\n"
    "Ελληνικά: Γειά σου κόσμε. Русский: Привет, мир! Как дела?\n"
    "日本語のテキスト、中文文本。한국어 텍스트. العربية نص. עברית.\n"
    "Emoji: 😀 👍🏽 🇫🇷 👩‍💻 ✓ ✗ → ← ∑ ∫ √ ∞ ≤ ≥\n"
    "Combining: e\u0301 a\u0308 n\u0303; tabs\tand\ttabs; CRLF\r\nline; NUL\x00byte; "
    "no-break\u00a0space, line\u2028separator.\n"
) * 8


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    pytest.importorskip("tokenizers")
    return BPETokenizer.fit(CORPUS, vocab_size=400, min_frequency=2)


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------

EDGE_CASES = ["", " ", "   ", "\n\n\t \r\n", "\x00", "a\x00b", "😀👍🏽", "e\u0301", "<bos>x<eos>", "  lead", "trail  ",
              "Ġ", "日本語", "\ufeffbom", "\U0010ffff"]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_byte_and_bpe_edge_cases(bpe: BPETokenizer, text: str) -> None:
    for tok in (ByteTokenizer(), bpe):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        # literal special strings in text are never turned into special ids
        assert not set(ids) & set(tok.special_tokens.values())


@PROPERTY
@given(st.text())
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@PROPERTY
@given(text=st.text())
def test_bpe_round_trip(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text, add_bos=True, add_eos=True)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_compresses_training_text(bpe: BPETokenizer) -> None:
    assert 300 < bpe.vocab_size <= 400
    sample = CORPUS[:2000]
    assert len(bpe.encode(sample)) < 0.7 * len(sample.encode("utf-8"))
    assert bpe.decode(bpe.encode(sample)) == sample


CHAR_TEXT = "hello, world! Ünïcödé 日本 😀\n\t"


@PROPERTY
@given(st.text(alphabet=sorted(set(CHAR_TEXT))))
def test_char_round_trip(text: str) -> None:
    tok = CharTokenizer.fit(CHAR_TEXT)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.tokenize(text) == list(text)


WORDS = ["alpha", "beta", "gamma", "Delta", "é", "x1", "?"]


@PROPERTY
@given(st.lists(st.sampled_from(WORDS)), st.lists(st.sampled_from([" ", "  ", "\n", "\t", " \r\n "]), min_size=1))
def test_word_round_trip_whitespace_normalized(words: list[str], seps: list[str]) -> None:
    tok = WordTokenizer.fit(" ".join(WORDS))
    text = "".join(w + seps[k % len(seps)] for k, w in enumerate(words))
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# vocabularies, tokens, specials
# ----------------------------------------------------------------------------------------------


def test_vocab_sizes_and_special_ids(bpe: BPETokenizer) -> None:
    assert ByteTokenizer().vocab_size == 258
    assert ByteTokenizer(specials=()).vocab_size == 256
    tok = ByteTokenizer(specials=("<bos>", "<eos>", "<pad>"))
    assert tok.vocab_size == len(tok) == 259
    assert tok.special_tokens == {"<bos>": 256, "<eos>": 257, "<pad>": 258}
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (256, 257, 258, None)

    char = CharTokenizer.fit("banana", unk=True)
    assert char.chars == ["a", "b", "n"]
    assert char.vocab_size == 3 + 3
    assert char.special_tokens == {"<bos>": 3, "<eos>": 4, "<unk>": 5}

    word = WordTokenizer.fit("b a b c b a", specials=())
    assert word.words == ["b", "a", "c"]  # by frequency, ties alphabetical
    assert word.special_tokens == {"<unk>": 3}  # <unk> always present
    assert (word.bos_id, word.eos_id) == (None, None)

    assert bpe.special_tokens == {"<bos>": bpe.vocab_size - 2, "<eos>": bpe.vocab_size - 1}


def test_specials_encode_decode_skip() -> None:
    for tok in (ByteTokenizer(), CharTokenizer.fit("hi there"), WordTokenizer.fit("hi there")):
        ids = tok.encode("hi there", add_bos=True, add_eos=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.encode("hi there", add_bos=True)[1:] == tok.encode("hi there")
        assert tok.decode(ids) == "hi there"
        rendered = tok.decode(ids, skip_special=False)
        assert rendered.startswith("<bos>") and rendered.endswith("<eos>")
        assert tok.decode([tok.bos_id, tok.eos_id]) == ""


def test_byte_decode_special_between_bytes_and_invalid_utf8() -> None:
    tok = ByteTokenizer()
    assert tok.decode([104, tok.eos_id, 105], skip_special=False) == "h<eos>i"
    assert tok.decode([0xC3]) == "\ufffd"  # invalid UTF-8 is replaced, not an error
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"


def test_missing_special_raises() -> None:
    tok = ByteTokenizer(specials=())
    with pytest.raises(InputError, match="no <bos> token"):
        tok.encode("x", add_bos=True)
    with pytest.raises(InputError, match="no <eos> token"):
        CharTokenizer.fit("x", specials=["<bos>"]).encode("x", add_eos=True)


def test_tokens_and_ids(bpe: BPETokenizer) -> None:
    tok = ByteTokenizer()
    assert tok.tokenize("a é\n") == ["a", " ", "<0xC3>", "<0xA9>", "<0x0A>"]
    assert tok.id_to_token(0x41) == "A" and tok.id_to_token(0) == "<0x00>" and tok.id_to_token(256) == "<bos>"
    assert tok.token_to_id("A") == tok.token_to_id("<0x41>") == 0x41
    assert tok.token_to_id("<eos>") == 257
    with pytest.raises(UnknownNameError, match="not in the vocabulary"):
        tok.token_to_id("<nope>")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError
        CharTokenizer.fit("abc").token_to_id("z")
    assert WordTokenizer.fit("a b").token_to_id("<unk>") == WordTokenizer.fit("a b").unk_id

    pieces = bpe.tokenize("The quick brown fox")
    assert "".join(pieces).replace("Ġ", " ") == "The quick brown fox"
    assert [bpe.token_to_id(p) for p in pieces] == bpe.encode("The quick brown fox")
    for i in range(bpe.vocab_size):
        assert bpe.token_to_id(bpe.id_to_token(i)) == i


def test_decode_accepts_tensors() -> None:
    torch = pytest.importorskip("torch")
    tok = ByteTokenizer()
    assert tok.decode(torch.tensor([104, 105])) == "hi"
    with pytest.raises(InputError, match="one-dimensional"):
        tok.decode(torch.tensor([[104, 105]]))


def test_out_of_range_ids(bpe: BPETokenizer) -> None:
    for tok in (ByteTokenizer(), CharTokenizer.fit("abc"), WordTokenizer.fit("a b"), bpe):
        n = tok.vocab_size
        with pytest.raises(InputError, match=rf"{n}\b.*vocab_size={n}"):
            tok.decode([0, n])
        with pytest.raises(InputError, match="-1"):
            tok.decode([-1])
        with pytest.raises(InputError):
            tok.id_to_token(n)
    with pytest.raises(InputError, match="ints"):
        ByteTokenizer().decode([1.5])


def test_bad_specials() -> None:
    with pytest.raises(InputError, match="single string"):
        ByteTokenizer(specials="<bos>")
    with pytest.raises(InputError, match="distinct"):
        ByteTokenizer(specials=["<bos>", "<bos>"])
    with pytest.raises(InputError, match="regular token"):
        ByteTokenizer(specials=["A"])
    with pytest.raises(InputError, match="regular token"):
        CharTokenizer.fit("abc", specials=["a"])


# ----------------------------------------------------------------------------------------------
# unknown input
# ----------------------------------------------------------------------------------------------


def test_char_unknown_raises_with_positions_and_fix() -> None:
    tok = CharTokenizer.fit("hello world")
    with pytest.raises(InputError) as info:
        tok.encode("hello wörld!")
    msg = str(info.value)
    assert "'ö'" in msg and "position 7" in msg and "'!'" in msg and "position 11" in msg
    assert "unk=True" in msg and "ByteTokenizer" in msg and "fit" in msg


def test_char_unknown_maps_to_unk() -> None:
    tok = CharTokenizer.fit("hello world", unk=True)
    ids = tok.encode("hellö!")
    assert ids[4:] == [tok.unk_id, tok.unk_id]
    assert tok.decode(ids) == "hell<unk><unk>"  # <unk> is rendered, not skipped
    assert tok.tokenize("hö") == ["h", "<unk>"]


def test_word_min_count_max_size_and_options() -> None:
    text = "the cat sat on the mat the end cat"
    tok = WordTokenizer.fit(text, min_count=2)
    assert tok.words == ["the", "cat"]
    assert tok.encode("the dog sat") == [0, tok.unk_id, tok.unk_id]
    assert tok.decode(tok.encode("the dog  sat\n")) == "the <unk> <unk>"
    assert WordTokenizer.fit(text, max_size=1).words == ["the"]

    low = WordTokenizer.fit("The cat. THE dog!", lowercase=True, pattern=r"\w+|[^\w\s]")
    assert set(low.words) == {"the", "cat", "dog", ".", "!"}
    assert low.tokenize("The DOG.") == ["the", "dog", "."]
    assert low.decode(low.encode("Cat!")) == "cat !"

    ptb = WordTokenizer.fit("a <unk> b")  # a literal <unk> in the corpus is the unk token
    assert ptb.words == ["a", "b"] and ptb.encode("<unk>") == [ptb.unk_id]

    with pytest.raises(DataError, match="min_count"):
        WordTokenizer.fit("a b c", min_count=5)
    with pytest.raises(InputError, match="min_count"):
        WordTokenizer.fit("a b c", min_count=0)
    with pytest.raises(InputError, match="regular expression"):
        WordTokenizer.fit("a b c", pattern="(")


def test_surrogates_rejected(bpe: BPETokenizer) -> None:
    for tok in (ByteTokenizer(), bpe):
        with pytest.raises(InputError, match="surrogate"):
            tok.encode("a\ud800b")


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_empty_text(kind: str) -> None:
    if kind == "bpe":
        pytest.importorskip("tokenizers")
    with pytest.raises(DataError, match="empty text"):
        make_tokenizer(kind, "")


def test_whitespace_only_word_text() -> None:
    with pytest.raises(DataError, match="no words"):
        WordTokenizer.fit(" \n\t ")


def test_bpe_train_options() -> None:
    pytest.importorskip("tokenizers")
    with pytest.raises(InputError, match="vocab_size"):
        BPETokenizer.fit("abc", vocab_size=100)
    with pytest.raises(DataError, match="empty text"):
        BPETokenizer.fit(iter(["", ""]), vocab_size=300)
    tok = BPETokenizer.fit((line for line in CORPUS.splitlines(keepends=True)), vocab_size=300, specials=())
    assert tok.vocab_size <= 300 and tok.special_tokens == {}
    assert tok.decode(tok.encode(CORPUS[:500])) == CORPUS[:500]


# ----------------------------------------------------------------------------------------------
# make_tokenizer, save / load
# ----------------------------------------------------------------------------------------------


def test_missing_tokenizers_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r'pip install "chainrule\[bpe\]"'):
        BPETokenizer.fit(CORPUS, vocab_size=300)


def test_make_tokenizer() -> None:
    pytest.importorskip("tokenizers")
    assert isinstance(make_tokenizer("char", "abc", unk=True), CharTokenizer)
    assert make_tokenizer("byte", "", specials=()).vocab_size == 256
    assert isinstance(make_tokenizer("word", "a b a", min_count=2), WordTokenizer)
    assert isinstance(make_tokenizer("bpe", CORPUS[:3000], vocab_size=300), BPETokenizer)
    with pytest.raises(UnknownNameError) as info:
        make_tokenizer("sentencepiece", "abc")
    assert all(kind in str(info.value) for kind in TOKENIZER_KINDS)
    with pytest.raises(InputError, match="min_count"):
        make_tokenizer("char", "abc", min_count=2)


def _all_tokenizers(bpe: BPETokenizer) -> list[Tokenizer]:
    return [
        CharTokenizer.fit(CORPUS, unk=True, specials=("<bos>", "<eos>", "<pad>")),
        ByteTokenizer(),
        WordTokenizer.fit(CORPUS, min_count=3, lowercase=True, pattern=r"\w+|[^\w\s]"),
        bpe,
    ]


def test_save_load_identical(tmp_path, bpe: BPETokenizer) -> None:
    probe = CORPUS[:1500] + " unseen ☃ words ♞"
    for tok in _all_tokenizers(bpe):
        path = tok.save(tmp_path / f"{tok.kind}.json")
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["format"] == FORMAT and data["kind"] == tok.kind and data["version"] == 1
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tok)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.special_tokens == tok.special_tokens
        ids = tok.encode(probe, add_bos=True, add_eos=True)
        assert loaded.encode(probe, add_bos=True, add_eos=True) == ids
        assert loaded.decode(ids, skip_special=False) == tok.decode(ids, skip_special=False)
        assert [loaded.id_to_token(i) for i in range(tok.vocab_size)] == [
            tok.id_to_token(i) for i in range(tok.vocab_size)
        ]
        assert tokenizer_from_dict(tok.to_dict()).encode(probe) == tok.encode(probe)
        assert type(tok).load(path).vocab_size == tok.vocab_size
    assert isinstance(json.loads((tmp_path / "bpe.json").read_text())["hf_tokenizer"], str)
    with pytest.raises(DataError, match="not a CharTokenizer"):
        CharTokenizer.load(tmp_path / "byte.json")


def _write(tmp_path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def test_load_foreign_files(tmp_path, bpe: BPETokenizer) -> None:
    hf = _write(tmp_path, "tokenizer.json", bpe.hf_tokenizer.to_str())
    with pytest.raises(DataError, match="Hugging Face tokenizers file.*expected"):
        load_tokenizer(hf)
    vocab = _write(tmp_path, "vocab.json", json.dumps({"!": 0, "\"": 1, "Ġthe": 2}))
    with pytest.raises(DataError, match="token-to-id vocabulary.*vocab.json"):
        load_tokenizer(vocab)
    with pytest.raises(DataError, match="JSON list"):
        load_tokenizer(_write(tmp_path, "list.json", "[1, 2, 3]"))
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(_write(tmp_path, "merges.txt", "#version: 0.2\nĠ t\n"))
    binary = tmp_path / "tok.pkl"
    binary.write_bytes(b"\x80\x04\x95\xff\xfe")
    with pytest.raises(DataError, match="not a text file"):
        load_tokenizer(binary)
    with pytest.raises(DataError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")

    good = ByteTokenizer().to_dict()
    with pytest.raises(DataError, match="unknown chainrule tokenizer kind 'unigram'"):
        load_tokenizer(_write(tmp_path, "k.json", json.dumps({**good, "kind": "unigram"})))
    with pytest.raises(DataError, match="newer"):
        load_tokenizer(_write(tmp_path, "v.json", json.dumps({**good, "version": 99})))
    char = CharTokenizer.fit("abc").to_dict()
    with pytest.raises(DataError, match='"chars"'):
        load_tokenizer(_write(tmp_path, "c.json", json.dumps({**char, "chars": 5})))
    with pytest.raises(DataError, match="hf_tokenizer"):
        tokenizer_from_dict({**bpe.to_dict(), "hf_tokenizer": "{not json"})
