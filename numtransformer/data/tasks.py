"""Built-in sequence-to-sequence tasks, generated from a seed.

Each task yields (source text, target text) pairs; ``make_task`` draws
distinct sources and deals them into train / valid / test, so no source is in
two splits.  All tasks are character-level.

- copy      "3917" -> "3917"               (symbols 0-9, lengths min_len..max_len)
- reverse   "3917" -> "7193"
- sort      "3917" -> "1379"
- addition  "613+58" -> "671"              (operands of 1..n_digits digits)
- dates     "25th of June, 2009" -> "2009-06-25"  (many human formats, 1950-2049)
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .tokenizers import CharTokenizer

__all__ = ["TaskData", "make_task", "TASKS", "DATE_FORMATS", "format_date"]

_DIGITS = "0123456789"


def _symbols(rng, lo, hi, alphabet=_DIGITS):
    n = int(rng.integers(lo, hi + 1))
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))


def _copy(rng, min_len=1, max_len=10):
    s = _symbols(rng, min_len, max_len)
    return s, s


def _reverse(rng, min_len=1, max_len=20):
    s = _symbols(rng, min_len, max_len)
    return s, s[::-1]


def _sort(rng, min_len=1, max_len=10):
    s = _symbols(rng, min_len, max_len)
    return s, "".join(sorted(s))


def _addition(rng, n_digits=3):
    a_len, b_len = rng.integers(1, n_digits + 1, 2)
    a = int(rng.integers(10 ** (a_len - 1) if a_len > 1 else 0, 10**a_len))
    b = int(rng.integers(10 ** (b_len - 1) if b_len > 1 else 0, 10**b_len))
    return f"{a}+{b}", str(a + b)


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Each format maps a date to a human spelling.  Two-digit years are read as
# 1950-2049 (yy >= 50 -> 19yy), the range the task draws from, so every source
# has exactly one answer; day-first numeric dates use dots, month-first slashes.
DATE_FORMATS: dict[str, Callable[[_dt.date], str]] = {
    "ordinal_of": lambda d: f"{_ordinal(d.day)} of {_MONTHS[d.month - 1]}, {d.year}",
    "the_ordinal_of": lambda d: f"the {_ordinal(d.day)} of {_MONTHS[d.month - 1].lower()} {d.year}",
    "mon_d_yy": lambda d: f"{_MONTHS[d.month - 1][:3].lower()} {d.day} {d.year % 100:02d}",
    "dd.mm.yyyy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "d.m.yy": lambda d: f"{d.day}.{d.month}.{d.year % 100:02d}",
    "month_d_yyyy": lambda d: f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",
    "d_month_yyyy": lambda d: f"{d.day} {_MONTHS[d.month - 1]} {d.year}",
    "D_MON_YYYY": lambda d: f"{d.day} {_MONTHS[d.month - 1][:3].upper()} {d.year}",
    "mm/dd/yyyy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "m/d/yy": lambda d: f"{d.month}/{d.day}/{d.year % 100:02d}",
    "weekday_month_d_yyyy": lambda d: (f"{_DAYS[d.weekday()]}, {_MONTHS[d.month - 1]} "
                                       f"{d.day}, {d.year}"),
    "wkd_d_mon_yyyy": lambda d: (f"{_DAYS[d.weekday()][:3]} {d.day} "
                                 f"{_MONTHS[d.month - 1][:3]} {d.year}"),
    "d-mon-yyyy": lambda d: f"{d.day}-{_MONTHS[d.month - 1][:3].lower()}-{d.year}",
    "yyyy/m/d": lambda d: f"{d.year}/{d.month}/{d.day}",
    "lower_month_d_yyyy": lambda d: f"{_MONTHS[d.month - 1].lower()} {d.day} {d.year}",
}

_FIRST = _dt.date(1950, 1, 1).toordinal()
_LAST = _dt.date(2049, 12, 31).toordinal()


def format_date(date: _dt.date, fmt: str) -> str:
    return DATE_FORMATS[fmt](date)


def _dates(rng):
    date = _dt.date.fromordinal(int(rng.integers(_FIRST, _LAST + 1)))
    fmt = list(DATE_FORMATS)[int(rng.integers(len(DATE_FORMATS)))]
    return format_date(date, fmt), date.isoformat()


TASKS: dict[str, Callable] = {
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "addition": _addition,
    "dates": _dates,
}

_DEFAULT_SIZES = {  # (train, valid, test)
    "copy": (20000, 500, 1000),
    "reverse": (20000, 500, 1000),
    "sort": (20000, 500, 1000),
    "addition": (20000, 500, 1000),
    "dates": (50000, 500, 1000),
}


@dataclass
class TaskData:
    name: str
    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    src_tokenizer: CharTokenizer
    tgt_tokenizer: CharTokenizer

    @property
    def max_src_len(self) -> int:
        return max(len(s) for split in (self.train, self.valid, self.test) for s, _ in split)

    @property
    def max_tgt_len(self) -> int:
        return max(len(t) for split in (self.train, self.valid, self.test) for _, t in split)


def make_task(name: str, n_train: int | None = None, n_valid: int | None = None,
              n_test: int | None = None, seed: int = 0, **options) -> TaskData:
    """Generate a task's three splits (distinct sources, no source in two splits).

    ``options`` go to the task's generator (``min_len``/``max_len`` for copy,
    reverse and sort; ``n_digits`` for addition).  Tokenizers cover every
    symbol the generator can produce, so valid/test never meet ``<unk>``.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    d_train, d_valid, d_test = _DEFAULT_SIZES[name]
    sizes = [d_train if n_train is None else n_train, d_valid if n_valid is None else n_valid,
             d_test if n_test is None else n_test]
    if any(n < 0 for n in sizes):
        raise ValueError(f"make_task: split sizes must be >= 0, got {sizes}")
    gen = TASKS[name]
    rng = np.random.default_rng(seed)
    total = sum(sizes)
    pairs: dict[str, str] = {}
    attempts = 0
    while len(pairs) < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            raise ValueError(f"make_task: task {name!r} with options {options} has too few distinct "
                             f"examples for {total} (found {len(pairs)}); ask for fewer")
        src, tgt = gen(rng, **options)
        pairs.setdefault(src, tgt)
    items = list(pairs.items())
    train = items[: sizes[0]]
    valid = items[sizes[0]: sizes[0] + sizes[1]]
    test = items[sizes[0] + sizes[1]:]
    src_tok, tgt_tok = _task_tokenizers(name, items)
    return TaskData(name, train, valid, test, src_tok, tgt_tok)


def _task_tokenizers(name, items):
    if name == "dates":
        src_chars = set("".join(f(_dt.date(2000, 1, 1)) for f in DATE_FORMATS.values()))
        src_chars |= set(_DIGITS) | set("".join(_MONTHS + _DAYS))
        src_chars |= set("".join(_MONTHS + _DAYS).lower()) | set("".join(_MONTHS).upper())
        src_chars |= set("tsndrh")  # ordinal suffixes
        tgt_chars = set(_DIGITS) | {"-"}
    elif name == "addition":
        src_chars, tgt_chars = set(_DIGITS) | {"+"}, set(_DIGITS)
    else:
        src_chars = tgt_chars = set(_DIGITS)
    src_chars |= {c for s, _ in items for c in s}
    tgt_chars |= {c for _, t in items for c in t}
    return CharTokenizer(sorted(src_chars)), CharTokenizer(sorted(tgt_chars))
