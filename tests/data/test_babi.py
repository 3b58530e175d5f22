import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer.data import PAD_ID, UNK_ID
from numtransformer.data.babi import (BABI_TASKS, COUNTS, OBJECTS, PEOPLE, PLACES, BabiExample,
                                      World, answer_question, babi_vocabulary, encode_babi,
                                      generate_example, make_babi)
from tests.helpers import seeds

TASKS = sorted(BABI_TASKS)


# --------------------------------------------------------------------------- hand-checked
def test_single_supporting_fact_by_hand():
    story = ["mary moved to the bathroom", "john went to the hallway",
             "mary journeyed to the office", "john travelled to the garden"]
    assert answer_question(story, "where is mary") == ("office", (2,))
    assert answer_question(story, "where is john") == ("garden", (3,))
    with pytest.raises(ValueError, match="does not answer"):
        answer_question(story, "where is daniel")  # never placed


def test_two_supporting_facts_by_hand():
    story = ["john went to the kitchen", "john picked up the football",
             "john went to the garden", "john dropped the football",
             "john went to the office", "sandra went to the hallway", "sandra got the milk",
             "sandra moved to the bedroom"]
    assert answer_question(story, "where is the football") == ("garden", (2, 3))
    assert answer_question(story, "where is the milk") == ("bedroom", (6, 7))
    with pytest.raises(ValueError, match="does not answer"):
        answer_question(story, "where is the apple")  # never seen


def test_three_supporting_facts_by_hand():
    story = ["mary went to the kitchen", "mary grabbed the apple", "mary went to the garden",
             "mary put down the apple", "daniel went to the garden", "daniel took the apple",
             "daniel went to the office", "daniel went to the garden"]
    # apple: kitchen -> garden -> office -> garden
    assert answer_question(story, "where was the apple before the garden") == \
        ("office", (5, 6, 7))
    assert answer_question(story, "where was the apple before the office")[0] == "garden"
    with pytest.raises(ValueError, match="does not answer"):
        answer_question(story, "where was the apple before the kitchen")  # where it started


def test_three_argument_relations_by_hand():
    story = ["mary went to the kitchen", "john went to the kitchen", "mary picked up the milk",
             "mary gave the milk to john", "john handed the milk to mary",
             "mary took the apple", "mary passed the apple to john"]
    assert answer_question(story, "who gave the milk") == ("john", (4,))
    assert answer_question(story, "who received the milk") == ("mary", (4,))
    assert answer_question(story, "what did mary give to john") == ("apple", (6,))
    assert answer_question(story, "what did john give to mary") == ("milk", (4,))
    assert answer_question(story, "who has the milk") == ("mary", (4,))
    assert answer_question(story, "who has the apple") == ("john", (6,))
    with pytest.raises(ValueError, match="does not answer"):
        answer_question(story, "who gave the football")


def test_yes_no_and_counting_by_hand():
    story = ["mary went to the kitchen", "mary took the apple", "mary got the milk",
             "mary went to the office", "mary dropped the apple", "sandra went to the office",
             "sandra grabbed the apple", "mary handed the milk to sandra"]
    assert answer_question(story, "is mary in the office") == ("yes", (3,))
    assert answer_question(story, "is mary in the kitchen") == ("no", (3,))
    assert answer_question(story, "how many objects is mary carrying") == \
        ("none", (1, 2, 4, 7))
    assert answer_question(story, "how many objects is sandra carrying")[0] == "two"
    assert answer_question(story[:3], "how many objects is mary carrying")[0] == "two"
    with pytest.raises(ValueError, match="does not answer"):
        answer_question(story, "how many objects is john carrying")  # not in the story


def test_world_refuses_impossible_actions():
    w = World()
    with pytest.raises(ValueError, match="cannot pick up"):
        w.grab("mary", "apple")  # not placed yet
    w.move("mary", "kitchen")
    with pytest.raises(ValueError, match="already in the kitchen"):
        w.move("mary", "kitchen")
    with pytest.raises(ValueError, match="does not hold"):
        w.drop("mary", "apple")
    w.grab("mary", "apple")
    w.move("john", "garden")
    with pytest.raises(ValueError, match="same place"):
        w.give("mary", "apple", "john")
    w.drop("mary", "apple")
    with pytest.raises(ValueError, match="cannot pick up"):
        w.grab("john", "apple")  # it lies in the kitchen
    with pytest.raises(ValueError, match="unknown place"):
        w.move("mary", "attic")
    with pytest.raises(ValueError, match="cannot parse sentence"):
        w.tell("mary flew to the kitchen")
    with pytest.raises(ValueError, match="cannot parse question"):
        w.answer("where is the attic")


def test_objects_move_with_their_holder():
    w = World()
    w.move("mary", "kitchen")
    w.grab("mary", "football")
    w.move("mary", "garden")
    w.move("mary", "garden" if False else "office")
    assert w.object_location("football") == "office"
    assert [p for p, _ in w.history["football"]] == ["kitchen", "garden", "office"]
    w.drop("mary", "football")
    w.move("mary", "kitchen")
    assert w.object_location("football") == "office"


# --------------------------------------------------------------------------- generator
@pytest.mark.parametrize("task", TASKS)
def test_generated_answers_are_what_the_story_says(task):
    """Re-reading the generated *text* in a fresh world gives the stored answer and
    supporting facts, so the sentences say exactly what the simulation did."""
    data = make_babi(task, 150, 20, 30, seed=5)
    for ex in data.train + data.valid + data.test:
        assert answer_question(ex.story, ex.question) == (ex.answer, ex.support)
        assert ex.support and all(0 <= i < len(ex.story) for i in ex.support) or \
            ex.answer == "none"


