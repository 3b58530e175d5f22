"""Data-parallel training over MPI (``numtransformer/train/distributed.py``) and
the time-budget schedule (``train/budget.py``).

The MPI tests start ``mpiexec -n 2`` subprocesses and skip when mpi4py or
mpiexec is missing (``pip install ".[mpi]"``)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from numtransformer.checkpoint import load_checkpoint
from numtransformer.cli import main
from numtransformer.train import TrainConfig, make_trainer
from numtransformer.train import distributed
from numtransformer.train.budget import BudgetSchedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import mpi4py  # noqa: F401
    HAVE_MPI = shutil.which("mpiexec") is not None
except ImportError:
    HAVE_MPI = False
needs_mpi = pytest.mark.skipif(not HAVE_MPI,
                               reason='needs mpi4py and mpiexec: pip install ".[mpi]"')

# one model of each kind, tiny; dropout 0 so that N ranks and one process compute the same thing
CASES = {
    "transformer": dict(task="copy", model="transformer", d_model=16, nhead=2, layers=1,
                        dim_feedforward=32, n_train=200, n_valid=10, n_test=10),
    "seq2seq": dict(task="reverse", model="seq2seq", d_model=16, hidden_size=16, n_train=200,
                    n_valid=10, n_test=10),
    "lm": dict(task="text:hamlet", model="lm", d_model=16, nhead=2, layers=1, dim_feedforward=32,
               context=16),
}

WORKER = textwrap.dedent('''
    import sys
    import numpy as np
    from numtransformer.train import TrainConfig, make_trainer
    from numtransformer.train.distributed import world
    from test_distributed import CASES, train_20

    res = {}
    for name in CASES:
        for dtype in ("float64", "float32"):
            res.update({f"{name}/{dtype}/{k}": v for k, v in train_20(name, dtype).items()})
    if world().rank == 0:
        np.savez(sys.argv[1], **res)
''')


def train_20(name, dtype, batch=9):
    """20 AdamW steps of a global batch of ``batch`` (9: 4 and 5 rows on two ranks,
    and the seq2seq tasks' padding leaves each rank its own token count)."""
    cfg = TrainConfig(steps=20, batch_size=batch, dropout=0.0, eval_every=0, checkpoint_every=0,
                      dtype=dtype, warmup=5, **CASES[name])
    t = make_trainer(cfg, log=lambda *a: None, stream=open(os.devnull, "w"))
    while t.step < 20:
        t.train_step(next(t.batches))
    return {k: p.data.copy() for k, p in t.model.named_parameters()}


def _env(threads="1"):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                         env.get("PYTHONPATH", "")])
    return env


