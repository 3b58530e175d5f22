"""Interrupts while training (issue 23): SIGINT and SIGTERM at random moments,
many times over, single and in bursts.

A signal is taken at a step boundary only: the step under way finishes, the
run saves a verified checkpoint of exactly that step and stops.  After every
interrupt the checkpoint loads as a run (``Trainer.from_checkpoint``: the
optimizer's step count equals the run's, every parameter finite) and never
goes back in time; at the end the run, resumed once more and finished, has the
parameters of an uninterrupted run, bit for bit.  (Before: ``KeyboardInterrupt``
landed anywhere inside the step, e.g. between ``optimizer.step()`` and the
step count, and the checkpoint written on the way out could not be loaded.)

The runs are children forked by this file run as a script (a warm
interpreter started with one BLAS thread, as ``worker.py`` for the SIGKILL
test), so a cycle costs milliseconds.  ``NT_INTERRUPTS`` sets the number of
moments (200 by default: 160 SIGINT, 40 SIGTERM).
The command line's exit statuses (130, 143) and its last lines are tested
through ``numtransformer train`` itself.
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
MOMENTS = int(os.environ.get("NT_INTERRUPTS", "200"))

# tiny and fast: a step is about a millisecond, a save a few; checkpoint every 3 steps
CFG = dict(task="copy", n_train=200, n_valid=5, n_test=5, d_model=8, nhead=2, layers=1,
           dim_feedforward=16, dropout=0.1, batch_size=8, eval_every=0, checkpoint_every=3,
           eval_examples=5, warmup=5, steps=100000)


# -- the worker (this file run as a script) -----------------------------------------------------
def _say(obj) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())


class _Stopping:
    """The run's output stream; it notes when the run says it is stopping."""

    def __init__(self):
        self.said = False

    def write(self, text):
        self.said = self.said or "interrupted" in text
        return len(text)

    def flush(self):
        pass


def _child_train(cmd: dict) -> None:
    from numtransformer.train import TrainConfig, Trainer

    null = _Stopping()

    def outside_fit(signum, frame):
        """The handler in place outside fit: a signal before the run said it stops acts
        as the default would (a KeyboardInterrupt; SIGTERM ends the process); one of a
        burst arriving after fit has put this handler back is ignored (the default
        would end the child before it reports)."""
        if null.said:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGINT, outside_fit)
    signal.signal(signal.SIGTERM, outside_fit)
    out = cmd.get("out")
    if out and os.path.exists(os.path.join(out, "checkpoint.npz")):
        t = Trainer.resume(out, stream=null)
    else:
        t = Trainer(TrainConfig(**cmd["cfg"]), out_dir=out, stream=null)
    start, losses = t.step, []
    real_step = t.train_step

    def step(batch):
        if not losses:  # inside fit: the handlers are in place
            _say({"pid": os.getpid(), "event": "stepping", "step": t.step})
        loss = real_step(batch)
        losses.append(loss)
        return loss

    t.train_step = step
    result = t.fit(until=cmd["until"])
    t.close()
    _say({"pid": os.getpid(), "event": "fit", "start": start, "steps": result["steps"],
          "stopped_by": result["stopped_by"], "signal": result.get("signal")})
    if cmd.get("result"):
        np.savez(cmd["result"], __losses__=np.array(losses), __start__=np.array(start),
                 **{n: p.data for n, p in t.model.named_parameters()})


