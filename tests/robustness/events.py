"""A worker process spoken to in JSON lines, shared by the kill and interrupt tests.

The test writes one command per line to the worker's stdin; the worker answers
with one JSON line per event on stdout (``{"pid": P}`` when it forked a child for
the command, ``{"pid": P, "exit": S}`` when that child ended, and what else the
command reports).  Lines are read from the raw pipe with a buffer of our own:
select() cannot see lines a buffered reader already holds, and a child's last
event and its exit often arrive together, so select plus ``readline`` could wait
out its whole timeout for a line already read.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

import numpy as np


class EventProcess:
    """``EventProcess(argv, env)``: start the worker and wait for its ``{"ready": ...}``
    line (kept as ``hello``); ``timeout``: the default seconds ``read`` waits."""

    def __init__(self, argv, env, timeout: float = 300.0):
        self.timeout = timeout
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        self._fd, self._buf = self.proc.stdout.fileno(), b""
        self.hello = self.read()
        assert self.hello.get("ready")

    def read(self, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self._fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError("the worker said nothing")
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise RuntimeError("the worker died")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, cmd: dict) -> int:
        """Send a command; returns the pid of the child forked for it."""
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()["pid"]

    def until_exit(self, pid: int) -> list[dict]:
        """The events up to and including child ``pid``'s exit."""
        events = []
        while True:
            e = self.read()
            events.append(e)
            if e.get("event") == "error":
                raise AssertionError(f"the child failed: {e['error']}")
            if e.get("pid") == pid and "exit" in e:
                return events

    def run(self, cmd: dict) -> list[dict]:
        """Send a command and wait for its child to exit with status 0."""
        events = self.until_exit(self.send(cmd))
        assert events[-1]["exit"] == 0, events
        return events

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def load_result(path) -> dict:
    """The arrays a worker's run wrote to ``path`` (.npz)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def same_params(a: dict, b: dict) -> bool:
    """The same parameter names and bits (keys starting "__" are not parameters)."""
    keys = [k for k in a if not k.startswith("__")]
    return keys == [k for k in b if not k.startswith("__")] and all(
        np.array_equal(a[k], b[k]) for k in keys)
