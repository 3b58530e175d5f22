"""Character language modelling: text tasks, window batches, LMTrainer, the CLI."""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numtransformer import cli
from numtransformer.data.text import (BUILTIN_TEXTS, WindowIterator, eval_windows,
                                      load_text, make_text_task)
from numtransformer.train import LMTrainer, TrainConfig, Trainer, UserError, make_trainer

POEM = ("the cat sat on the mat and the dog sat on the log; "
        "the bird sat on the wire and the fox sat by the fire.\n") * 40

TINY = dict(model="lm", d_model=16, nhead=2, layers=1, dim_feedforward=32, dropout=0.1,
            batch_size=8, context=16, eval_every=0, checkpoint_every=0, warmup=5,
            label_smoothing=0.0)


def _quiet():
    return open(os.devnull, "w")


@pytest.fixture
def poem(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM, encoding="utf-8")
    return "text:" + str(path)


def test_text_task_is_cut_in_order_with_every_character_in_the_vocabulary(poem):
    task = make_text_task(poem, context=16)
    assert task.train + task.valid + task.test == POEM
    assert len(task.train) == int(0.9 * len(POEM))
    assert set(task.tokenizer.itos[4:]) == set(POEM)
    for split in ("train", "valid", "test"):
        assert task.tokenizer.decode(task.ids(split)) == getattr(task, split)


def test_builtin_hamlet_ships_with_the_package():
    text = load_text("text:hamlet")
    assert os.path.isfile(BUILTIN_TEXTS["hamlet"])
    assert text.startswith("HAMLET, PRINCE OF DENMARK") and len(text) > 150_000
    assert text.isascii()


def test_text_task_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither a built-in text"):
        load_text("text:" + str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="give a built-in text"):
        load_text("text:")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="shorter than one window"):
        make_text_task("text:" + str(short), context=16)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe" * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        load_text("text:" + str(binary))


@given(n=st.integers(20, 200), context=st.integers(1, 19), batch=st.integers(1, 5),
       seed=st.integers(0, 3))
def test_windows_are_next_character_pairs_and_resume_exactly(n, context, batch, seed):
    ids = np.arange(n, dtype=np.int64)  # distinct ids: a window's first id is its offset
    it = WindowIterator(ids, batch, context, seed=seed)
    first = next(it)
    assert first.ids.shape == first.targets.shape == (batch, context)
    for row, target in zip(first.ids, first.targets):  # contiguous, target moved by one
        start = int(row[0])
        assert np.array_equal(row, ids[start:start + context])
        assert np.array_equal(target, ids[start + 1:start + context + 1])
    state = it.state_dict()
    expected = next(it)
    other = WindowIterator(ids, batch, context, seed=seed)
    other.load_state_dict(state)
    again = next(other)
    assert np.array_equal(expected.ids, again.ids)


def test_eval_windows_predict_every_character_once():
    ids = np.arange(50)
    windows = eval_windows(ids, 16)
    targets = np.concatenate([y for _, y in windows])
    assert np.array_equal(targets, ids[1:])
    assert all(np.array_equal(x + 1, y) for x, y in windows)
    assert len(eval_windows(ids, 16, limit=2)) == 2


def test_make_trainer_dispatches_and_learns_the_poem(poem):
    cfg = dict(TINY, d_model=32, dim_feedforward=64, layers=2, dropout=0.0)
    trainer = make_trainer(TrainConfig(task=poem, steps=300, lr=1e-2, **cfg), stream=_quiet())
    assert type(trainer) is LMTrainer
    before = trainer.evaluate("valid")
    metrics = trainer.fit()
    assert metrics["bits_per_char"] < 0.15 * before.bits_per_char, (before, metrics)
    assert metrics["token_accuracy"] > 0.85, metrics
    assert math.isclose(metrics["bits_per_char"], metrics["loss"] / math.log(2))
    assert "exact_match" not in metrics
    out = trainer.generate(["the bird sat on "], 16)[0]  # greedy, 16 + 16 = the context
    assert len(out) == 16 and set(out) <= set(POEM)


def test_generation_runs_past_the_context(poem):
    trainer = LMTrainer(TrainConfig(task=poem, steps=1, **TINY), stream=_quiet())
    outs = trainer.generate(["the", ""], 3 * TINY["context"] + 5, temperature=1.0, seed=1)
    assert [len(o) for o in outs] == [3 * TINY["context"] + 5] * 2
    assert all(set(o) <= set(POEM) for o in outs)  # the special tokens are never drawn
    assert trainer.generate(["x"], 0) == [""]
    again = trainer.generate(["the", ""], 3 * TINY["context"] + 5, temperature=1.0, seed=1)
    assert outs == again  # seeded


def test_lm_resume_is_bit_exact(poem, tmp_path):
    cfg = TrainConfig(task=poem, steps=12, **TINY)
    straight = make_trainer(cfg, stream=_quiet())
    straight.fit()
    first = make_trainer(cfg, out_dir=str(tmp_path / "run"), stream=_quiet())
    first.fit(until=6)
    first.close()
    resumed = Trainer.resume(str(tmp_path / "run"), stream=_quiet())
    assert isinstance(resumed, LMTrainer) and resumed.step == 6
    resumed.fit()
    resumed.close()
    a = dict(straight.model.named_parameters())
    b = dict(resumed.model.named_parameters())
    assert all(np.array_equal(a[k].data, b[k].data) for k in a)


