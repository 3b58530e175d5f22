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


# -- issue 23: saves that verify, what the end of a run says -------------------------------------
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path,
                                                                             monkeypatch):
    import errno

    out = str(tmp_path / "run")
    t = Trainer(TrainConfig(steps=10, **dict(TINY, checkpoint_every=2)), out_dir=out,
                stream=_quiet())
    t.fit(until=4)
    real = np.savez

    def full(f, **arrays):
        f.write(b"PK\x03\x04")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(TrainingError) as info:
        t.fit()
    message = str(info.value)
    assert message.startswith("step 6: could not write checkpoint")
    assert "No space left on device (ENOSPC)" in message
    assert "the previous checkpoint there is kept (step 4); stopping" in message
    t.close()
    monkeypatch.setattr(np, "savez", real)
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.npz"]
    again = Trainer.resume(out, stream=_quiet())
    assert again.step == 4
    again.close()


def test_a_checkpoint_whose_optimizer_disagrees_with_the_run_is_never_put_in_place(tmp_path):
    """The issue's lost run: a checkpoint of 634 optimizer steps for a run of 633
    replaced the good one.  Now the save verifies it first and keeps the old one."""
    out = str(tmp_path / "run")
    t = Trainer(TrainConfig(steps=10, **TINY), out_dir=out, stream=_quiet())
    t.fit(until=3)  # saves step 3
    t.optimizer.step()  # as if interrupted between optimizer.step() and step += 1
    with pytest.raises(TrainingError, match="the optimizer made 4 steps, the run 3"):
        t.save()
    t.close()
    again = Trainer.resume(out, stream=_quiet())
    assert again.step == again.optimizer.step_count == 3
    again.close()


def test_a_time_budget_stop_is_announced_and_the_eta_counts_the_budget(tmp_path):
    import io

    from numtransformer.train import Progress

    class Terminal(io.StringIO):
        def isatty(self):  # every step redraws the progress line
            return True

    stream = Terminal()
    t = Trainer(TrainConfig(steps=10**6, time_budget=0.05, **TINY), out_dir=str(tmp_path / "r"),
                stream=stream)
    result = t.fit()
    t.close()
    text = stream.getvalue()
    assert result["stopped_by"] == "time budget"
    assert f"time budget of 0.05 s reached at step {result['steps']} of 1000000: stopping" in text
    assert "(time budget)" in text  # the ETA line: the budget, not a million steps, ends it
    lines = t.end_lines(result)
    assert lines[0].startswith("stopped: time budget of 0.05 s reached at step")
    # the ETA: the sooner of the steps left and the budget left
    p = Progress(1000, stream=io.StringIO(), budget=60.0)
    p.start -= 10.0  # 10 s for 10 steps: 990 s of steps left, 30 s of budget
    eta, by_budget = p.eta(10, 10, seconds=30.0)
    assert by_budget and eta == pytest.approx(30.0)
    eta, by_budget = p.eta(990, 990, seconds=30.0)
    assert not by_budget and eta < 30.0


@pytest.mark.parametrize("smoothing,label", [(0.1, "train loss (label smoothing 0.1) "),
                                             (0.0, "train loss ")])
def test_the_training_loss_line_says_when_label_smoothing_is_on(smoothing, label):
    import io

    stream = io.StringIO()
    t = Trainer(TrainConfig(steps=3, **dict(TINY, label_smoothing=smoothing)), stream=stream)
    t.fit()
    progress = [line for line in stream.getvalue().splitlines() if line.startswith("[")]
    assert progress and all(label in line for line in progress), progress
    assert ("label smoothing" in stream.getvalue()) == bool(smoothing)


def test_the_end_of_a_cli_run_says_where_why_and_what_next(tmp_path, capsys):
    import shlex

    out = str(tmp_path / "run")
    args = ["train", "--task", "copy", "--steps", "4", "--d-model", "16", "--nhead", "2",
            "--layers", "1", "--ff", "32", "--n-train", "200", "--n-valid", "10",
            "--n-test", "10", "--out", out]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    end = lines[lines.index("next:") - 2:]
    assert end[0] == "stopped: 4 steps reached"
    assert end[1] == f"saved: {os.path.join(out, 'checkpoint.npz')} (step 4)"
    commands = [shlex.split(line.split("   (")[0]) for line in end[3:]]
    assert [c[:2] for c in commands] == [["numtransformer", "decode"],
                                         ["numtransformer", "eval"],
                                         ["numtransformer", "train"]]
    assert commands[2][2:] == ["--out", out, "--resume", "--steps", "8"]
    assert "stretch the cosine schedule" in end[-1]
    for command in commands:  # each one runs as printed
        assert cli.main(command[1:]) == 0, command
        capsys.readouterr()


def test_memnn_without_out_saves_to_a_run_directory_and_says_where(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "memnn", "--task", "babi:1", "--epochs", "1", "--n-train",
            "100"]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    (run,) = os.listdir(tmp_path / "runs")
    assert run.startswith("babi1-memnn-") and ":" not in run
    path = os.path.join("runs", run, "checkpoint.npz")
    assert f"saved: {path} (the best model" in text
    assert f"numtransformer eval --checkpoint {os.path.join('runs', run)}" in text
    assert cli.main(["eval", "--checkpoint", os.path.join("runs", run)]) == 0


@pytest.mark.parametrize("schedule,identical", [("constant", True), ("noam", True),
                                                ("warmup_cosine", False)])
def test_resuming_with_more_steps_matches_a_longer_run_only_when_the_schedule_ignores_steps(
        tmp_path, schedule, identical):
    """The README's guarantee, exactly: stopped anywhere (interrupt, kill, time budget)
    and resumed with the same --steps, any schedule gives the uninterrupted run's
    parameters; N steps and then --resume --steps 2N gives the 2N-step run's only when
    the schedule does not depend on --steps (constant, noam): warmup_cosine decays to
    the run's last step."""
    cfg = dict(TINY, schedule=schedule)
    straight = Trainer(TrainConfig(steps=12, **cfg), stream=_quiet())
    straight.fit()
    first = Trainer(TrainConfig(steps=6, **cfg), out_dir=str(tmp_path / "run"),
                    stream=_quiet())
    first.fit()
    first.close()
    longer = Trainer.resume(str(tmp_path / "run"), stream=_quiet(), steps=12)
    longer.fit()
    longer.close()
    a, b = _params(straight), _params(longer)
    assert all(np.array_equal(a[k], b[k]) for k in a) == identical


def test_a_signal_during_the_step_agreement_is_not_lost(tmp_path):
    """A signal that lands while the loop agrees on the clock and the stop request
    (between reading the request and using the answer) stops the run at the next
    step boundary: an assignment of the agreed value back over the live request
    erased it, and the run trained on to its last step (a hang in the interrupt test)."""
    import os
    import signal

    cfg = TrainConfig(steps=60, **{**TINY, "checkpoint_every": 0, "eval_every": 0})
    trainer = Trainer(cfg, out_dir=str(tmp_path / "run"), stream=open(os.devnull, "w"))
    real_agree = trainer.dist.agree
    calls = []

    def agree(seconds, requested):
        calls.append(requested)
        if len(calls) == 5:  # the request was read (None); the signal comes now
            os.kill(os.getpid(), signal.SIGINT)
        return real_agree(seconds, requested)

    trainer.dist.agree = agree
    result = trainer.fit()
    assert result["stopped_by"] == "interrupted" and result["signal"] == "SIGINT"
    assert trainer.step == 6  # the step after the one whose agreement the signal hit
