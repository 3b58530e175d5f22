"""A zygote for the kill and determinism tests: ``python worker.py`` imports
numtransformer once, then forks one child per command it reads (a JSON line on
stdin) and reports on stdout, one JSON line per event:

    {"pid": P}                          a child was forked for the command
    {"pid": P, "event": "at", ...}      the child reached its kill point and waits
    {"pid": P, "exit": S}               the child ended (S: its wait status)

Forking from a warm process costs milliseconds where a fresh interpreter costs
half a second, so twenty kill cycles fit in seconds.  The parent (the test)
sets the BLAS thread variables before it starts this process.

Commands:
    train     resume ``out`` if it holds a checkpoint, else start it; train to
              ``until``; write every step's loss and, at the end, the parameters
              to ``result``.  ``kill_at`` ("write": half-way through writing the
              checkpoint's temp file, "fsync": the temp file written, not yet
              flushed, "rename": flushed, not yet renamed into place) and
              ``kill_after`` (the n-th time there): stop there and wait to be killed.
    contend   ``n`` processes try to lock ``dir`` at once; each reports whether it won.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import numtransformer.checkpoint as ckpt
from numtransformer.train import TrainConfig, Trainer, TrainingError, _Lock


def say(obj) -> None:
    os.write(1, (json.dumps(obj) + "\n").encode())  # one write: lines never interleave


def _stop_at(point: str, after: int) -> None:
    """Patch the checkpoint writer so the ``after``-th save stops at ``point``."""
    seen = {"n": 0}

    def reached():
        seen["n"] += 1
        if seen["n"] == after:
            say({"pid": os.getpid(), "event": "at", "point": point})
            time.sleep(60)  # the parent kills us here

    if point == "write":
        real_savez = np.savez

        class HalfWay:
            """A file that stops the process half-way through the zip being written."""

            def __init__(self, f, budget):
                self._f, self._budget = f, budget

            def write(self, b):
                self._budget -= len(b)
                if self._budget < 0:
                    self._budget = float("inf")
                    reached()
                return self._f.write(b)

            def __getattr__(self, name):
                return getattr(self._f, name)

        def savez(f, **arrays):
            total = sum(np.asarray(a).nbytes for a in arrays.values())
            return real_savez(HalfWay(f, total // 2), **arrays)

        ckpt.np.savez = savez
    elif point == "fsync":
        real_fsync = os.fsync

        def fsync(fd):
            reached()
            return real_fsync(fd)

        ckpt.os.fsync = fsync
    elif point == "rename":
        real_replace = os.replace

        def replace(a, b):
            reached()
            return real_replace(a, b)

        ckpt.os.replace = replace


def train(cmd: dict) -> None:
    cfg = TrainConfig(**cmd["cfg"])
    out = cmd.get("out")
    if cmd.get("kill_at"):
        _stop_at(cmd["kill_at"], cmd.get("kill_after", 1))
    null = open(os.devnull, "w")
    if out and os.path.exists(os.path.join(out, "checkpoint.npz")):
        t = Trainer.resume(out, stream=null)
    else:
        t = Trainer(cfg, out_dir=out, stream=null)
    start = t.step
    losses = []
    real_step = t.train_step

    def step(batch):
        loss = real_step(batch)
        losses.append(loss)
        return loss

    t.train_step = step
    t.fit(until=cmd["until"])
    t.close()
    if cmd.get("result"):
        np.savez(cmd["result"], __losses__=np.array(losses), __start__=np.array(start),
                 **{n: p.data for n, p in t.model.named_parameters()})


def contend(cmd: dict) -> None:
    """``n`` processes try to lock ``dir`` at the same instant; each holds what it
    got for ``hold`` seconds (so a late one cannot win after an early one let go)."""
    t0 = time.time() + 0.2
    kids = []
    for _ in range(cmd["n"]):
        pid = os.fork()
        if pid == 0:
            while time.time() < t0:
                pass
            try:
                held = _Lock(cmd["dir"]).acquire()
            except TrainingError as exc:
                say({"pid": os.getpid(), "event": "lock", "won": False, "message": str(exc)})
                os._exit(0)
            say({"pid": os.getpid(), "event": "lock", "won": True})
            time.sleep(cmd["hold"])
            held.release()
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)


def _blas_threads():
    """The BLAS thread pool sizes in effect (threadpoolctl, when installed)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return {i["internal_api"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}


def main() -> None:
    say({"ready": True, "blas_threads": _blas_threads()})
    for line in sys.stdin:
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                {"train": train, "contend": contend}[cmd["cmd"]](cmd)
            except BaseException as exc:  # noqa: BLE001 - reported, then a hard exit
                say({"pid": os.getpid(), "event": "error", "error": repr(exc)})
                code = 1
            os._exit(code)
        say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        say({"pid": pid, "exit": status})


if __name__ == "__main__":
    main()
