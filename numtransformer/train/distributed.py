"""Data-parallel training over MPI: the communicator a ``Trainer`` uses.

    mpiexec -n 2 numtransformer train ...      # or: numtransformer train --nproc 2 ...

Every rank builds the same data, model and optimizer from the same config and
seed, draws the same global batch of ``batch_size`` examples, and trains on
its shard of it: rank r of N takes rows ``[r * B // N, (r + 1) * B // N)``
(``shard``), padded as in the global batch, so each row is computed as one
process would compute it.  After the backward pass ``average_gradients`` sums,
in one ``Allreduce`` over a flat buffer,

    n_r * g_r   (each trainable parameter's gradient times the rank's token count)
    n_r         (the rank's count of target tokens, padding excluded)
    n_r * L_r   (its loss times its token count)

and divides by the summed count: every rank then holds the gradient of the
global batch's mean loss, and the global batch's loss, whatever the padding
left to each rank.  Clipping, the schedule and the optimizer step run on equal
numbers on every rank, so the parameters stay equal without being sent.

Rank 0 alone prints, evaluates and writes checkpoints (``is_root``); the
training clock and stop request are rank 0's, sent to the others each step
(``agree``), so every rank takes the same time-budget decision, learning rate
and interrupt at the same step.  Ranks other than 0 block SIGINT and SIGTERM:
signal rank 0 (Ctrl-C reaches it; so does a signal to its pid), and the run
stops at a step boundary on every rank and rank 0 saves.

Dropout with N > 1 ranks: before each step, each dropout generator of rank r
is seeded ``[seed, 0x0D, r, step, i]`` (i: the generator's position in the
module tree; ``reseed_dropout``), so a rank's masks are a function of (seed,
rank, step) and a resumed run draws the ones it would have drawn.  One
process keeps the generators' own streams (saved in the checkpoint) as before.

Without MPI (no launcher variables in the environment) ``world()`` is a
single process: nothing is imported, ``average_gradients`` returns at once.
"""

from __future__ import annotations

import os
import socket
import sys

import numpy as np

from .errors import UserError

__all__ = ["World", "world", "launched_by_mpi", "MPIUnavailable", "MPI_INSTALL"]

MPI_INSTALL = 'pip install ".[mpi]"  (mpi4py and the MPICH wheel, which brings mpiexec)'

# what MPI launchers put in each rank's environment (MPICH/Hydra, Open MPI, PMIx, Slurm)
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class MPIUnavailable(UserError):
    """mpi4py (or mpiexec) is missing: the message says what to install."""


def launched_by_mpi() -> bool:
    """True when this process is a rank started by an MPI launcher."""
    return any(os.environ.get(v) for v in _SIZE_VARS)


class World:
    """The ranks of a data-parallel run (one process: ``rank`` 0, ``size`` 1)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._buf = None
        self._clock = np.zeros(2)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, batch):
        """This rank's rows of a global batch (the whole batch for one process)."""
        if self.size == 1:
            return batch
        fields = vars(batch)
        rows = next(iter(fields.values())).shape[0]
        if rows < self.size:
            raise ValueError(f"a batch of {rows} examples cannot be shared by {self.size} "
                             f"ranks: use --batch-size >= {self.size}")
        lo, hi = self.rank * rows // self.size, (self.rank + 1) * rows // self.size
        return type(batch)(**{k: v[lo:hi] for k, v in fields.items()})

    def average_gradients(self, params, loss: float, n_tokens: int) -> float:
        """Replace each trainable parameter's gradient (of this rank's mean loss
        over ``n_tokens`` tokens) by the gradient of the global batch's mean
        loss, in one Allreduce; return the global batch's mean loss."""
        if self.size == 1:
            return loss
        from mpi4py import MPI

        params = _unique_trainable(params)
        dtype = params[0].grad.dtype
        total = sum(p.grad.size for p in params) + 2
        if self._buf is None or self._buf.size != total or self._buf.dtype != dtype:
            self._buf = np.empty(total, dtype=dtype)
        buf, off, n = self._buf, 0, float(n_tokens)
        for p in params:
            size = p.grad.size
            np.multiply(p.grad.reshape(-1), n, out=buf[off:off + size])
            off += size
        buf[off], buf[off + 1] = n, n * loss
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        count = buf[off]
        if count <= 0:  # every target of the global batch was padding
            count = 1.0
        off = 0
        for p in params:
            size = p.grad.size
            np.divide(buf[off:off + size].reshape(p.grad.shape), count, out=p.grad)
            off += size
        return float(buf[off + 1]) / float(count)

    def agree(self, seconds: float, requested: int | None = None):
        """-> (seconds, requested): rank 0's training clock and stop request (a
        signal number or None) on every rank, so that every rank takes the same
        time-budget and interrupt decisions at the same step."""
        if self.size == 1:
            return seconds, requested
        self._clock[0] = seconds
        self._clock[1] = requested or 0
        self.comm.Bcast(self._clock, root=0)
        return float(self._clock[0]), (int(self._clock[1]) or None)

    def reseed_dropout(self, model, seed: int, step: int) -> None:
        """With several ranks: every generator in the model tree seeded from
        (seed, rank, step, its position), so that rank's masks at that step."""
        if self.size == 1:
            return
        i = 0
        for _, m in model.named_modules():
            for attr, value in list(vars(m).items()):
                if isinstance(value, np.random.Generator):
                    setattr(m, attr, np.random.default_rng([seed, 0x0D, self.rank, step, i]))
                    i += 1

    def pids(self) -> list[tuple[int, str]]:
        """(pid, host) of every rank, in rank order (a collective)."""
        mine = (os.getpid(), socket.gethostname())
        return [mine] if self.size == 1 else self.comm.allgather(mine)

    def abort(self, code: int = 1) -> None:
        """Stop every rank (after this rank has said why)."""
        if self.size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            self.comm.Abort(code)


def _unique_trainable(params) -> list:
    seen, out = set(), []
    for p in params:
        if getattr(p, "requires_grad", True) and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


_WORLD: World | None = None


def world() -> World:
    """The run's ranks: MPI's COMM_WORLD under an MPI launcher, else one process
    (without importing mpi4py).  Under a launcher without mpi4py: ``MPIUnavailable``."""
    global _WORLD
    if _WORLD is None:
        if not launched_by_mpi():
            _WORLD = World()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                raise MPIUnavailable(f"this process was started by mpiexec but mpi4py is not "
                                     f"installed: {MPI_INSTALL}") from None
            comm = MPI.COMM_WORLD
            _WORLD = World(comm if comm.Get_size() > 1 else None)
    return _WORLD


def mpiexec_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``argv`` (a Python command line) on ``nproc`` ranks;
    ``MPIUnavailable`` names what to install when mpiexec or mpi4py is missing."""
    import shutil

    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise MPIUnavailable(f"--nproc needs mpi4py: {MPI_INSTALL}") from None
    exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        raise MPIUnavailable(f"--nproc needs mpiexec on the PATH: {MPI_INSTALL}")
    return [exe, "-n", str(nproc), *argv]