def test_answers_have_the_right_kind_per_task():
    kinds = {1: set(PLACES), 2: set(PLACES), 3: set(PLACES), 5: set(PEOPLE) | set(OBJECTS),
             6: {"yes", "no"}, 7: set(COUNTS)}
    for task in TASKS:
        answers = {e.answer for e in make_babi(task, 300, 0, 0, seed=1).train}
        assert answers <= kinds[task]
        assert len(answers) >= (2 if task == 6 else 3)


def test_single_supporting_fact_is_the_persons_last_move():
    for ex in make_babi(1, 200, 0, 0, seed=2).train:
        person = ex.question.split()[-1]
        moves = [i for i, s in enumerate(ex.story) if s.split()[0] == person]
        assert ex.support == (moves[-1],)
        assert ex.story[moves[-1]].split()[-1] == ex.answer


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_disjoint_and_deterministic(task):
    data = make_babi(task, 200, 30, 50, seed=3)
    assert (len(data.train), len(data.valid), len(data.test)) == (200, 30, 50)
    stories = [e.story for e in data.train + data.valid + data.test]
    assert len(set(stories)) == len(stories)
    again = make_babi(task, 200, 30, 50, seed=3)
    assert again.train == data.train and again.valid == data.valid and again.test == data.test
    assert make_babi(task, 200, 30, 50, seed=4).train != data.train


def test_tasks_with_the_same_seed_differ():
    one, six = make_babi(1, 50, 0, 0, seed=0), make_babi(6, 50, 0, 0, seed=0)
    assert [e.story for e in one.train] != [e.story for e in six.train]


SHORTEST = {1: 1, 2: 2, 3: 3, 5: 4, 6: 1, 7: 1}


@given(seed=seeds, task=st.sampled_from(TASKS), lo=st.integers(0, 5), extra=st.integers(0, 6))
def test_story_lengths_follow_the_options(seed, task, lo, extra):
    lo += SHORTEST[task]
    ex = generate_example(task, np.random.default_rng(seed), min_sentences=lo,
                          max_sentences=lo + extra)
    assert lo <= len(ex.story) <= lo + extra
    assert ex.answer == answer_question(ex.story, ex.question)[0]


def test_generator_is_deterministic_given_a_seed():
    a = [generate_example(3, np.random.default_rng(9)) for _ in range(3)]
    b = [generate_example(3, np.random.default_rng(9)) for _ in range(3)]
    assert a == b


def test_vocabulary_covers_every_word():
    tok = babi_vocabulary()
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    for task in TASKS:
        for ex in make_babi(task, 100, 0, 0, seed=0).train:
            for text in ex.story + (ex.question, ex.answer):
                assert UNK_ID not in tok.encode(text)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task 4"):
        make_babi(4)
    with pytest.raises(ValueError, match="unknown task"):
        generate_example("1", 0)
    with pytest.raises(ValueError, match="split sizes"):
        make_babi(1, -1)
    with pytest.raises(TypeError, match="unexpected options"):
        make_babi(1, 10, 0, 0, n_people=3)
    with pytest.raises(ValueError, match="min_sentences <= max_sentences"):
        generate_example(1, 0, min_sentences=5, max_sentences=2)
    with pytest.raises(ValueError, match="task 3 needs 3 <= min_sentences"):
        generate_example(3, 0, min_sentences=2, max_sentences=2)
    with pytest.raises(ValueError, match="too few distinct stories"):
        make_babi(1, 100, 0, 0, min_sentences=1, max_sentences=1)  # 96 exist


# --------------------------------------------------------------------------- padding
def test_encode_pads_stories_and_questions_with_masks():
    tok = babi_vocabulary()
    exs = [BabiExample(("mary went to the kitchen", "john picked up the milk"),
                       "where is mary", "kitchen", (0,)),
           BabiExample(("sandra moved to the garden",), "is sandra in the garden", "yes", (0,))]
    b = encode_babi(exs, tok)
    assert b.story.shape == (2, 2, 5) and b.query.shape == (2, 5) and b.story.dtype == np.int64
    assert tok.decode(b.story[0, 1]) == "john picked up the milk"
    assert tok.decode(b.story[1, 0]) == "sandra moved to the garden"
    assert np.array_equal(b.story_pad_mask, [[False, False], [False, True]])
    assert np.all(b.story[1, 1] == PAD_ID)
    assert np.array_equal(b.query_pad_mask[0], [False, False, False, True, True])
    assert np.array_equal(b.word_pad_mask[0, 0], [False] * 5)
    assert tok.decode(b.answer) == "kitchen yes"
    assert np.array_equal(b.support_mask, [[True, False], [True, False]])
    sub = b.take([1])  # padding the example does not need is cut
    assert sub.story.shape == (1, 1, 5) and sub.query.shape == (1, 5)
    assert b.take([0]).query.shape == (1, 3)


def test_encode_keeps_the_most_recent_memories():
    story = tuple(f"mary went to the {p}" for p in PLACES)
    ex = BabiExample(story, "where is mary", PLACES[-1], (5,))
    b = encode_babi([ex], memory_size=4)
    tok = babi_vocabulary()
    assert b.story.shape[1] == 4
    assert tok.decode(b.story[0, 0]) == story[2] and tok.decode(b.story[0, 3]) == story[5]
    assert np.array_equal(b.support_mask[0], [False, False, False, True])


def test_encode_errors():
    ex = BabiExample(("mary went to the moon",), "where is mary", "moon", (0,))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        encode_babi([ex])
    with pytest.raises(ValueError, match="memory_size"):
        encode_babi([ex], memory_size=0)
    with pytest.raises(ValueError, match="no examples"):
        encode_babi([])
    with pytest.raises(TypeError, match="expected BabiExample"):
        encode_babi([("story", "q", "a")])
