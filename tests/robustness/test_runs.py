"""Faults while training (issue 10): SIGKILL at random moments and at chosen
points inside a checkpoint save, many times over; two runs on one output
directory; determinism across runs, across save/resume and across BLAS
thread counts.

The runs are children forked by ``worker.py`` (a warm interpreter, started
with the BLAS thread variables set), so each kill cycle costs milliseconds of
start-up.  ``NT_KILLS`` sets the number of kills (20 by default, for CI).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numtransformer.checkpoint import load_checkpoint
from numtransformer.train import TrainConfig, Trainer, TrainingError

from .events import EventProcess, load_result, same_params
from .tally import NOTES, RUNS

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the worker forks (POSIX)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
KILLS = int(os.environ.get("NT_KILLS", "20"))

# steps=2000 fixes the learning-rate schedule; the runs stop earlier (fit(until=...))
CFG = dict(task="copy", n_train=300, n_valid=10, n_test=10, d_model=8, nhead=2, layers=1,
           dim_feedforward=16, dropout=0.1, batch_size=8, eval_every=0, checkpoint_every=2,
           eval_examples=10, warmup=5, steps=2000)


def Zygote(threads: int = 1) -> EventProcess:
    """The worker (worker.py) with ``threads`` BLAS threads; ``hello["blas_threads"]``
    is what its BLAS reports."""
    env = dict(os.environ, PYTHONPATH=ROOT, **{v: str(threads) for v in THREAD_VARS})
    return EventProcess([sys.executable, WORKER], env, timeout=120.0)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote(threads=1)
    yield z
    z.close()


# -- SIGKILL, many times over -------------------------------------------------------------------
def test_sigkill_during_training_and_saving_never_loses_the_run(zygote, tmp_path):
    """Each cycle resumes the run (or starts it) and is killed: at a random
    moment, or half-way through writing the checkpoint's temp file, or with it
    written but not flushed, or flushed but not yet renamed into place.  After
    every kill the last checkpoint loads and never goes back in time; at the
    end the run, finished, has exactly the parameters of an uninterrupted run."""
    out = str(tmp_path / "run")
    rng = random.Random(2024)
    points = ["random", "write", "fsync", "rename"]
    last_step, resumed = -1, 0
    for i in range(KILLS):
        point = points[i % len(points)]
        ck_path = os.path.join(out, "checkpoint.npz")
        resumed += os.path.exists(ck_path)
        cmd = {"cmd": "train", "cfg": CFG, "out": out, "until": 10**6}
        if point != "random":
            cmd.update(kill_at=point, kill_after=rng.randint(1, 3))
        pid = zygote.send(cmd)
        if point == "random":
            time.sleep(rng.uniform(0.02, 0.4))
        else:
            e = zygote.read()
            assert e.get("event") == "at" and e["point"] == point, e
        os.kill(pid, signal.SIGKILL)
        events = zygote.until_exit(pid)
        status = events[-1]["exit"]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, events
        RUNS["SIGKILL " + ("at a random moment" if point == "random" else
                           f"inside a save ({point})")] += 1
        if os.path.exists(ck_path):
            ck = load_checkpoint(ck_path)  # raises if torn
            step = ck.meta["step"]
            assert step >= last_step, f"the checkpoint went back from step {last_step} to {step}"
            assert step % CFG["checkpoint_every"] == 0
            last_step = step
        RUNS["checkpoints verified after a kill"] += os.path.exists(ck_path)
    assert last_step > 0, "no checkpoint survived: the kills came too early"
    # finish: resume once more, without a kill, a few steps past the last checkpoint
    until = last_step + 6
    final = str(tmp_path / "final.npz")
    zygote.run({"cmd": "train", "cfg": CFG, "out": out, "until": until, "result": final})
    resumed += 1
    straight = str(tmp_path / "straight.npz")
    zygote.run({"cmd": "train", "cfg": CFG, "out": None, "until": until, "result": straight})
    a, b = load_result(final), load_result(straight)
    assert int(a["__start__"]) == last_step
    # the losses of the last session are the uninterrupted run's, bit for bit
    np.testing.assert_array_equal(a["__losses__"], b["__losses__"][last_step:until])
    assert same_params(a, b), "the resumed run's parameters differ from the uninterrupted run's"
    leftovers = [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert not leftovers, f"temp files of killed saves were left behind: {leftovers}"
    RUNS["runs resumed"] += resumed
    RUNS["resumed runs equal to the uninterrupted run (np.array_equal)"] += 1
    NOTES["kill loop"] = {"kills": KILLS, "last checkpoint step": last_step,
                          "finished at step": until}


# -- two runs, one directory --------------------------------------------------------------------
def test_a_second_process_on_the_same_directory_refuses(zygote, tmp_path):
    out = str(tmp_path / "run")
    pid = zygote.send({"cmd": "train", "cfg": CFG, "out": out, "until": 10**6,
                       "kill_at": "rename", "kill_after": 2})
    assert zygote.read().get("event") == "at"  # the first run is alive, mid-save, locked
    try:
        with pytest.raises(TrainingError, match=f"in use by another run \\(pid {pid}\\)"):
            Trainer(TrainConfig(**dict(CFG, checkpoint_every=0)), out_dir=out)
        with pytest.raises(TrainingError, match="in use by another run"):
            Trainer.resume(out)
        env = dict(os.environ, PYTHONPATH=ROOT, **{v: "1" for v in THREAD_VARS})
        cli = subprocess.run([sys.executable, "-m", "numtransformer", "train", "--out", out,
                              "--resume", "--steps", "5"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert cli.returncode == 2 and "in use by another run" in cli.stderr, cli
        assert cli.stderr.count("\n") <= 1  # one line, no traceback
        RUNS["second runs refused while the first was alive"] += 3
    finally:
        os.kill(pid, signal.SIGKILL)
        zygote.until_exit(pid)
    # the first run is dead: its lock went with it, and its checkpoint resumes
    t = Trainer.resume(out, stream=open(os.devnull, "w"))
    assert t.step == 2
    t.close()


@pytest.mark.parametrize("stale", ["none", "dead pid", "empty", "garbage"])
def test_runs_starting_together_cannot_both_take_the_directory(zygote, tmp_path, stale):
    """Six processes lock the directory at the same instant, with or without a
    lock file left behind by a dead run: exactly one wins.  (The old pid-file
    lock let two win when both found the stale file and both took it over.)"""
    d = str(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    content = {"none": None, "dead pid": str(dead.pid), "empty": "", "garbage": "x\0y"}[stale]
    if content is not None:
        with open(os.path.join(d, ".lock"), "w") as f:
            f.write(content)
    events = zygote.run({"cmd": "contend", "dir": d, "n": 6, "hold": 0.4})
    results = [e for e in events if e.get("event") == "lock"]
    assert len(results) == 6
    assert sum(e["won"] for e in results) == 1, results
    assert all("in use by another run" in e["message"] for e in results if not e["won"])
    RUNS["simultaneous starts (6 processes): exactly one won"] += 1


# -- determinism --------------------------------------------------------------------------------
def test_same_seed_same_bits_across_runs_and_across_save_resume(zygote, tmp_path):
    cfg = dict(CFG, checkpoint_every=0)
    r = [str(tmp_path / f"r{i}.npz") for i in range(3)]
    zygote.run({"cmd": "train", "cfg": cfg, "out": None, "until": 24, "result": r[0]})
    zygote.run({"cmd": "train", "cfg": cfg, "out": None, "until": 24, "result": r[1]})
    out = str(tmp_path / "run")
    zygote.run({"cmd": "train", "cfg": cfg, "out": out, "until": 11})  # saves at the end
    zygote.run({"cmd": "train", "cfg": cfg, "out": out, "until": 24, "result": r[2]})
    a, b, c = (load_result(p) for p in r)
    np.testing.assert_array_equal(a["__losses__"], b["__losses__"])
    assert same_params(a, b)
    np.testing.assert_array_equal(c["__losses__"], a["__losses__"][11:])
    assert same_params(a, c)
    RUNS["runs resumed"] += 1


def test_blas_threads_change_results_only_by_rounding(tmp_path):
    """The same run with 1 and with 2 BLAS threads (fresh interpreters, the
    thread variables set before numpy loads): each is reproducible on its own;
    between them only float rounding differs, measured and recorded.

    One tensor is exempt from the tight bound: the key bias b_k (the middle
    block of every in_proj.b).  Softmax is shift invariant, so its exact
    gradient is zero and what backward computes is rounding noise (~1e-9);
    Adam divides by sqrt(v) and turns that noise into steps of size ~lr, so a
    different rounding moves it by up to lr per step.  NT_BLAS_BIG=1 measures
    a larger model (d_model 256, batch 128, 20 steps), where two threads do
    round differently."""
    big = os.environ.get("NT_BLAS_BIG") == "1"
    cfg = dict(CFG, d_model=64, nhead=4, dim_feedforward=128, batch_size=64, n_train=1000,
               checkpoint_every=0, dropout=0.0)
    if big:
        cfg.update(d_model=256, nhead=8, dim_feedforward=1024, batch_size=128, n_train=3000,
                   task="reverse")
    steps = 20 if big else 8
    runs, seen = {}, {}
    for threads in (1, 2):
        z = Zygote(threads=threads)
        seen[threads] = z.hello.get("blas_threads")
        try:
            for k in range(2):
                p = str(tmp_path / f"t{threads}-{k}.npz")
                z.run({"cmd": "train", "cfg": cfg, "out": None, "until": steps, "result": p})
                runs[threads, k] = load_result(p)
        finally:
            z.close()
    for threads in (1, 2):  # reproducible at a fixed thread count
        assert same_params(runs[threads, 0], runs[threads, 1])
        np.testing.assert_array_equal(runs[threads, 0]["__losses__"],
                                      runs[threads, 1]["__losses__"])
    one, two = runs[1, 0], runs[2, 0]
    E = cfg["d_model"]
    diff = {k: np.abs(one[k] - two[k]) for k in one if not k.startswith("__")}
    key_bias = max(float(d[E:2 * E].max()) for k, d in diff.items() if k.endswith("in_proj.b"))
    others = max(float(np.where(np.arange(d.size).reshape(d.shape) // E == 1, 0, d).max())
                 if k.endswith("in_proj.b") else float(d.max()) for k, d in diff.items())
    loss_diff = float(np.max(np.abs(one["__losses__"] - two["__losses__"])))
    NOTES["BLAS 1 vs 2 threads"] = {
        "run": f"{steps} AdamW steps, d_model={cfg['d_model']}, batch {cfg['batch_size']}, "
               f"float32", "thread pools seen": seen,
        "bit-identical": bool(same_params(one, two)), "max |loss difference|": loss_diff,
        "max |parameter difference| (key biases excepted)": others,
        "max |key bias difference|": key_bias}
    for threads, pools in seen.items():  # (threadpoolctl, when installed, shows the pool)
        assert pools is None or all(n == threads for n in pools.values()), seen
    assert loss_diff < 1e-5 and others < 1e-6, NOTES["BLAS 1 vs 2 threads"]
    assert key_bias <= 2 * TrainConfig(**cfg).lr * steps
