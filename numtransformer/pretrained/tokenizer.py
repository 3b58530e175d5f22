"""The WordPiece tokenizer of BERT (uncased), reading a ``vocab.txt``.

Pipeline, in the order the reference (Hugging Face's fast BertTokenizer, the one
sentence-transformers runs) applies it:

1. Special tokens.  Literal occurrences of the special tokens ([CLS], [SEP],
   [PAD], [MASK], [UNK]) in the raw text are kept whole, case-sensitive,
   and the text between them goes through steps 2-4.
2. Normalise (BertNormalizer):
   a. clean: drop NUL, U+FFFD and control characters (Unicode category C*,
      except tab, newline and carriage return); every whitespace character
      becomes a space;
   b. CJK: put spaces around every CJK ideograph (the CJK Unified Ideographs
      blocks and their extensions, and the compatibility ideographs), so each
      becomes a word of its own;
   c. strip accents (by default whenever lower-casing): NFD decomposition,
      then drop the combining marks (category Mn);
   d. lower-case, character by character (so a final capital sigma becomes
      sigma, not final sigma, as the reference does).
3. Pre-tokenise (BertPreTokenizer): split on whitespace (dropped) and make
   every punctuation character a word of its own: ASCII punctuation
   (!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~) and every Unicode category P*.
4. WordPiece (Schuster & Nakajima, 2012; Wu et al., 2016): each word is split
   greedily from the left into the longest vocabulary entry, the pieces after
   the first carrying the "##" prefix; a word with an unmatched remainder,
   or longer than ``max_input_chars_per_word`` characters, becomes [UNK].

``encode`` wraps the pieces as [CLS] ... [SEP] and truncates the pieces so the
whole fits ``max_length``; ``encode_batch`` does that for a list of texts;
``batch_encode`` pads a batch with [PAD] (id 0 in BERT vocabularies) and returns
the attention mask (1 = real token).

The functions ``normalize`` and ``_pre_tokenize`` and the method ``_wordpiece``
are the rules, written to be read; ``_tokenize_reference`` runs them.  What
``tokenize`` and ``encode`` run is faster and gives the same pieces
(tests/pretrained/test_tokenizer_fast.py checks it on drawn text and against
the Hugging Face tokenizer), because every step before WordPiece acts on one
character at a time:

* normalisation and pre-tokenisation are one ``str.translate``: a table maps a
  character c to ``normalize(c)`` with a space on each side of every
  punctuation character in it, so ``text.translate(table).split()`` is
  ``_pre_tokenize(normalize(text))``.  The table is filled lazily (a character
  is classified the first time it is seen), one per flag combination.  The one
  step that is not per character is NFD's canonical reordering of combining
  marks; it can change the result only through a combining mark that stripping
  keeps (not of category Mn: 38 code points in Unicode 14, such as U+1D165 and
  U+302E).  The table maps those to NUL, which normalisation never outputs
  otherwise, and a text with a NUL after translation goes through the
  reference pipeline.
* the WordPiece split of a word depends on the word alone: a dictionary (at
  most ``_WORD_CACHE_SIZE`` words, emptied when full, and when the vocabulary
  object, [UNK] or ``max_input_chars_per_word`` changes) keeps each word's
  pieces and ids, so a repeated word is one look-up.
"""

from __future__ import annotations

import os
import re
import unicodedata

import numpy as np

__all__ = ["WordPieceTokenizer", "is_cjk", "is_punctuation", "normalize"]

_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def normalize(text: str, lowercase: bool = True, strip_accents: bool | None = None,
              handle_cjk: bool = True) -> str:
    """Steps 2a-2d of the module docstring."""
    chars = []
    for ch in text:
        if ch == "\0" or ch == "\ufffd" or _is_control(ch):
            continue
        if ch.isspace():
            chars.append(" ")
        elif handle_cjk and is_cjk(ch):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    text = "".join(chars)
    if lowercase if strip_accents is None else strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    if lowercase:
        text = "".join(c.lower() for c in text)
    return text


def _pre_tokenize(text: str) -> list[str]:
    """Step 3: whitespace splits (dropped), punctuation isolated."""
    words = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if is_punctuation(ch):
                if i > start:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


# -- the fast path: normalisation and pre-tokenisation as one translate table -----------------
_TABLE_SIZE = 1 << 16       # characters kept per table; a rarer one is classified each time
_WORD_CACHE_SIZE = 100_000  # words kept per tokenizer (emptied when full)


def _reorderable(ch: str) -> bool:
    """Whether NFD of ``ch`` holds a combining mark (canonical class > 0) that is not Mn:
    canonical reordering across characters could move it and stripping would keep it."""
    return any(unicodedata.combining(c) and unicodedata.category(c) != "Mn"
               for c in unicodedata.normalize("NFD", ch))


