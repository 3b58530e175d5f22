import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
)

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(corpus=st.lists(texts, min_size=1, max_size=5), data=st.data())
def test_char_round_trip(corpus, data):
    tok = CharTokenizer.build(corpus)
    text = data.draw(st.sampled_from(corpus))
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert tok.decode(ids) == text


@given(words=st.lists(st.text(alphabet="abcxyz<>", min_size=1, max_size=6), min_size=1,
                      max_size=8))
def test_word_round_trip(words):
    text = " ".join(words)
    tok = WordTokenizer.build([text])
    assert tok.decode(tok.encode(text)) == text


def test_specials_have_fixed_ids_and_unknowns_map_to_unk():
    tok = CharTokenizer.build(["abc"])
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert tok.encode("az") == [tok.stoi["a"], UNK_ID]


def test_decode_stops_at_eos_and_strips_padding():
    tok = CharTokenizer.build(["ab"])
    a, b = tok.stoi["a"], tok.stoi["b"]
    assert tok.decode([BOS_ID, a, b, EOS_ID, a, PAD_ID]) == "ab"
    assert tok.decode([a, EOS_ID, b], strip_special=False) == "a<eos>b"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([99])


def test_build_orders_by_frequency_and_respects_limits():
    tok = WordTokenizer.build(["b a b c b a"], min_count=2)
    assert tok.itos[4:] == ["b", "a"]
    assert WordTokenizer.build(["b a b c b a"], max_size=1).itos[4:] == ["b"]


def test_save_load_round_trip(tmp_path):
    tok = WordTokenizer.build(["hello world", "hello there"])
    path = tmp_path / "vocab.json"
    tok.save(str(path))
    loaded = load_tokenizer(str(path))
    assert type(loaded) is WordTokenizer and loaded.itos == tok.itos
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"kind": "bpe", "tokens": []}), "kind"),
    (json.dumps({"kind": "char", "tokens": "abc"}), "list of strings"),
    (json.dumps({"kind": "char", "tokens": ["a", "<pad>"]}), "first four"),
    (json.dumps({"kind": "char", "tokens": ["<pad>", "<bos>", "<eos>", "<unk>", "a", "a"]}),
     "duplicate"),
])
def test_malformed_vocabularies_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_tokenizer(str(path))