def test_lm_and_text_tasks_go_together(poem):
    with pytest.raises(UserError, match="--model lm trains on a text"):
        make_trainer(TrainConfig(task="copy", **TINY))
    with pytest.raises(UserError, match="train it with --model lm"):
        make_trainer(TrainConfig(task=poem, model="transformer"))


def test_a_trainer_refuses_another_kinds_config(poem):
    """Trainer(cfg) builds what it says: an lm config is refused, with the way to
    the right trainer, instead of a silently swapped class."""
    with pytest.raises(ValueError, match="trained by LMTrainer; build it with make_trainer"):
        Trainer(TrainConfig(task=poem, **TINY))
    with pytest.raises(ValueError, match="--model transformer runs are trained by Trainer"):
        LMTrainer(TrainConfig(task=poem, model="transformer"))

    class MyLMTrainer(LMTrainer):  # a subclass of the right trainer is welcome
        pass

    assert type(MyLMTrainer(TrainConfig(task=poem, steps=1, **TINY))) is MyLMTrainer


def test_cli_lm_train_eval_decode_trace(poem, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--task", poem, "--steps", "4", "--d-model", "16", "--nhead", "2",
                     "--layers", "1", "--ff", "32", "--context", "16", "--out", out,
                     "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["model"] == "lm" and metrics["steps"] == 4 and metrics["bits_per_char"] > 0
    assert cli.main(["eval", "--checkpoint", out, "--json", "--split", "valid"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "valid" and "bits_per_char" in ev
    assert cli.main(["eval", "--checkpoint", out]) == 0
    assert "bits/char" in capsys.readouterr().out
    assert cli.main(["decode", "--checkpoint", out, "--max-len", "20", "the cat"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("the cat") and len(line.rstrip("\n")) >= 7
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the\nthe dog\n")
    assert cli.main(["decode", "--checkpoint", out, "--input-file", str(prompts),
                     "--max-len", "40", "--temperature", "1.5"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one line per prompt, newlines escaped
    assert cli.main(["decode", "--checkpoint", out, "--beam", "2", "the"]) == 2
    assert "--beam applies" in capsys.readouterr().err
    assert cli.main(["trace", "--checkpoint", out, "--values", "2"]) == 0
    assert "blocks[0].self_attn.alpha" in capsys.readouterr().out


def test_cli_lm_attention_plot(poem, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "run")
    assert cli.main(["train", "--task", poem, "--steps", "2", "--d-model", "16", "--nhead", "2",
                     "--layers", "1", "--ff", "32", "--context", "16", "--out", out]) == 0
    png = str(tmp_path / "att.png")
    assert cli.main(["decode", "--checkpoint", out, "--max-len", "6", "the cat",
                     "--attention", png, "--heads"]) == 0
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_cli_lm_user_errors(poem, tmp_path, capsys):
    assert cli.main(["train", "--model", "lm", "--task", "dates", "--out",
                     str(tmp_path / "a")]) == 2
    assert "--model lm trains on a text" in capsys.readouterr().err
    assert cli.main(["train", "--task", "text:" + str(tmp_path / "nope.txt"), "--out",
                     str(tmp_path / "b")]) == 2
    assert "neither a built-in text" in capsys.readouterr().err
    seq = str(tmp_path / "seq")
    assert cli.main(["train", "--task", "copy", "--steps", "1", "--d-model", "16", "--nhead",
                     "2", "--layers", "1", "--ff", "32", "--n-train", "50", "--eval-every",
                     "0", "--out", seq]) == 0
    capsys.readouterr()
    assert cli.main(["decode", "--checkpoint", seq, "--temperature", "0.5", "12"]) == 2
    assert "--temperature and --top-k" in capsys.readouterr().err


def test_window_position_and_forged_lm_checkpoints_are_refused(poem, tmp_path):
    it = WindowIterator(np.arange(40), 2, 8)
    for bad in ({"index": -1}, {"index": "3"}, {"index": True}):
        with pytest.raises(ValueError, match="bad position"):
            it.load_state_dict(bad)
    with pytest.raises(ValueError, match="at least context"):
        WindowIterator(np.arange(5), 2, 8)

    from numtransformer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    trainer = make_trainer(TrainConfig(task=poem, steps=2, **TINY), out_dir=str(out),
                           stream=_quiet())
    trainer.fit()
    trainer.close()
    ck = load_checkpoint(str(out / "checkpoint.npz"))
    for change, message in ((dict(context=10**6), "at least"), (dict(context=0), "context must be .*, got 0"),
                            (dict(model="transformer"), "at least|train it with --model lm")):
        config = dict(ck.config, train=dict(ck.config["train"], **change))
        model = LMTrainer(TrainConfig(task=poem, steps=2, **TINY), stream=_quiet()).model
        model.load_state_dict(ck.params)
        path = str(tmp_path / "forged.npz")
        save_checkpoint(path, model, config, ck.meta)
        with pytest.raises((CheckpointError, ValueError), match=message):
            Trainer.from_checkpoint(path, stream=_quiet())