def _char_rule(ch: str, lowercase: bool, strip: bool, handle_cjk: bool) -> str:
    """What the table maps ``ch`` to: ``normalize(ch)`` with every punctuation character
    in it surrounded by spaces; NUL where the text needs the reference pipeline."""
    if strip and _reorderable(ch):
        return "\0"
    return "".join(f" {c} " if is_punctuation(c) else c
                   for c in normalize(ch, lowercase, strip, handle_cjk))


class _CharTable(dict):
    """ord(ch) -> _char_rule(ch, ...), filled on first sight (``str.translate`` looks
    characters up with ``[]``, which calls ``__missing__`` for an absent one)."""

    __slots__ = ("flags",)

    def __init__(self, lowercase: bool, strip: bool, handle_cjk: bool):
        super().__init__()
        self.flags = (lowercase, strip, handle_cjk)
        for cp in range(128):
            self[cp] = _char_rule(chr(cp), *self.flags)

    def __missing__(self, cp: int) -> str:
        rule = _char_rule(chr(cp), *self.flags)
        if len(self) < _TABLE_SIZE:
            self[cp] = rule
        return rule


_TABLES: dict = {}


def _char_table(lowercase, strip_accents, handle_cjk) -> _CharTable:
    strip = lowercase if strip_accents is None else strip_accents
    key = (bool(lowercase), bool(strip), bool(handle_cjk))
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = _CharTable(*key)
    return table


def _fast_words(text: str, lowercase, strip_accents, handle_cjk) -> list[str]:
    """``_pre_tokenize(normalize(text, ...))``, by one translate and one split."""
    spaced = text.translate(_char_table(lowercase, strip_accents, handle_cjk))
    if "\0" in spaced:  # a reorderable combining mark: NFD of the whole text decides
        return _pre_tokenize(normalize(text, lowercase, strip_accents, handle_cjk))
    return spaced.split()


