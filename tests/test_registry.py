"""The model registry: one entry per model kind, from which the trainers and the
CLI take their choices."""

import dataclasses
import os

import numpy as np
import pytest

from numtransformer import cli
from numtransformer.models import MemN2N, Seq2Seq, Transformer, TransformerLM, registry
from numtransformer.train import (LMTrainer, TrainConfig, Trainer, UserError, build_model,
                                  make_trainer, trainer_class)

SMALL = dict(d_model=8, nhead=2, layers=1, dim_feedforward=16, hidden_size=8, context=8)


def _quiet():
    return open(os.devnull, "w")


def _choices(parser_action_flag):
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    return {a.option_strings[0]: a for a in train._actions if a.option_strings}


def test_every_kind_builds_its_model_and_names_its_trainer():
    built = {name: build_model(TrainConfig(model=name, **SMALL), 11, 13, np.random.default_rng(0))
             for name in registry.names(train_config=True)}
    assert isinstance(built["transformer"], Transformer)
    assert isinstance(built["seq2seq"], Seq2Seq) and built["seq2seq"].config["bidirectional"]
    assert built["lstmn"].config["encoder_cell"] == "lstmn"
    assert isinstance(built["lm"], TransformerLM)
    assert trainer_class("lm") is LMTrainer
    assert all(trainer_class(n) is Trainer for n in ("transformer", "seq2seq", "lstmn"))
    with pytest.raises(UserError, match="memnn_train.train_memnn"):
        trainer_class("memnn")
    with pytest.raises(ValueError, match="unknown model 'rnn'"):
        registry.get("rnn")
    kind = registry.get("memnn")
    settings = dict(d=6, hops=2, memory_size=5, tying="adjacent", position_encoding=True,
                    temporal=True, pad_id=0, dtype="float64")
    model = kind.build(type("S", (), settings), 9, 9, np.random.default_rng(0))
    assert isinstance(model, MemN2N) and model.hops == 2


def test_the_registry_builds_what_the_old_build_model_built():
    """The same constructor arguments as before the registry: same parameters, same values."""
    cfg = TrainConfig(model="transformer", **SMALL)
    ours = build_model(cfg, 11, 13, np.random.default_rng([0, 1]))
    theirs = Transformer(11, 13, d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                         dim_feedforward=16, dropout=0.1, activation="relu", norm_first=False,
                         tie_output=True, max_len=256, dtype=np.float32,
                         rng=np.random.default_rng([0, 1]))
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("score", registry.SCORES)
def test_every_score_choice_builds(score):
    build_model(TrainConfig(model="seq2seq", score=score, **SMALL), 7, 7, np.random.default_rng(0))


@pytest.mark.parametrize("activation", registry.ACTIVATIONS)
def test_every_activation_choice_builds(activation):
    for model in ("transformer", "lm"):
        build_model(TrainConfig(model=model, activation=activation, **SMALL), 7, 7,
                    np.random.default_rng(0))


def test_the_cli_choices_and_train_flags_are_derived():
    actions = _choices("train")
    assert actions["--model"].choices == list(registry.names())
    assert actions["--score"].choices == list(registry.SCORES)
    assert actions["--activation"].choices == list(registry.ACTIVATIONS)
    assert actions["--cell"].choices == list(registry.CELLS)
    assert actions["--decoder"].choices == list(registry.DECODERS)
    for f in dataclasses.fields(TrainConfig):  # one flag per setting (but the two marked none)
        flag = f.metadata["flag"]
        if flag is None:
            assert f.name in ("tie_output", "eval_examples")
            continue
        assert actions["--" + (flag or f.name).replace("_", "-")].dest == f.name
    for kind in registry.kinds():
        for option in kind.options:
            assert "--" + option.flag in actions


def test_a_new_kind_is_added_in_one_place(monkeypatch, tmp_path, capsys):
    """Registering a kind is enough for TrainConfig, make_trainer, the CLI's --model
    and a saved run's resume."""
    def build(cfg, src_vocab, tgt_vocab, rng):
        return Transformer(src_vocab, tgt_vocab, d_model=cfg.d_model, nhead=1,
                           num_encoder_layers=1, num_decoder_layers=1,
                           dim_feedforward=cfg.dim_feedforward, dropout=0.0,
                           max_len=256, dtype=np.dtype(cfg.dtype), rng=rng)

    kind = registry.ModelKind("tiny", "a one-head, one-layer Transformer", build,
                              trainer="numtransformer.train.loop:Trainer",
                              defaults={"d_model": 8, "dim_feedforward": 16})
    monkeypatch.setitem(registry._KINDS, "tiny", kind)
    trainer = make_trainer(TrainConfig(model="tiny", task="copy", n_train=20, n_valid=2,
                                       n_test=2, d_model=8, dim_feedforward=16), stream=_quiet())
    assert type(trainer) is Trainer and trainer.model.config["nhead"] == 1
    out = str(tmp_path / "run")
    assert cli.main(["train", "--model", "tiny", "--task", "copy", "--steps", "2", "--n-train",
                     "20", "--n-valid", "2", "--n-test", "2", "--eval-every", "0", "--out",
                     out, "--json"]) == 0
    assert '"model": "tiny"' in capsys.readouterr().out
    resumed = Trainer.resume(out, stream=_quiet(), steps=3)
    assert resumed.step == 2 and resumed.model.config["d_model"] == 8  # the kind's default
    resumed.close()


def test_kinds_and_tasks_imply_each_other():
    assert registry.kind_for_task("text:hamlet").name == "lm"
    assert registry.kind_for_task("babi:2").name == "memnn"
    assert registry.kind_for_task("dates") is None
    assert registry.get("lm").defaults == cli.LM_DEFAULTS