def _mpiexec(n, args, cwd, timeout=120):
    return subprocess.run(["mpiexec", "-n", str(n), sys.executable, *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _cli(args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "numtransformer", "train", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


def _without_key_bias(name, a):
    """A fused in_proj bias without its key third: the key bias's exact gradient
    is zero (softmax ignores a constant added to every score), so what it gets is
    rounding noise, which Adam scales up to steps of the learning rate's size."""
    if name.endswith("in_proj.b"):
        n = a.shape[-1] // 3
        return np.concatenate([a[..., :n], a[..., 2 * n:]], -1)
    return a


@needs_mpi
def test_two_ranks_equal_one_process_after_20_adamw_steps(tmp_path):
    out = tmp_path / "two.npz"
    r = _mpiexec(2, ["-c", WORKER, str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    two = np.load(out)
    worst = {}
    for name in CASES:
        for dtype in ("float64", "float32"):
            one = train_20(name, dtype)
            for k, ref in one.items():
                got = two[f"{name}/{dtype}/{k}"]
                assert got.dtype == ref.dtype
                err = _rel(_without_key_bias(k, got), _without_key_bias(k, ref))
                worst[name, dtype] = max(worst.get((name, dtype), 0.0), err)
    print("worst relative difference, 2 ranks vs 1 process:", worst)
    for name in CASES:
        assert worst[name, "float64"] <= 1e-12, (name, worst)
        # float32: the float64 differences scaled by the ratio of the two epsilons
        # (Adam's 1/sqrt(v) amplifies rounding alike in both)
        assert worst[name, "float32"] <= 5e-3, (name, worst)


def _params(path):
    return load_checkpoint(os.path.join(path, "checkpoint.npz")).params


SMALL = ["--task", "copy", "--batch-size", "8", "--d-model", "16", "--nhead", "2", "--layers",
         "1", "--ff", "32", "--n-train", "200", "--n-valid", "20", "--n-test", "20",
         "--eval-every", "10", "--schedule", "constant", "--dropout", "0"]


@needs_mpi
def test_rank_0_alone_reports_and_saves_and_resume_with_the_same_n_is_exact(tmp_path):
    straight = _cli(SMALL + ["--steps", "20", "--nproc", "2", "--out", "straight"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    text = straight.stdout
    assert text.count("data-parallel: 2 ranks") == 1
    assert text.count("step 10: valid loss") == 1  # evaluated once (rank 0), not per rank
    assert text.count("test loss") == 1 and text.count("saved: ") == 1
    assert sorted(os.listdir(tmp_path)) == ["straight"]
    half = _cli(SMALL + ["--steps", "10", "--nproc", "2", "--out", "half"], tmp_path)
    assert half.returncode == 0, half.stderr[-2000:]
    ck = load_checkpoint(str(tmp_path / "half" / "checkpoint.npz"))
    assert ck.config["train"]["nproc"] == 2
    rest = _cli(["--out", "half", "--resume", "--steps", "20", "--nproc", "2"], tmp_path)
    assert rest.returncode == 0, rest.stderr[-2000:]
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "half")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # another N: the same global batches, so the same run up to rounding (with a note)
    other = _cli(SMALL + ["--steps", "10", "--nproc", "2", "--out", "other"], tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    one = _cli(["--out", "other", "--resume", "--steps", "20"], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "this run trained on 2 rank(s) and continues on 1" in one.stdout
    c = _params(tmp_path / "other")
    assert max(_rel(_without_key_bias(k, c[k]), _without_key_bias(k, a[k])) for k in a) < 1e-3


@needs_mpi
def test_a_killed_rank_stops_the_others_and_resume_finishes_the_run(tmp_path):
    # with dropout: each rank's masks come back on resume (seeded by rank and step)
    args = SMALL + ["--eval-every", "0", "--checkpoint-every", "20", "--dtype", "float64",
                    "--dropout", "0.1"]
    ref = _cli(args + ["--steps", "200", "--nproc", "2", "--out", "ref"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "numtransformer", "train", *args, "--steps",
                             "200", "--nproc", "2", "--out", "run"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids, seen = None, []
    ck = tmp_path / "run" / "checkpoint.npz"
    for line in proc.stdout:
        seen.append(line)
        found = re.search(r"rank 1 pid (\d+)", line)
        if found:
            pids = int(found.group(1))
        if pids and ck.exists():
            break
    assert pids, "".join(seen)
    os.kill(pids, signal.SIGKILL)
    killed_at = time.monotonic()
    out, err = proc.communicate(timeout=60)
    waited = time.monotonic() - killed_at
    assert proc.returncode != 0
    assert waited < 20, waited  # no hang: mpiexec stops the other rank
    assert f"rank 1 (pid {pids} on" in err, err[-2000:]
    saved = load_checkpoint(str(ck))  # intact
    assert 20 <= saved.meta["step"] < 200
    rest = _cli(["--out", "run", "--resume", "--nproc", "2"], tmp_path)
    assert rest.returncode == 0, rest.stderr[-2000:]
    a, b = _params(tmp_path / "ref"), _params(tmp_path / "run")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_without_mpi4py_one_line_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    assert main(["train", "--nproc", "2", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install ".[mpi]"' in err
    monkeypatch.setenv("PMI_SIZE", "2")  # started by mpiexec, but no mpi4py
    monkeypatch.setattr(distributed, "_WORLD", None)
    assert main(["train", "--task", "copy", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mpi4py is not installed" in err


def test_a_config_error_under_nproc_is_one_message_and_starts_no_rank(monkeypatch, capsys,
                                                                     tmp_path):
    """The launcher checks the configuration itself: one error line, not one per rank."""
    def no_mpiexec(*args, **kwargs):
        raise AssertionError("mpiexec was started for a configuration that cannot run")

    monkeypatch.setattr(distributed, "mpiexec_command", no_mpiexec)
    assert main(["train", "--nproc", "2", "--d-model", "30", "--nhead", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not divisible by nhead=4" in err, err
    # --resume: the checkpoint and the settings it resumes with are checked there too
    missing = str(tmp_path / "none")
    assert main(["train", "--nproc", "2", "--resume", "--out", missing]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err, err
    run = str(tmp_path / "run")
    assert main(["train", "--task", "copy", "--steps", "2", "--eval-every", "0", "--d-model",
                 "16", "--nhead", "2", "--layers", "1", "--ff", "32", "--n-train",
                 "50", "--n-valid", "5", "--n-test", "5", "--out", run]) == 0
    capsys.readouterr()
    assert main(["train", "--nproc", "2", "--resume", "--out", run, "--d-model", "15"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not divisible by nhead=2" in err, err


def test_one_process_costs_nothing():
    w = distributed.World()
    assert (w.rank, w.size, w.is_root) == (0, 1, True)
    batch = object()
    assert w.shard(batch) is batch
    assert w.average_gradients([], 1.5, 10) == 1.5 and w.agree(3.0, None) == (3.0, None)


# -- the time-budget schedule ------------------------------------------------------------------
TINY = dict(task="copy", d_model=16, nhead=2, layers=1, dim_feedforward=32, n_train=100,
            n_valid=10, n_test=10, batch_size=8, eval_every=0, checkpoint_every=0, warmup=5)


class StepClock:
    """perf_counter reading 2**-7 s per step the trainer has taken (sums of it are
    exact): every run reads the same times at the same steps, resumed or not."""

    def __init__(self):
        self.trainer = None

    def __call__(self):
        return 1000.0 + (self.trainer.step if self.trainer else 0) * 2.0 ** -7


def test_budget_schedule_decays_with_the_clock():
    t = [0.0]
    s = BudgetSchedule(1e-3, 10, 100.0, elapsed=lambda: t[0])
    assert s(5) == pytest.approx(5e-4)  # warmup, by steps
    t[0] = 50.0
    assert s(100) == pytest.approx(1e-3 * (0.02 + 0.98 * 0.5))
    t[0] = 100.0
    assert s(10**6) == pytest.approx(2e-5)
    capped = BudgetSchedule(1e-3, 10, 100.0, elapsed=lambda: 0.0, steps=200)
    assert capped(200) == pytest.approx(2e-5)  # the steps run out first: decayed by then


def test_time_budget_run_ends_at_a_low_rate_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    from numtransformer.train import Trainer, loop

    clock = StepClock()
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    cfg = TrainConfig(steps=10**6, time_budget=1.0, lr=1e-3, **TINY)
    a = clock.trainer = make_trainer(cfg, out_dir=str(tmp_path / "a"),
                                     stream=open(os.devnull, "w"))
    lrs = []
    step = a.train_step
    a.train_step = lambda batch: (step(batch), lrs.append(a.optimizer.lr))[0]
    result = a.fit()
    a.close()
    assert result["stopped_by"] == "time budget" and result["steps"] == 128
    assert lrs[-1] < 0.05 * cfg.lr and max(lrs) > 0.9 * cfg.lr
    assert any("time budget of 1 s reached at step 128" in line for line in a.end_lines(result))
    b = clock.trainer = make_trainer(TrainConfig(steps=10**6, time_budget=1.0, lr=1e-3, **TINY),
                                     out_dir=str(tmp_path / "b"), stream=open(os.devnull, "w"))
    b.fit(until=50)
    b.close()
    c = clock.trainer = Trainer.resume(str(tmp_path / "b"), stream=open(os.devnull, "w"))
    assert c.seconds == 50 * 2.0 ** -7  # the elapsed time came back from the checkpoint
    again = c.fit()
    c.close()
    assert again["steps"] == result["steps"]
    pa, pc = dict(a.model.named_parameters()), dict(c.model.named_parameters())
    assert all(np.array_equal(pa[k].data, pc[k].data) for k in pa)