class WordPieceTokenizer:
    """BERT's uncased WordPiece tokenizer (see the module docstring).

    ``vocab``: a list of tokens (id = position) or a path to ``vocab.txt``
    (one token per line).  ``tokenize(text) -> list[str]``;
    ``encode(text, max_length=None) -> list[int]`` with [CLS]/[SEP];
    ``encode_batch(texts, max_length=None) -> list[list[int]]``, one such list per text;
    ``batch_encode(texts, max_length=None) -> (ids (B, T) int64,
    attention_mask (B, T) int64)``, padded to the longest sequence.
    """

    def __init__(self, vocab, *, lowercase: bool = True, strip_accents: bool | None = None,
                 handle_cjk: bool = True, unk_token: str = "[UNK]", cls_token: str = "[CLS]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", mask_token: str = "[MASK]",
                 max_input_chars_per_word: int = 100, max_length: int | None = 512):
        if isinstance(vocab, (str, os.PathLike)):
            vocab = self._read_vocab(vocab)
        tokens = list(vocab)
        if not tokens or not all(isinstance(t, str) for t in tokens):
            raise ValueError("WordPieceTokenizer: vocab must be a non-empty list of strings")
        self.vocab = {}
        for i, tok in enumerate(tokens):
            self.vocab.setdefault(tok, i)  # a repeated line keeps its first id
        self.inv_vocab = tokens
        self.lowercase, self.strip_accents, self.handle_cjk = lowercase, strip_accents, handle_cjk
        self.unk_token, self.cls_token, self.sep_token = unk_token, cls_token, sep_token
        self.pad_token, self.mask_token = pad_token, mask_token
        specials = [cls_token, sep_token, pad_token, mask_token, unk_token]
        missing = [t for t in specials if t not in self.vocab]
        if missing:
            raise ValueError(f"WordPieceTokenizer: the vocabulary lacks the special token(s) "
                             f"{', '.join(missing)}")
        self.special_tokens = specials
        # longest first, so a special token that contains another is matched whole
        self._special_re = re.compile("|".join(
            re.escape(t) for t in sorted(specials, key=len, reverse=True)))
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.max_length = max_length
        self.unk_id, self.cls_id = self.vocab[unk_token], self.vocab[cls_token]
        self.sep_id, self.pad_id = self.vocab[sep_token], self.vocab[pad_token]
        self._caches = None  # (key, word -> pieces, word -> ids): see _word_caches

    @staticmethod
    def _read_vocab(path) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f]

    def __len__(self) -> int:
        return len(self.inv_vocab)

    # -- the pipeline ---------------------------------------------------------------------
    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:  # no vocabulary entry matches here: the whole word is unknown
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def _tokenize_reference(self, text: str) -> list[str]:
        """``tokenize`` by the readable pipeline: the rules that the fast path must match."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer: text must be a str, got {type(text).__name__}")
        out, start = [], 0
        for m in self._special_re.finditer(text):
            out.extend(self._tokenize_plain(text[start:m.start()]))
            out.append(m.group())
            start = m.end()
        out.extend(self._tokenize_plain(text[start:]))
        return out

    def _tokenize_plain(self, text: str) -> list[str]:
        text = normalize(text, self.lowercase, self.strip_accents, self.handle_cjk)
        pieces = []
        for word in _pre_tokenize(text):
            pieces.extend(self._wordpiece(word))
        return pieces

    # -- the fast path (module docstring) -------------------------------------------------
    def _word_caches(self):
        """(word -> pieces, word -> ids), emptied if what a word's split depends on changed."""
        key = (id(self.vocab), len(self.vocab), self.unk_token, self.unk_id,
               self.max_input_chars_per_word)
        caches = self._caches
        if caches is None or caches[0] != key:
            caches = self._caches = (key, {}, {})
        return caches[1], caches[2]

    def _segments(self, text: str):
        """(plain text, special token or None) pairs: the text split at special tokens."""
        if not isinstance(text, str):
            raise TypeError(f"WordPieceTokenizer: text must be a str, got {type(text).__name__}")
        if self._special_re.search(text) is None:
            return ((text, None),)
        segments, start = [], 0
        for m in self._special_re.finditer(text):
            segments.append((text[start:m.start()], m.group()))
            start = m.end()
        segments.append((text[start:], None))
        return segments

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of ``text`` (no [CLS]/[SEP], no truncation)."""
        flags = self.lowercase, self.strip_accents, self.handle_cjk
        return self._collect(text, self._word_caches()[0], flags,
                             lambda word: tuple(self._wordpiece(word)), lambda special: special)

    def _ids(self, text: str, cache: dict, flags) -> list[int]:
        """``convert_tokens_to_ids(tokenize(text))``, word ids cached in ``cache``."""
        return self._collect(
            text, cache, flags,
            lambda word: tuple(self.convert_tokens_to_ids(self._wordpiece(word))),
            lambda special: self.vocab.get(special, self.unk_id))

    def _collect(self, text: str, cache: dict, flags, of_word, of_special) -> list:
        """The values of ``text``'s words (``of_word(word)``, a tuple, cached in ``cache``)
        and special tokens (``of_special(token)``), in order."""
        out = []
        for plain, special in self._segments(text):
            for word in _fast_words(plain, *flags):
                values = cache.get(word)
                if values is None:
                    if len(cache) >= _WORD_CACHE_SIZE:
                        cache.clear()
                    values = cache[word] = of_word(word)
                out += values
            if special is not None:
                out.append(of_special(special))
        return out

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.inv_vocab[int(i)] for i in ids]

    def _check_max_length(self, max_length):
        max_length = self.max_length if max_length is None else max_length
        if max_length is not None and max_length < 2:
            raise ValueError(f"WordPieceTokenizer: max_length must be >= 2 (room for "
                             f"[CLS] and [SEP]), got {max_length}")
        return max_length

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """[CLS] + pieces + [SEP] as ids; pieces cut so the total is at most max_length."""
        max_length = self._check_max_length(max_length)
        flags = self.lowercase, self.strip_accents, self.handle_cjk
        ids = self._ids(text, self._word_caches()[1], flags)
        if max_length is not None:
            ids = ids[:max_length - 2]
        return [self.cls_id] + ids + [self.sep_id]

    def encode_batch(self, texts, max_length: int | None = None) -> list[list[int]]:
        """``[encode(t, max_length) for t in texts]``, with the per-call work done once."""
        if isinstance(texts, str):
            raise TypeError("WordPieceTokenizer.encode_batch: texts must be a list of strings, "
                            "got one str")
        max_length = self._check_max_length(max_length)
        cut = None if max_length is None else max_length - 2
        cache = self._word_caches()[1]
        flags = self.lowercase, self.strip_accents, self.handle_cjk
        cls, sep = [self.cls_id], [self.sep_id]
        return [cls + self._ids(t, cache, flags)[:cut] + sep for t in texts]

    def batch_encode(self, texts, max_length: int | None = None):
        """(ids (B, T) int64, attention_mask (B, T) int64): padded with [PAD], mask 1 = token."""
        if isinstance(texts, str):
            raise TypeError("WordPieceTokenizer.batch_encode: texts must be a list of strings, "
                            "got one str")
        texts = list(texts)
        if not texts:
            raise ValueError("WordPieceTokenizer.batch_encode: texts is empty")
        rows = self.encode_batch(texts, max_length)
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        return ids, mask

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={len(self)}, lowercase={self.lowercase}, "
                f"max_length={self.max_length})")