def _worker_main() -> None:
    import numtransformer.train  # noqa: F401 - warm: every child is forked from here

    _say({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            # a child that hangs prints every thread's stack before the test's read gives
            # up (300 s; a child's run takes well under a second): a diagnosis, not a silence
            faulthandler.dump_traceback_later(240, exit=True)
            try:
                try:
                    _child_train(cmd)
                    code = 0
                except BaseException as exc:  # noqa: BLE001 - reported, then a hard exit
                    _say({"pid": os.getpid(), "event": "error", "error": repr(exc)})
            finally:  # never back into this loop: the child must not read the commands
                os._exit(code)
        _say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        _say({"pid": pid, "exit": status})


# -- the tests ------------------------------------------------------------------------------------
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the worker forks (POSIX)")


@pytest.fixture(scope="module")
def worker():
    from .events import EventProcess  # (imported here: this file also runs as the worker)
    env = dict(os.environ, PYTHONPATH=ROOT, **{v: "1" for v in THREAD_VARS})
    w = EventProcess([sys.executable, os.path.abspath(__file__)], env, timeout=300.0)
    yield w
    w.close()


def _interrupt_many(worker, tmp_path, signum: int, moments: int, seed: int) -> dict:
    from numtransformer.checkpoint import load_checkpoint
    from numtransformer.train import Trainer

    from .events import load_result, same_params
    from .tally import RUNS

    out = str(tmp_path / "run")
    ck_path = os.path.join(out, "checkpoint.npz")
    rng = random.Random(seed)
    name = signal.Signals(signum).name
    last_step, bursts, saved_between = -1, 0, 0
    for _ in range(moments):
        pid = worker.send({"cmd": "train", "cfg": CFG, "out": out, "until": 10**6})
        e = worker.read()
        assert e.get("event") == "stepping", e
        time.sleep(rng.uniform(0.0, 0.03))  # a few dozen steps and a few saves
        os.kill(pid, signum)
        if rng.random() < 0.3:  # a burst: more signals while the run stops and saves
            bursts += 1
            for _ in range(rng.randint(1, 3)):
                time.sleep(rng.uniform(0.0, 0.004))
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    break
        events = worker.until_exit(pid)
        assert events[-1]["exit"] == 0, events  # not killed: it stopped and saved
        fit = next(x for x in events if x.get("event") == "fit")
        # the checkpoint reads (finite parameters), its optimizer made as many steps as
        # the run, it is the step the run stopped at and never goes back; the next
        # cycle's resume loads it as a run (Trainer.from_checkpoint) or fails the test
        ck = load_checkpoint(ck_path)
        step = ck.meta["step"]
        assert int(ck.optim["step_count"]) == step, (int(ck.optim["step_count"]), step)
        assert step == fit["steps"] >= last_step, (step, fit, last_step)
        assert fit["stopped_by"] == "interrupted" and fit.get("signal") == name, fit
        saved_between += step % CFG["checkpoint_every"] != 0
        last_step = step
        RUNS[f"{name} at a random moment: stopped at a step boundary and saved"] += 1
        RUNS["checkpoints verified after an interrupt"] += 1
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")], "temp files left behind"
    t = Trainer.from_checkpoint(ck_path, stream=open(os.devnull, "w"))
    assert t.step == t.optimizer.step_count == last_step
    # finish: one more session without a signal, a few steps on
    until = last_step + 5
    final, straight = str(tmp_path / "final.npz"), str(tmp_path / "straight.npz")
    events = worker.until_exit(worker.send({"cmd": "train", "cfg": CFG, "out": out,
                                            "until": until, "result": final}))
    assert events[-1]["exit"] == 0, events
    events = worker.until_exit(worker.send({"cmd": "train", "cfg": CFG, "out": None,
                                            "until": until, "result": straight}))
    assert events[-1]["exit"] == 0, events
    a, b = load_result(final), load_result(straight)
    assert int(a["__start__"]) == last_step
    np.testing.assert_array_equal(a["__losses__"], b["__losses__"][last_step:until])
    assert same_params(a, b), "the resumed run's parameters differ from the uninterrupted run's"
    RUNS[f"runs interrupted by {name} {moments} times, then equal to the uninterrupted run"] += 1
    return {"moments": moments, "bursts": bursts, "last step": last_step,
            "stopped between checkpoints": saved_between}


def test_sigint_at_random_moments_never_loses_the_run(worker, tmp_path):
    from .tally import NOTES

    NOTES["SIGINT loop"] = _interrupt_many(worker, tmp_path, signal.SIGINT,
                                           MOMENTS - MOMENTS // 5, 23)


def test_sigterm_at_random_moments_never_loses_the_run(worker, tmp_path):
    from .tally import NOTES

    NOTES["SIGTERM loop"] = _interrupt_many(worker, tmp_path, signal.SIGTERM,
                                            max(MOMENTS // 5, 5), 143)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_interrupt_saves_says_so_and_exits_128_plus_the_signal(tmp_path, signum, status):
    """``numtransformer train`` interrupted: the run saves, its last lines say where,
    why and what next, and the exit status is 130 (SIGINT) / 143 (SIGTERM)."""
    from numtransformer.train import Trainer

    out = str(tmp_path / "run")
    args = ["train", "--out", out, "--steps", "3000"]  # a progress line every 100 steps
    for key in ("task", "n_train", "n_valid", "n_test", "d_model", "nhead", "layers",
                "batch_size"):
        args += ["--" + key.replace("_", "-"), str(CFG[key])]
    env = dict(os.environ, PYTHONPATH=ROOT, **{v: "1" for v in THREAD_VARS})
    proc = subprocess.Popen([sys.executable, "-u", "-m", "numtransformer", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the progress lines: training has started
            if "step 100/" in line:
                break
        proc.send_signal(signum)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, (proc.returncode, rest, err)
    name = signal.Signals(signum).name
    assert f"interrupted ({name}) after step" in rest
    assert f"stopped: interrupted by {name} at step" in rest and f"exit status {status}" in rest
    assert f"saved: {os.path.join(out, 'checkpoint.npz')} (step " in rest
    assert f"numtransformer train --out {out} --resume" in rest
    assert "test evaluation skipped (interrupted)" in rest
    t = Trainer.resume(out, stream=open(os.devnull, "w"))
    assert 100 <= t.step < 3000 and t.optimizer.step_count == t.step
    t.close()


def test_handlers_are_restored_after_fit_and_a_signal_waits_for_the_step(tmp_path):
    """In-process: a SIGINT raised from inside the optimizer step (the worst moment)
    stops the run after that step, with the counts equal; the handlers in place
    before ``fit`` are back after it."""
    from numtransformer.train import TrainConfig, Trainer

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    t = Trainer(TrainConfig(**dict(CFG, steps=50)), out_dir=str(tmp_path / "run"),
                stream=open(os.devnull, "w"))
    real = t.optimizer.step
    calls = {"n": 0}

    def step():  # half the parameters updated when the signal comes
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        real()

    t.optimizer.step = step
    result = t.fit()
    t.close()
    assert result["stopped_by"] == "interrupted" and result["signal"] == "SIGINT"
    assert result["steps"] == 7 and t.optimizer.step_count == 7
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    again = Trainer.from_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert again.step == 7 and again.optimizer.step_count == 7


if __name__ == "__main__":
    _worker_main()
