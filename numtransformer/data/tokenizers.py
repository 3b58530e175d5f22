"""Character- and word-level tokenizers with a JSON-saved vocabulary.

Every vocabulary starts with the four special tokens, at fixed ids:

    <pad> = 0   <bos> = 1   <eos> = 2   <unk> = 3

so padding masks are ``ids == 0`` for every tokenizer and task.

A saved vocabulary is ``{"kind", "tokens", "sha256"}``: the digest of the
other two, so a bit flipped inside a token (which would still be valid JSON
and a valid, silently different vocabulary) is an error on loading.  Files
without the digest (written before it existed) still load.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Iterable, Sequence

from .._io import atomic_write
from ..tokens import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, SPECIALS, UNK, UNK_ID  # noqa: F401

__all__ = ["Tokenizer", "CharTokenizer", "WordTokenizer", "load_tokenizer",
           "PAD_ID", "BOS_ID", "EOS_ID", "UNK_ID", "SPECIALS"]


class Tokenizer:
    """A vocabulary (token <-> id) and a way to split text into tokens."""

    kind = "base"

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tokens[:4] != list(SPECIALS):
            tokens = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        if len(set(tokens)) != len(tokens):
            dupes = sorted(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"{type(self).__name__}: duplicate tokens in vocabulary: {dupes[:5]}")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    # subclasses define how text splits and joins
    def split(self, text: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def join(self, tokens: list[str]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None):
        """A vocabulary of the tokens of ``texts`` seen at least ``min_count`` times,
        most frequent first (ties by first appearance), at most ``max_size`` + 4."""
        counts: Counter = Counter()
        for text in texts:
            counts.update(cls.split_text(text))
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        tokens = [t for t, c in ranked if c >= min_count and t not in SPECIALS]
        if max_size is not None:
            tokens = tokens[:max_size]
        return cls(tokens)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(t, UNK_ID) for t in self.split(text)]
        return ([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else [])

    def decode(self, ids: Iterable[int], strip_special: bool = True) -> str:
        """Ids to text; stops at the first <eos> and drops <pad>/<bos> when stripping."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"{type(self).__name__}.decode: id {i} is out of range "
                                 f"[0, {len(self.itos)})")
            if strip_special:
                if i == EOS_ID:
                    break
                if i in (PAD_ID, BOS_ID):
                    continue
            out.append(self.itos[i])
        return self.join(out)

    def to_json(self) -> dict:
        return {"kind": self.kind, "tokens": self.itos}

    def save(self, path: str) -> None:
        """Write the vocabulary as JSON, atomically (``_io.atomic_write``: temp file,
        fsync, rename)."""
        obj = self.to_json()
        text = json.dumps({**obj, "sha256": _digest(obj)}, ensure_ascii=False)
        with atomic_write(path, prefix=".vocab-", suffix=".tmp") as (f, _):
            f.write(text.encode("utf-8"))


class CharTokenizer(Tokenizer):
    """One token per character."""

    kind = "char"

    @staticmethod
    def split_text(text: str) -> list[str]:
        return list(text)

    def split(self, text: str) -> list[str]:
        return list(text)

    def join(self, tokens: list[str]) -> str:
        return "".join(tokens)


class WordTokenizer(Tokenizer):
    """One token per whitespace-separated word."""

    kind = "word"

    @staticmethod
    def split_text(text: str) -> list[str]:
        return text.split()

    def split(self, text: str) -> list[str]:
        return text.split()

    def join(self, tokens: list[str]) -> str:
        return " ".join(tokens)


_KINDS = {"char": CharTokenizer, "word": WordTokenizer}


def _digest(obj: dict) -> str:
    """sha256 of the canonical JSON of kind and tokens."""
    canon = json.dumps([obj["kind"], obj["tokens"]], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("ascii")).hexdigest()


def tokenizer_from_json(obj) -> Tokenizer:
    if not isinstance(obj, dict) or obj.get("kind") not in _KINDS:
        raise ValueError(f"vocabulary: expected an object with kind in {sorted(_KINDS)}")
    unknown = sorted(set(obj) - {"kind", "tokens", "sha256"})
    if unknown:
        raise ValueError(f"vocabulary: unexpected keys {unknown}")
    tokens = obj.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError("vocabulary: 'tokens' must be a list of strings")
    if tokens[:4] != list(SPECIALS):
        raise ValueError(f"vocabulary: the first four tokens must be {list(SPECIALS)}")
    return _KINDS[obj["kind"]](tokens)


def load_tokenizer(path: str) -> Tokenizer:
    """Read a vocabulary written by ``Tokenizer.save``; a malformed or corrupt file
    is a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"vocabulary {path!r} is not valid JSON: {exc}") from exc
    try:
        tokenizer = tokenizer_from_json(obj)
    except ValueError as exc:
        raise ValueError(f"{exc} (in {path!r})") from exc
    if "sha256" in obj and obj["sha256"] != _digest(obj):
        raise ValueError(f"vocabulary {path!r} is corrupt: its tokens do not match its sha256")
    return tokenizer
