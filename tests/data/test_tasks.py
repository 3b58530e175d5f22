import datetime as dt

import numpy as np
import pytest

from numtransformer.data import DATE_FORMATS, UNK_ID, make_task
from numtransformer.data.tasks import format_date


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "addition", "dates"])
def test_splits_are_disjoint_deterministic_and_correct(name):
    task = make_task(name, 300, 50, 50, seed=3)
    sources = [[s for s, _ in split] for split in (task.train, task.valid, task.test)]
    assert [len(s) for s in sources] == [300, 50, 50]
    all_src = sum(sources, [])
    assert len(set(all_src)) == len(all_src)
    again = make_task(name, 300, 50, 50, seed=3)
    assert again.train == task.train and again.test == task.test
    assert make_task(name, 300, 50, 50, seed=4).train != task.train
    for src, tgt in task.train + task.valid + task.test:
        if name == "copy":
            assert tgt == src
        elif name == "reverse":
            assert tgt == src[::-1]
        elif name == "sort":
            assert tgt == "".join(sorted(src))
        elif name == "addition":
            a, b = src.split("+")
            assert int(tgt) == int(a) + int(b)
        else:
            dt.date.fromisoformat(tgt)
        assert UNK_ID not in task.src_tokenizer.encode(src)
        assert UNK_ID not in task.tgt_tokenizer.encode(tgt)


def test_reverse_lengths_and_options():
    task = make_task("reverse", 500, 0, 0, seed=0)
    lengths = {len(s) for s, _ in task.train}
    assert min(lengths) == 1 and max(lengths) == 20
    short = make_task("copy", 100, 0, 0, seed=0, min_len=3, max_len=4)
    assert {len(s) for s, _ in short.train} <= {3, 4}


def test_every_date_format_spells_the_date_the_target_names():
    date = dt.date(2009, 6, 25)  # a Thursday
    spelled = {k: format_date(date, k) for k in DATE_FORMATS}
    assert spelled["ordinal_of"] == "25th of June, 2009"
    assert spelled["mon_d_yy"] == "jun 25 09"
    assert spelled["dd.mm.yyyy"] == "25.06.2009"
    assert spelled["weekday_month_d_yyyy"] == "Thursday, June 25, 2009"
    assert format_date(dt.date(2001, 3, 2), "ordinal_of") == "2nd of March, 2001"
    assert format_date(dt.date(2001, 3, 13), "the_ordinal_of") == "the 13th of march 2001"
    assert len(set(spelled.values())) == len(spelled)


def test_dates_sources_have_one_answer():
    task = make_task("dates", 2000, 0, 0, seed=1)
    seen = {}
    for s, t in task.train:
        assert seen.setdefault(s, t) == t
    years = {int(t[:4]) for _, t in task.train}
    assert min(years) >= 1950 and max(years) <= 2049


def test_too_few_distinct_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="too few distinct"):
        make_task("copy", 50, 0, 0, min_len=1, max_len=1)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("translate")


def test_tokenized_lengths_fit():
    task = make_task("addition", 200, 10, 10, seed=0, n_digits=2)
    assert task.max_src_len <= 5 and task.max_tgt_len <= 3
    assert np.all([len(task.tgt_tokenizer.encode(t)) == len(t) for _, t in task.train])
