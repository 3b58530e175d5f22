import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numtransformer import cli
from numtransformer.checkpoint import CheckpointError
from numtransformer.train import TrainConfig, Trainer, TrainingError

TINY = dict(task="copy", n_train=400, n_valid=20, n_test=20, d_model=16, nhead=2, layers=1,
            dim_feedforward=32, dropout=0.1, batch_size=16, eval_every=0, checkpoint_every=0,
            eval_examples=20, warmup=5)


def _params(trainer):
    return {n: p.data.copy() for n, p in trainer.model.named_parameters()}


def _quiet():
    return open(os.devnull, "w")


def test_resume_is_bit_exact(tmp_path):
    straight = Trainer(TrainConfig(steps=16, **TINY), stream=_quiet())
    straight.fit()
    first = Trainer(TrainConfig(steps=16, **TINY), out_dir=str(tmp_path / "run"),
                    stream=_quiet())
    first.fit(until=8)
    first.close()
    resumed = Trainer.resume(str(tmp_path / "run"), stream=_quiet())
    assert resumed.step == 8
    resumed.fit()
    resumed.close()
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.optimizer.step_count == straight.optimizer.step_count == 16


def test_resume_after_a_kill_between_checkpoints(tmp_path):
    """A run killed (SIGKILL) some time after its first checkpoint resumes from the
    last one and reaches the parameters of an uninterrupted run."""
    out = str(tmp_path / "run")
    cfg = dict(TINY, steps=2000, checkpoint_every=10)
    code = (
        "import sys, os\n"
        "from numtransformer.train import TrainConfig, Trainer\n"
        f"t = Trainer(TrainConfig(**{cfg!r}), out_dir={out!r}, stream=open(os.devnull, 'w'))\n"
        "t.fit()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    ckpt = os.path.join(out, "checkpoint.npz")
    deadline = time.time() + 60
    while not os.path.exists(ckpt) and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = Trainer.resume(out, stream=_quiet())
    start = resumed.step
    # Where the kill lands depends on the machine's speed; what must hold is that
    # the run restarts from a checkpoint step and goes on to match a straight run.
    assert 10 <= start < cfg["steps"] and start % 10 == 0
    end = start + 25  # ends between checkpoints, so the resumed steps are all live
    resumed.fit(until=end)
    resumed.close()
    straight = Trainer(TrainConfig(**cfg), stream=_quiet())
    straight.fit(until=end)
    a, b = _params(straight), _params(resumed)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_second_run_on_the_same_directory_refuses(tmp_path):
    out = str(tmp_path / "run")
    first = Trainer(TrainConfig(steps=2, **TINY), out_dir=out, stream=_quiet())
    with pytest.raises(TrainingError, match="in use by another run"):
        Trainer(TrainConfig(steps=2, **TINY), out_dir=out, stream=_quiet())
    first.fit()
    first.close()
    with pytest.raises(TrainingError, match="already holds a checkpoint"):
        Trainer(TrainConfig(steps=2, **TINY), out_dir=out, stream=_quiet())


def test_a_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    t = Trainer(TrainConfig(steps=10, **dict(TINY, checkpoint_every=2)), out_dir=out,
                stream=_quiet())
    real_forward = t.loss_fn.forward

    def poisoned(logits, targets):
        loss, cache = real_forward(logits, targets)
        return (np.float32(np.nan) if t.step == 4 else loss), cache

    monkeypatch.setattr(t.loss_fn, "forward", poisoned)
    with pytest.raises(TrainingError, match="at step 5"):
        t.fit()
    t.close()
    again = Trainer.resume(out, stream=_quiet())
    assert again.step == 4
    again.close()


def _poison_at_step_4(t, monkeypatch, what):
    """From step 5 on, break the run in a real way (no stubbed loss value)."""
    real_forward, real_backward = t._forward, t.loss_fn.backward

    def forward(batch):
        if t.step == 4 and what == "parameter":  # as a diverging optimizer would leave it
            t.model.decoder.layers[0].ffn.linear2.W.data[...] = np.inf
        return real_forward(batch)

    def backward(dout, cache):
        d = real_backward(dout, cache)
        if t.step == 4 and what == "gradient":
            d[0, 0, 0] = np.inf
        return d

    monkeypatch.setattr(t, "_forward", forward)
    monkeypatch.setattr(t.loss_fn, "backward", backward)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the poison
@pytest.mark.parametrize("what,clip,message", [
    ("parameter", 1.0, "the logits became NaN/inf at step 5"),
    ("gradient", 1.0, "the gradient norm became (inf|nan) at step 5"),
    ("gradient", 0.0, "the gradient norm became (inf|nan) at step 5"),  # no clipping: still caught
])
def test_non_finite_logits_or_gradients_stop_the_run_and_keep_the_checkpoint(
        tmp_path, monkeypatch, what, clip, message):
    out = str(tmp_path / "run")
    t = Trainer(TrainConfig(steps=10, **dict(TINY, checkpoint_every=2, clip=clip)), out_dir=out,
                stream=_quiet())
    _poison_at_step_4(t, monkeypatch, what)
    with pytest.raises(TrainingError, match=message):
        t.fit()
    t.close()
    again = Trainer.resume(out, stream=_quiet())  # the step-4 checkpoint loads
    assert again.step == 4
    assert all(np.isfinite(p.data).all() for p in again.model.parameters())
    again.close()


def test_save_refuses_non_finite_parameters(tmp_path):
    out = str(tmp_path / "run")
    t = Trainer(TrainConfig(steps=2, **TINY), out_dir=out, stream=_quiet())
    t.fit()
    before = open(os.path.join(out, "checkpoint.npz"), "rb").read()
    t.model.decoder.layers[0].ffn.linear2.W.data[0, 0] = np.nan
    with pytest.raises(TrainingError, match="NaN/inf by step 2 .*decoder.layers.0.ffn.linear2.W"):
        t.save()
    t.close()
    assert open(os.path.join(out, "checkpoint.npz"), "rb").read() == before


def test_a_tiny_transformer_masters_copy():
    cfg = TrainConfig(task="copy", n_train=5000, n_valid=100, n_test=500, d_model=32, nhead=4,
                      layers=1, dim_feedforward=64, dropout=0.0, steps=800, eval_every=0,
                      checkpoint_every=0, seed=0)
    trainer = Trainer(cfg, stream=_quiet())
    metrics = trainer.fit()
    assert metrics["exact_match"] >= 0.95, metrics
    m = trainer.evaluate("test", n_examples_shown=4)  # shown examples: the mistakes first
    n_wrong = round((1 - m.exact_match) * len(trainer.task.test))
    flags = [pred != ref for _, pred, ref in m.examples]
    assert len(flags) == 4 and flags == [True] * min(4, n_wrong) + [False] * (4 - min(4, n_wrong))


def test_cli_train_eval_decode_json(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--task", "copy", "--steps", "6", "--d-model", "16", "--nhead", "2",
            "--layers", "1", "--ff", "32", "--n-train", "200", "--eval-every", "3",
            "--out", out, "--json"]
    assert cli.main(args) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"task", "model", "steps", "seconds", "loss", "token_accuracy",
            "exact_match"} <= set(metrics)
    assert metrics["steps"] == 6 and metrics["task"] == "copy"
    assert cli.main(["eval", "--checkpoint", out, "--json", "--limit", "10"]) == 0
    ev = json.loads(capsys.readouterr().out.strip())
    assert ev["split"] == "test" and 0 <= ev["exact_match"] <= 1
    assert cli.main(["eval", "--checkpoint", out, "--limit", "10"]) == 0
    text = capsys.readouterr().out
    assert "exact match" in text and "error rate" in text  # the README's eval metrics
    inputs = tmp_path / "in.txt"
    inputs.write_text("123\n4567\n")
    assert cli.main(["decode", "--checkpoint", out, "--input-file", str(inputs)]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one output line per input line
    assert cli.main(["decode", "--checkpoint", out, "--beam", "3", "42"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    # resume with more steps
    assert cli.main(["train", "--out", out, "--resume", "--steps", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 8


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint" in err
    bogus = tmp_path / "bogus.npz"
    np.savez(bogus, x=np.zeros(2))
    assert cli.main(["decode", "--checkpoint", str(bogus), "hi"]) == 2
    assert "missing entry '__format__'" in capsys.readouterr().err
    assert cli.main(["train", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert cli.main(["train", "--d-model", "30", "--nhead", "4", "--steps", "1",
                     "--out", str(tmp_path / "x")]) == 2
    assert "not divisible" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--task", "translate"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'translate'" in err, err  # one line, no usage


@pytest.mark.parametrize("args,named", [
    (["train", "--clip", "-1"], "--clip: expected >= 0, got -1"),
    (["train", "--steps", "-3"], "--steps: expected >= 1, got -3"),
    (["train", "--eval-every", "-1"], "--eval-every: expected >= 0"),
    (["train", "--time-budget", "0"], "--time-budget: expected > 0"),
    (["train", "--dropout", "1.5"], "--dropout: expected >= 0 and < 1"),
    (["train", "--lr", "nan"], "--lr: expected > 0"),
    (["train", "--d-model", "many"], "--d-model: expected an integer >= 1, got 'many'"),
    (["train", "--model", "rnn"], "--model: invalid choice: 'rnn'"),
    (["eval", "--checkpoint", "x", "--limit", "-1"], "--limit: expected >= 1"),
    (["decode", "--checkpoint", "x", "--beam", "0", "a"], "--beam: expected >= 1"),
    (["decode", "--checkpoint", "x", "--max-len", "-1", "a"], "--max-len: expected >= 1"),
    (["eval"], "the following arguments are required: --checkpoint"),
])
def test_cli_usage_mistakes_are_one_line_naming_the_option(args, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err


def test_train_config_ranges_are_checked():
    for bad, message in ((dict(steps=0), "steps must be an integer >= 1, got 0"),
                         (dict(clip=-1.0), "clip must be a number >= 0"),
                         (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
                         (dict(time_budget=-5.0), "time_budget must be None or a number"),
                         (dict(batch_size=2.5), "batch_size must be an integer >= 1")):
        with pytest.raises(ValueError, match=f"TrainConfig: {message}"):
            TrainConfig(**bad)


def test_noam_peaks_at_the_given_lr():
    t = Trainer(TrainConfig(**dict(TINY, steps=50, schedule="noam", warmup=10, lr=1e-3)),
                stream=_quiet())
    rates = [t.schedule(s) for s in range(1, 51)]
    assert max(rates) == pytest.approx(1e-3) and int(np.argmax(rates)) == 9


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    from numtransformer import Linear
    from numtransformer.checkpoint import save_checkpoint

    path = str(tmp_path / "other.npz")
    save_checkpoint(path, Linear(2, 2), {"kind": "something-else"})
    with pytest.raises(CheckpointError, match="not a numtransformer training run"):
        Trainer.from_checkpoint(path)


def test_trace_prints_every_named_intermediate(capsys):
    assert cli.main(["trace", "--values", "2"]) == 0
    out = capsys.readouterr().out
    for name in ["encoder.layers[0].self_attn.q_s", "encoder.layers[0].self_attn.e",
                 "encoder.layers[0].self_attn.alpha", "encoder.layers[0].self_attn.C",
                 "decoder.layers[0].cross_attn.alpha", "residual_norm1.x_hat",
                 "residual_norm1.rstd", "generator.x"]:
        assert name in out, name


def test_decode_draws_the_attention(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "run")
    assert cli.main(["train", "--task", "copy", "--steps", "3", "--d-model", "16", "--nhead",
                     "2", "--layers", "2", "--ff", "32", "--n-train", "100", "--eval-every",
                     "0", "--out", out]) == 0
    png = str(tmp_path / "att.png")
    assert cli.main(["decode", "--checkpoint", out, "123", "--attention", png, "--heads",
                     "--layer", "0"]) == 0
    assert os.path.getsize(png) > 1000 and open(png, "rb").read(4) == b"\x89PNG"
    assert cli.main(["decode", "--checkpoint", out, "123", "--attention", png,
                     "--layer", "5"]) == 2


def test_claim_locks_the_run_directory_and_refuses_a_fresh_run_over_a_checkpoint(tmp_path):
    from numtransformer.train.errors import TrainingError
    from numtransformer.train.rundir import CHECKPOINT, claim

    run = str(tmp_path / "run")
    lock = claim(run, fresh=True)
    (tmp_path / "run" / ".ckpt-x.tmp").write_bytes(b"cut short")
    lock.release()
    (tmp_path / "run" / CHECKPOINT).write_bytes(b"")
    with pytest.raises(TrainingError, match="already holds a checkpoint"):
        claim(run, fresh=True)
    lock = claim(run, fresh=False)  # a resume takes it, and clears a save's leftovers
    assert not (tmp_path / "run" / ".ckpt-x.tmp").exists()
    lock.release()
