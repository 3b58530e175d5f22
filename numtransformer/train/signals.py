"""Interrupts taken at step boundaries: SIGINT (Ctrl-C) and SIGTERM during ``fit``.

    with StopRequests() as stop:       # installs the handlers, restores them after
        while ...:
            train_step()               # never cut in half: the handler only notes it
            if stop.requested:         # read after the step has finished
                break
        save()                         # a second signal here waits for the file

Python runs a signal handler between bytecodes of the main thread.  The
default SIGINT handler raises ``KeyboardInterrupt`` there, which can land
between ``optimizer.step()`` and the step counter's increment, or inside
AdamW's loop over the parameters (half of them updated): a state no loader
can tell from a good one.  These handlers raise nothing; they record the
first signal, and the loop stops at the next step boundary, saves and
returns.  Further signals only say that the run is already stopping.

Handlers can be installed only from the main thread; elsewhere (a trainer run
in a worker thread) ``StopRequests`` does nothing and ``requested`` stays
None.  The exit status of an interrupted ``numtransformer train`` is
``128 + signal number``: 130 for SIGINT, 143 for SIGTERM (``exit_status``).
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["StopRequests", "exit_status", "SIGNALS"]

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                if s is not None)


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by signal ``signum`` (130 for SIGINT)."""
    return 128 + int(signum)


class StopRequests:
    """A context manager: while active, SIGINT and SIGTERM set ``requested`` (the
    first signal's number) instead of raising; the previous handlers come back
    on exit."""

    def __init__(self, signals=SIGNALS, note=None):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self.count = 0
        self._previous: dict = {}
        # what a repeated signal writes (to fd 2: a raw write is safe in a handler)
        self._note = note or ("numtransformer: already stopping; the run stops at the "
                              "end of this step and saves (wait for the file to be written)\n")

    @property
    def name(self) -> str | None:
        """The first signal's name (``"SIGINT"``), or None."""
        return None if self.requested is None else signal.Signals(self.requested).name

    def _handle(self, signum, frame):  # noqa: ARG002 - the signal module's signature
        self.count += 1
        if self.requested is None:
            self.requested = signum
            return
        try:
            os.write(2, self._note.encode())
        except OSError:  # pragma: no cover - stderr closed
            pass

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self
        for s in self.signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except (ValueError, OSError):  # pragma: no cover - not settable here
                pass
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        while self._previous:
            s, previous = self._previous.popitem()
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
