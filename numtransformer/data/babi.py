"""bAbI-style question answering, generated from a simulated world.

The bAbI tasks (Weston et al., 2015, "Towards AI-Complete Question Answering")
are short stories about people moving between places and handling objects,
each followed by a question whose one-word answer the story determines.  This
module does not ship the original files: it simulates a small world of the same
kind and tells stories about it, so every answer is computed from the world's
state, never guessed, and any number of stories can be drawn from a seed.

The world: four people, six places, three objects.  Actions (each one sentence,
its verb drawn from a few synonyms; words lower-case, no punctuation):

    move   "mary went to the kitchen"          the person is now there; what she
                                               carries goes with her
    grab   "mary picked up the football"       needs a placed person, and the object
                                               lying where she is (or not seen yet)
    drop   "mary dropped the football"         the object now lies where she is
    give   "mary gave the football to john"    needs the giver to hold it and both to
                                               be in the same (known) place

Tasks, numbered as in bAbI (only these six are implemented):

    1  single supporting fact      moves            "where is mary"          -> place
    2  two supporting facts        moves, grab/drop "where is the football"  -> place
    3  three supporting facts      moves, grab/drop "where was the football before
                                                     the kitchen"           -> place
    5  three argument relations    moves, grab/drop/give (who-has-what):
                                   "who has the milk", "who gave the milk",
                                   "who received the milk", "what did mary give to
                                   john"                                    -> person/object
    6  yes/no questions            moves (+ grab/drop as distractors)
                                                    "is mary in the kitchen" -> yes/no
    7  counting                    moves, grab/drop/give
                                                    "how many objects is mary carrying"
                                                                             -> none/one/two/three

Conventions for the answers: "where was the O before the L" answers the place
the object was in just before it last came to L (its location history
collapses repeats; the generator asks with L = the object's current place); "who gave / who received /
what did X give to Y" refer to the most recent such giving.  Each example also
lists its supporting facts (the sentences a reader needs), used to show which
sentences the model's attention read.

One question per story.  ``make_babi`` draws distinct stories and deals them
into train / valid / test, so no story is in two splits.  ``encode_babi`` pads
a list of examples into arrays: stories (B, N, J) with sentences left-aligned
in story order, questions (B, Jq), masks True at padding (PAD id 0).

``answer_question(story, question)`` re-reads a story's *text* in a fresh world
and answers the question: an oracle for hand-written stories, and a check that
the generated text says what the simulation did.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .tokenizers import PAD_ID, UNK_ID, WordTokenizer

__all__ = ["BABI_TASKS", "PEOPLE", "PLACES", "OBJECTS", "BabiExample", "BabiData", "BabiBatch",
           "World", "generate_example", "make_babi", "babi_vocabulary", "encode_babi",
           "answer_question"]

PEOPLE = ("mary", "john", "daniel", "sandra")
PLACES = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "apple", "milk")
MOVE_VERBS = ("moved", "went", "journeyed", "travelled")
GRAB_VERBS = ("picked up", "got", "grabbed", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
GIVE_VERBS = ("gave", "handed", "passed")
COUNTS = ("none", "one", "two", "three")

BABI_TASKS = {
    1: "single supporting fact",
    2: "two supporting facts",
    3: "three supporting facts",
    5: "three argument relations",
    6: "yes/no questions",
    7: "counting",
}


@dataclass(frozen=True)
class BabiExample:
    """One story and its question.  ``support``: indices into ``story``."""

    story: tuple[str, ...]  # sentences in story order
    question: str
    answer: str  # one word
    support: tuple[int, ...]  # the supporting facts, ascending


# ---------------------------------------------------------------------------------------
class World:
    """The state of the world, changed by actions that each add one sentence.

    ``location[p]`` is None until p first moves (the story has not placed her).
    An object is held (``holder[o]``) or lies at ``lying_at[o]`` (None: not yet
    seen; it can then be picked up anywhere).  ``history[o]`` lists the places
    the object has been, repeats collapsed, each with the sentences that put it
    there.  Actions raise ValueError when the world does not allow them.
    """

    def __init__(self):
        self.sentences: list[str] = []
        self.location: dict[str, str | None] = {p: None for p in PEOPLE}
        self.last_move: dict[str, int | None] = {p: None for p in PEOPLE}
        self.visited: dict[str, list[str]] = {p: [] for p in PEOPLE}
        self.mentioned: set[str] = set()
        self.holder: dict[str, str | None] = {o: None for o in OBJECTS}
        self.acquired: dict[str, int | None] = {o: None for o in OBJECTS}  # grab/give that gave it
        self.lying_at: dict[str, str | None] = {o: None for o in OBJECTS}
        self.lying_support: dict[str, tuple[int, ...]] = {o: () for o in OBJECTS}
        self.history: dict[str, list[tuple[str, tuple[int, ...]]]] = {o: [] for o in OBJECTS}
        self.gives: list[tuple[str, str, str, int]] = []  # (giver, object, receiver, sentence)
        self.holdings_events: dict[str, list[int]] = {p: [] for p in PEOPLE}

    # -- state queries ------------------------------------------------------------------
    def carrying(self, person: str) -> list[str]:
        return [o for o in OBJECTS if self.holder[o] == person]

    def object_location(self, obj: str) -> str | None:
        h = self.holder[obj]
        return self.location[h] if h is not None else self.lying_at[obj]

    def _place_object(self, obj: str, place: str | None, support: tuple[int, ...]) -> None:
        hist = self.history[obj]
        if place is not None and (not hist or hist[-1][0] != place):
            hist.append((place, tuple(sorted(set(support)))))

    def _add(self, sentence: str, *people: str) -> int:
        self.sentences.append(sentence)
        self.mentioned.update(people)
        return len(self.sentences) - 1

    # -- actions -------------------------------------------------------------------------
    def can_move(self, person, place) -> bool:
        return self.location[person] != place

    def move(self, person: str, place: str, verb: str = MOVE_VERBS[0]) -> str:
        _check_word("person", person, PEOPLE)
        _check_word("place", place, PLACES)
        if not self.can_move(person, place):
            raise ValueError(f"World: {person} is already in the {place}")
        i = self._add(f"{person} {verb} to the {place}", person)
        self.location[person], self.last_move[person] = place, i
        self.visited[person].append(place)
        for o in self.carrying(person):
            self._place_object(o, place, (self.acquired[o], i))
        return self.sentences[i]

    def can_grab(self, person, obj) -> bool:
        here = self.location[person]
        return (here is not None and self.holder[obj] is None
                and self.lying_at[obj] in (None, here))

    def grab(self, person: str, obj: str, verb: str = GRAB_VERBS[0]) -> str:
        _check_word("person", person, PEOPLE)
        _check_word("object", obj, OBJECTS)
        if not self.can_grab(person, obj):
            raise ValueError(f"World: {person} cannot pick up the {obj} (not placed, or the "
                             f"{obj} is not where {person} is)")
        i = self._add(f"{person} {verb} the {obj}", person)
        self.holder[obj], self.acquired[obj], self.lying_at[obj] = person, i, None
        self.holdings_events[person].append(i)
        self._place_object(obj, self.location[person], (self.last_move[person], i))
        return self.sentences[i]

    def can_drop(self, person, obj) -> bool:
        return self.holder[obj] == person

    def drop(self, person: str, obj: str, verb: str = DROP_VERBS[0]) -> str:
        _check_word("person", person, PEOPLE)
        _check_word("object", obj, OBJECTS)
        if not self.can_drop(person, obj):
            raise ValueError(f"World: {person} does not hold the {obj}")
        i = self._add(f"{person} {verb} the {obj}", person)
        self.holder[obj], self.lying_at[obj] = None, self.location[person]
        self.lying_support[obj] = (self.last_move[person], i)
        self.holdings_events[person].append(i)
        return self.sentences[i]

    def can_give(self, giver, obj, receiver) -> bool:
        return (giver != receiver and self.holder[obj] == giver
                and self.location[giver] is not None
                and self.location[giver] == self.location[receiver])

    def give(self, giver: str, obj: str, receiver: str, verb: str = GIVE_VERBS[0]) -> str:
        _check_word("person", giver, PEOPLE)
        _check_word("object", obj, OBJECTS)
        _check_word("person", receiver, PEOPLE)
        if not self.can_give(giver, obj, receiver):
            raise ValueError(f"World: {giver} cannot give the {obj} to {receiver} (must hold "
                             f"it and be in the same place)")
        i = self._add(f"{giver} {verb} the {obj} to {receiver}", giver, receiver)
        self.holder[obj], self.acquired[obj] = receiver, i
        self.gives.append((giver, obj, receiver, i))
        self.holdings_events[giver].append(i)
        self.holdings_events[receiver].append(i)
        return self.sentences[i]

    # -- reading a story back ------------------------------------------------------------
    def tell(self, sentence: str) -> None:
        """Parse one sentence and perform its action (ValueError if it parses to none)."""
        w = sentence.split()
        if len(w) >= 2 and w[0] in PEOPLE:
            rest = " ".join(w[1:])
            for verb in MOVE_VERBS:
                if rest.startswith(verb + " to the ") and len(w) == len(verb.split()) + 4:
                    self.move(w[0], w[-1], verb)
                    return
            for verb in GIVE_VERBS:
                if (rest.startswith(verb + " the ") and len(w) == len(verb.split()) + 5
                        and w[-2] == "to"):
                    self.give(w[0], w[-3], w[-1], verb)
                    return
            for verbs, action in ((GRAB_VERBS, self.grab), (DROP_VERBS, self.drop)):
                for verb in verbs:
                    if rest.startswith(verb + " the ") and len(w) == len(verb.split()) + 3:
                        action(w[0], w[-1], verb)
                        return
        raise ValueError(f"World: cannot parse sentence {sentence!r}")

    # -- questions -----------------------------------------------------------------------
    def answer(self, question: str) -> tuple[str, tuple[int, ...]]:
        """(answer, supporting sentence indices); ValueError if the story cannot answer."""
        w = question.split()
        kind, args = _parse_question(w)
        result = getattr(self, "_q_" + kind)(*args)
        if result is None:
            raise ValueError(f"World: the story does not answer {question!r}")
        ans, support = result
        return ans, tuple(sorted({int(s) for s in support if s is not None}))

    def _q_where_person(self, p):
        if self.location[p] is None:
            return None
        return self.location[p], (self.last_move[p],)

    def _q_where_object(self, o):
        place = self.object_location(o)
        if place is None:
            return None
        h = self.holder[o]
        support = (self.acquired[o], self.last_move[h]) if h else self.lying_support[o]
        return place, support

    def _q_where_before(self, o, place):
        hist = self.history[o]
        last = max((i for i in range(1, len(hist)) if hist[i][0] == place), default=None)
        if last is None:  # never came to that place from another one
            return None
        return hist[last - 1][0], hist[last - 1][1] + hist[last][1]

    def _q_is_in(self, p, place):
        if self.location[p] is None:
            return None
        return ("yes" if self.location[p] == place else "no"), (self.last_move[p],)

    def _q_count(self, p):
        if p not in self.mentioned:
            return None
        n = len(self.carrying(p))
        return COUNTS[n], tuple(self.holdings_events[p])

    def _q_who_has(self, o):
        if self.holder[o] is None:
            return None
        return self.holder[o], (self.acquired[o],)

    def _last_give(self, match):
        for g in reversed(self.gives):
            if match(g):
                return g
        return None

    def _q_who_gave(self, o):
        g = self._last_give(lambda g: g[1] == o)
        return None if g is None else (g[0], (g[3],))

    def _q_who_received(self, o):
        g = self._last_give(lambda g: g[1] == o)
        return None if g is None else (g[2], (g[3],))

    def _q_what_give(self, giver, receiver):
        g = self._last_give(lambda g: g[0] == giver and g[2] == receiver)
        return None if g is None else (g[1], (g[3],))


def _check_word(kind, word, allowed):
    if word not in allowed:
        raise ValueError(f"World: unknown {kind} {word!r}; expected one of {list(allowed)}")


_QUESTION_FORMS = {  # kind: the question's words, with "{}" where an argument goes
    "where_person": "where is {}",
    "where_object": "where is the {}",
    "where_before": "where was the {} before the {}",
    "is_in": "is {} in the {}",
    "count": "how many objects is {} carrying",
    "who_has": "who has the {}",
    "who_gave": "who gave the {}",
    "who_received": "who received the {}",
    "what_give": "what did {} give to {}",
}
_ARG_KINDS = {  # the word list each argument comes from
    "where_person": (PEOPLE,), "where_object": (OBJECTS,), "where_before": (OBJECTS, PLACES),
    "is_in": (PEOPLE, PLACES), "count": (PEOPLE,), "who_has": (OBJECTS,),
    "who_gave": (OBJECTS,), "who_received": (OBJECTS,), "what_give": (PEOPLE, PEOPLE),
}


def _parse_question(words: list[str]) -> tuple[str, tuple[str, ...]]:
    for kind, form in _QUESTION_FORMS.items():
        pattern = form.split()
        if len(pattern) != len(words):
            continue
        args = [w for p, w in zip(pattern, words) if p == "{}"]
        fixed = all(p == w for p, w in zip(pattern, words) if p != "{}")
        if fixed and all(a in allowed for a, allowed in zip(args, _ARG_KINDS[kind])):
            return kind, tuple(args)
    raise ValueError(f"World: cannot parse question {' '.join(words)!r}")


def answer_question(story: Sequence[str], question: str) -> tuple[str, tuple[int, ...]]:
    """Replay ``story`` (a list of sentences) in a fresh world and answer ``question``.
    Returns (answer, supporting sentence indices)."""
    world = World()
    for sentence in story:
        world.tell(sentence)
    return world.answer(question)


# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TaskSpec:
    actions: dict  # action kind -> weight
    questions: tuple  # question kinds the task asks
    lengths: tuple  # default (min, max) number of sentences
    shortest: int  # the fewest sentences that can answer every question kind


_SPECS = {
    1: _TaskSpec({"move": 1.0}, ("where_person",), (2, 10), 1),
    2: _TaskSpec({"move": 0.45, "grab": 0.35, "drop": 0.2}, ("where_object",), (4, 20), 2),
    3: _TaskSpec({"move": 0.5, "grab": 0.3, "drop": 0.2}, ("where_before",), (6, 30), 3),
    5: _TaskSpec({"move": 0.3, "grab": 0.25, "drop": 0.1, "give": 0.35},
                 ("who_has", "who_gave", "who_received", "what_give"), (4, 20), 4),
    6: _TaskSpec({"move": 0.8, "grab": 0.1, "drop": 0.1}, ("is_in",), (2, 12), 1),
    7: _TaskSpec({"move": 0.3, "grab": 0.35, "drop": 0.2, "give": 0.15}, ("count",), (3, 15), 1),
}


def _check_task(task) -> int:
    if isinstance(task, bool) or not isinstance(task, (int, np.integer)) or int(task) not in _SPECS:
        raise ValueError(f"bAbI: unknown task {task!r}; expected one of {sorted(_SPECS)} "
                         f"({', '.join(f'{k}: {v}' for k, v in BABI_TASKS.items())})")
    return int(task)


def _candidates(world: World, kind: str) -> list[tuple]:
    if kind == "move":
        return [(p, l) for p in PEOPLE for l in PLACES if world.can_move(p, l)]
    if kind == "grab":
        return [(p, o) for p in PEOPLE for o in OBJECTS if world.can_grab(p, o)]
    if kind == "drop":
        return [(world.holder[o], o) for o in OBJECTS if world.holder[o] is not None]
    return [(world.holder[o], o, r) for o in OBJECTS if world.holder[o] is not None
            for r in PEOPLE if world.can_give(world.holder[o], o, r)]


_VERBS = {"move": MOVE_VERBS, "grab": GRAB_VERBS, "drop": DROP_VERBS, "give": GIVE_VERBS}


def _act(world: World, rng: np.random.Generator, spec: _TaskSpec) -> None:
    options = [(k, _candidates(world, k)) for k in spec.actions]
    options = [(k, c) for k, c in options if c]
    weights = list(itertools.accumulate(spec.actions[k] for k, _ in options))
    pick = bisect.bisect_right(weights, rng.random() * weights[-1])
    kind, cands = options[min(pick, len(options) - 1)]
    args = cands[int(rng.integers(len(cands)))]
    verbs = _VERBS[kind]
    getattr(world, kind)(*args, verb=verbs[int(rng.integers(len(verbs)))])


def _questions(world: World, kind: str, rng: np.random.Generator) -> list[str]:
    """The questions of this kind the story can answer."""
    form = _QUESTION_FORMS[kind]
    if kind == "where_person":
        return [form.format(p) for p in PEOPLE if world.location[p] is not None]
    if kind == "where_object":
        return [form.format(o) for o in OBJECTS if world.object_location(o) is not None]
    if kind == "where_before":
        return [form.format(o, world.history[o][-1][0]) for o in OBJECTS
                if len(world.history[o]) >= 2]
    if kind == "is_in":
        out = []
        for p in PEOPLE:
            here = world.location[p]
            if here is None:
                continue
            if rng.random() < 0.5:
                out.append(form.format(p, here))
                continue
            # "no": half the time a place she has been before (harder), else any other
            past = sorted(set(world.visited[p]) - {here})
            others = past if past and rng.random() < 0.5 else [l for l in PLACES if l != here]
            out.append(form.format(p, others[int(rng.integers(len(others)))]))
        return out
    if kind == "count":  # about someone who has handled an object, when anyone has
        handled = [p for p in PEOPLE if world.holdings_events[p]]
        return [form.format(p) for p in (handled or [p for p in PEOPLE if p in world.mentioned])]
    if kind == "who_has":
        return [form.format(o) for o in OBJECTS if world.holder[o] is not None]
    if kind in ("who_gave", "who_received"):
        return [form.format(o) for o in sorted({g[1] for g in world.gives})]
    return [form.format(g, r) for g, r in sorted({(g[0], g[2]) for g in world.gives})]


def generate_example(task: int, rng, *, min_sentences: int | None = None,
                     max_sentences: int | None = None) -> BabiExample:
    """Tell one random story of ``task`` and ask one question it answers.

    The story has between ``min_sentences`` and ``max_sentences`` sentences
    (task defaults: 1: 2-10, 2: 4-20, 3: 6-30, 5: 4-20, 6: 2-12, 7: 3-15;
    the least allowed: 1, 2, 3, 4, 1, 1).
    The question's kind is drawn first (task 5 asks four kinds equally often);
    a story that leaves no question of that kind answerable is retold.
    """
    task = _check_task(task)
    spec = _SPECS[task]
    lo = spec.lengths[0] if min_sentences is None else int(min_sentences)
    hi = spec.lengths[1] if max_sentences is None else int(max_sentences)
    if not spec.shortest <= lo <= hi:
        raise ValueError(f"bAbI: task {task} needs {spec.shortest} <= min_sentences <= "
                         f"max_sentences, got {lo}, {hi}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    for _ in range(1000):
        world = World()
        for _ in range(int(rng.integers(lo, hi + 1))):
            _act(world, rng, spec)
        # the kind first, then a question of it: every kind is asked equally often
        kind = spec.questions[int(rng.integers(len(spec.questions)))]
        qs = _questions(world, kind, rng)
        if not qs:
            continue
        question = qs[int(rng.integers(len(qs)))]
        answer, support = world.answer(question)
        return BabiExample(tuple(world.sentences), question, answer, support)
    raise ValueError(f"bAbI: task {task} found no answerable story with {lo}-{hi} sentences")


# ---------------------------------------------------------------------------------------
def babi_vocabulary() -> WordTokenizer:
    """Every word any task can produce (the same ids for all tasks, so a model can
    be trained on several jointly), after the four special tokens."""
    words = set(PEOPLE) | set(PLACES) | set(OBJECTS) | set(COUNTS) | {"yes", "no", "to", "the"}
    for phrase in MOVE_VERBS + GRAB_VERBS + DROP_VERBS + GIVE_VERBS:
        words.update(phrase.split())
    for form in _QUESTION_FORMS.values():
        words.update(w for w in form.split() if w != "{}")
    return WordTokenizer(sorted(words))


@dataclass
class BabiData:
    task: int
    train: list[BabiExample]
    valid: list[BabiExample]
    test: list[BabiExample]
    tokenizer: WordTokenizer = field(default_factory=babi_vocabulary)

    @property
    def answers(self) -> list[str]:
        """The answer words that occur in the splits, sorted."""
        return sorted({e.answer for split in (self.train, self.valid, self.test) for e in split})


def make_babi(task: int, n_train: int = 1000, n_valid: int = 100, n_test: int = 1000,
              seed: int = 0, **options) -> BabiData:
    """Draw ``n_train + n_valid + n_test`` distinct stories of ``task`` and deal them
    into three splits (no story in two splits; a story is its sentence sequence).

    ``seed`` and ``task`` together seed the generator, so tasks drawn with the
    same seed differ.  ``options``: ``min_sentences``, ``max_sentences``.
    """
    task = _check_task(task)
    sizes = [n_train, n_valid, n_test]
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in sizes):
        raise ValueError(f"make_babi: split sizes must be ints >= 0, got {sizes}")
    unknown = set(options) - {"min_sentences", "max_sentences"}
    if unknown:
        raise TypeError(f"make_babi: unexpected options {sorted(unknown)}; expected "
                        f"min_sentences, max_sentences")
    rng = np.random.default_rng([int(seed), task])
    total = sum(sizes)
    seen: dict[tuple, BabiExample] = {}
    attempts = 0
    while len(seen) < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            raise ValueError(f"make_babi: task {task} with options {options} has too few distinct "
                             f"stories for {total} (found {len(seen)}); ask for fewer")
        ex = generate_example(task, rng, **options)
        seen.setdefault(ex.story, ex)
    items = list(seen.values())
    a, b = sizes[0], sizes[0] + sizes[1]
    return BabiData(task, items[:a], items[a:b], items[b:])


# ---------------------------------------------------------------------------------------
@dataclass
class BabiBatch:
    """Padded arrays of bAbI examples (masks True = padding, PyTorch's meaning).

    story (B, N, J) int64: sentence i of example b in row [b, i], left-aligned in
    story order (the most recent last), words right-padded with PAD = 0.
    story_pad_mask (B, N): True where slot i holds no sentence.
    query (B, Jq), query_pad_mask (B, Jq); answer (B,) word ids;
    support_mask (B, N): True where slot i holds a supporting fact.
    """

    story: np.ndarray
    story_pad_mask: np.ndarray
    query: np.ndarray
    query_pad_mask: np.ndarray
    answer: np.ndarray
    support_mask: np.ndarray

    def __len__(self) -> int:
        return self.story.shape[0]

    @property
    def word_pad_mask(self) -> np.ndarray:
        """(B, N, J) True at padded word positions."""
        return self.story == PAD_ID

    def take(self, rows) -> "BabiBatch":
        """The examples at ``rows``, with the padding they do not need cut off."""
        rows = np.asarray(rows)
        story_mask = self.story_pad_mask[rows]
        n = int((~story_mask).sum(axis=1).max(initial=0))
        n = max(n, 1)
        story = self.story[rows, :n]
        j = max(1, int((story != PAD_ID).any(axis=(0, 1)).nonzero()[0].max(initial=0)) + 1)
        query = self.query[rows]
        jq = max(1, int((query != PAD_ID).any(axis=0).nonzero()[0].max(initial=0)) + 1)
        return BabiBatch(story[:, :, :j], story_mask[:, :n], query[:, :jq],
                         self.query_pad_mask[rows, :jq], self.answer[rows],
                         self.support_mask[rows, :n])


def encode_babi(examples: Sequence[BabiExample], tokenizer: WordTokenizer | None = None,
                memory_size: int = 50) -> BabiBatch:
    """Pad ``examples`` into a BabiBatch (see there).

    A story longer than ``memory_size`` keeps its ``memory_size`` most recent
    sentences (as the paper limits memory to the last 50).  N and J are the
    largest story / sentence lengths of the examples.  Words outside the
    vocabulary are an error (the generator never makes them).
    """
    tok = babi_vocabulary() if tokenizer is None else tokenizer
    if isinstance(memory_size, bool) or not isinstance(memory_size, (int, np.integer)) \
            or memory_size < 1:
        raise ValueError(f"encode_babi: memory_size must be an int >= 1, got {memory_size!r}")
    if not examples:
        raise ValueError("encode_babi: no examples")
    stories, queries, answers, supports = [], [], [], []
    for k, ex in enumerate(examples):
        if not isinstance(ex, BabiExample):
            raise TypeError(f"encode_babi: example {k} is {type(ex).__name__}, "
                            f"expected BabiExample")
        start = max(0, len(ex.story) - memory_size)
        sents = [tok.encode(s) for s in ex.story[start:]]
        q = tok.encode(ex.question)
        a = tok.encode(ex.answer)
        if any(UNK_ID in s for s in sents) or UNK_ID in q or len(a) != 1 or UNK_ID in a:
            raise ValueError(f"encode_babi: example {k} has words outside the vocabulary")
        stories.append(sents)
        queries.append(q)
        answers.append(a[0])
        supports.append([i - start for i in ex.support if i >= start])
    B = len(examples)
    N = max(1, max(len(s) for s in stories))
    J = max(1, max((len(w) for s in stories for w in s), default=1))
    Jq = max(len(q) for q in queries)
    story = np.full((B, N, J), PAD_ID, dtype=np.int64)
    story_pad_mask = np.ones((B, N), dtype=bool)
    support_mask = np.zeros((B, N), dtype=bool)
    query = np.full((B, Jq), PAD_ID, dtype=np.int64)
    for b, (sents, q, sup) in enumerate(zip(stories, queries, supports)):
        for i, words in enumerate(sents):
            story[b, i, :len(words)] = words
        story_pad_mask[b, :len(sents)] = False
        support_mask[b, sup] = True
        query[b, :len(q)] = q
    return BabiBatch(story, story_pad_mask, query, query == PAD_ID,
                     np.asarray(answers, dtype=np.int64), support_mask)
