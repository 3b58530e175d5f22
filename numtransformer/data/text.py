"""Plain text for character-level language modelling.

``text:NAME`` is a text shipped with the package (``hamlet``: Shakespeare's
*Hamlet*, public domain; see ``data/texts/README.md``), ``text:PATH`` any
UTF-8 text file.  Nothing is downloaded.

The text is cut, in order, into train (the first 90% of its characters),
valid (the next 5%) and test (the last 5%): contiguous pieces, so no passage
is seen in training and scored in evaluation.  (A random split of lines would
leak: neighbouring lines of a play share names and phrases.)  The vocabulary
is every character of the whole text, so no split has unknown characters.

Training batches are windows of ``context + 1`` characters at offsets drawn
uniformly from the train split: input ``x = c[i : i+T]``, target
``y = c[i+1 : i+T+1]``.  The offsets of batch ``k`` come from the generator
seeded ``(seed, k)``, so the iterator's whole state is ``k`` and a resumed run
sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .._io import decode_text
from .tokenizers import CharTokenizer

__all__ = ["BUILTIN_TEXTS", "is_text_task", "load_text", "TextTask", "make_text_task",
           "LMBatch", "WindowIterator", "eval_windows"]

_HERE = os.path.dirname(os.path.abspath(__file__))
BUILTIN_TEXTS = {"hamlet": os.path.join(_HERE, "texts", "hamlet.txt")}
SPLIT = (0.90, 0.05, 0.05)  # train, valid, test fractions of the characters


def is_text_task(name: str) -> bool:
    return name.startswith("text:")


def load_text(name: str) -> str:
    """The text a ``text:NAME`` / ``text:PATH`` task names (ValueError when missing)."""
    if not is_text_task(name):
        raise ValueError(f"{name!r} is not a text task (expected text:NAME or text:PATH)")
    what = name[len("text:"):]
    path = BUILTIN_TEXTS.get(what, what)
    if not what:
        raise ValueError(f"text task {name!r}: give a built-in text "
                         f"({', '.join(sorted(BUILTIN_TEXTS))}) or a file path after 'text:'")
    if not os.path.isfile(path):
        raise ValueError(f"text {what!r} is neither a built-in text "
                         f"({', '.join(sorted(BUILTIN_TEXTS))}) nor an existing file")
    with open(path, "rb") as f:  # a byte that is not UTF-8: named by file and line
        return decode_text(f.read(), f"text {path!r}")


@dataclass
class TextTask:
    """A text cut into contiguous train / valid / test pieces, with its characters."""

    name: str
    train: str
    valid: str
    test: str
    tokenizer: CharTokenizer

    def ids(self, split: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(getattr(self, split)), dtype=np.int64)


def make_text_task(name: str, context: int) -> TextTask:
    """Load and split the text; each split must hold at least one window of
    ``context + 1`` characters."""
    text = load_text(name)
    n = len(text)
    a = int(n * SPLIT[0])
    b = a + int(n * SPLIT[1])
    parts = text[:a], text[a:b], text[b:]
    for split, part in zip(("train", "valid", "test"), parts):
        if len(part) < context + 1:
            raise ValueError(f"text {name!r} has {n} characters: its {split} split "
                             f"({len(part)}) is shorter than one window of context + 1 = "
                             f"{context + 1}; use a longer text or a smaller --context")
    tokenizer = CharTokenizer.build([text])
    return TextTask(name, *parts, tokenizer=tokenizer)


@dataclass
class LMBatch:
    """Windows of a text: ``ids`` (B, T) input characters, ``targets`` (B, T) the
    next character of each position."""

    ids: np.ndarray
    targets: np.ndarray

    @property
    def n_tgt_tokens(self) -> int:
        return int(self.targets.size)


class WindowIterator:
    """Endless batches of ``batch_size`` random windows (see the module docstring)."""

    def __init__(self, ids: np.ndarray, batch_size: int, context: int, seed: int = 0):
        ids = np.asarray(ids, dtype=np.int64)
        if batch_size < 1 or context < 1:
            raise ValueError(f"WindowIterator: batch_size and context must be >= 1, got "
                             f"{batch_size} and {context}")
        if ids.ndim != 1 or ids.size < context + 1:
            raise ValueError(f"WindowIterator: need at least context + 1 = {context + 1} ids, "
                             f"got {ids.size}")
        self.ids, self.batch_size, self.context, self.seed = ids, batch_size, context, seed
        self.index = 0
        self._offsets = np.arange(context + 1)

    def __iter__(self):
        return self

    def __next__(self) -> LMBatch:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        starts = rng.integers(0, self.ids.size - self.context, size=self.batch_size)
        windows = self.ids[starts[:, None] + self._offsets]  # (B, T + 1), one gather
        return LMBatch(ids=windows[:, :-1], targets=windows[:, 1:])

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state) -> None:
        index = state["index"]
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"WindowIterator: bad position index={index!r}")
        self.index = index


def eval_windows(ids: np.ndarray, context: int, limit: int | None = None):
    """Consecutive non-overlapping windows covering ``ids`` for evaluation:
    (inputs, targets) pairs of 1-D arrays, the last one possibly shorter; every
    character after the first is predicted exactly once (each window from a
    fresh context, so the first characters of a window see little history)."""
    out = []
    for start in range(0, ids.size - 1, context):
        stop = min(start + context, ids.size - 1)
        out.append((ids[start:stop], ids[start + 1:stop + 1]))
        if limit is not None and len(out) >= limit:
            break
    return out
