"""Data-parallel training throughput: two cores used as 1 process x 2 threads or
as 2 MPI ranks x 1 thread, numtransformer against PyTorch.

    python benchmarks/bench_distributed.py                        # every config, fp32
    python benchmarks/bench_distributed.py --configs tx-tiny,rnn-attn --rounds 2

For each config of ``bench_train.py`` (the same models, built by its
``build_ours`` / ``build_torch``, the same random batch of B sequences, no
padding, dropout 0) four arrangements train the global batch B:

* ``ours 1x2``: one process, 2 BLAS threads (numtransformer's row blocks too);
* ``ours 2x1``: ``mpiexec -n 2``, one thread each, each rank half the batch,
  the gradients averaged by ``World.average_gradients`` (one token-weighted
  Allreduce over a flat buffer), then AdamW on every rank: what
  ``numtransformer train --nproc 2`` does each step;
* ``torch 2t``: one process, ``torch.set_num_threads(2)``;
* ``DDP 2x1``: two processes of one thread, ``DistributedDataParallel`` with
  the gloo backend, half the batch each (started by mpiexec, which only
  supplies the rank; gloo does the communication over TCP on localhost).

Tokens per second = B * T (target tokens of the global batch) / the median
step time (forward, loss, backward, gradient exchange, optimizer) over
``--steps`` steps after ``--warmup``; under MPI the step ends when the
Allreduce does, so rank 0's time is the slowest rank's.  Each round runs the
four arrangements back to back, each in fresh processes; with ``--rounds`` > 1
the cell is the median over the rounds.  On a shared machine the absolute
numbers move; the arrangements measured side by side are what compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_train as bt  # noqa: E402  (the configs and the two frameworks' models)

LR = 1e-4


def _tokens(c):
    return c["B"] * c["T"]


def _shard(b, rank, size):
    rows = next(iter(b.values())).shape[0]
    lo, hi = rank * rows // size, (rank + 1) * rows // size
    return {k: v[lo:hi] for k, v in b.items()}


def worker_ours(spec):
    import numpy as np

    from numtransformer._malloc import keep_freed_memory
    from numtransformer.losses import CrossEntropyLoss
    from numtransformer.optim import AdamW
    from numtransformer.train.distributed import world

    keep_freed_memory()
    w = world()
    c = spec["config"]
    model, fwd = bt.build_ours(c, np.dtype(spec["dtype"]))
    b = _shard(bt.batch(c), w.rank, w.size)
    n_tokens = b["targets"].size
    loss_fn = CrossEntropyLoss(ignore_index=0)
    opt = AdamW(model, lr=LR, weight_decay=0.01)
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        logits, cache = fwd(b)
        loss, lcache = loss_fn.forward(logits, b["targets"])
        opt.zero_grad()  # as Trainer.train_step: the optimizer holds every parameter
        model.backward(loss_fn.backward(1.0, lcache), cache)
        del cache, lcache, logits
        w.average_gradients(opt.params, float(loss), n_tokens)
        opt.step()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    if w.is_root:
        print(json.dumps({"step": statistics.median(times)}))


def worker_torch(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    import warnings

    warnings.filterwarnings("ignore")
    c = spec["config"]
    rank, size = int(os.environ.get("PMI_RANK", 0)), int(os.environ.get("PMI_SIZE", 1))
    model, _ = bt.build_torch(c, spec["dtype"])
    if size > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{spec['port']}",
                                rank=rank, world_size=size)
        model = DistributedDataParallel(model)
    fwd = ((lambda b: model(b["ids"])) if c["kind"] == "lm"
           else (lambda b: model(b["src"], b["tgt_in"])))
    b = {k: torch.from_numpy(v) for k, v in _shard(bt.batch(c), rank, size).items()}
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    times = []
    for i in range(spec["warmup"] + spec["steps"]):
        t0 = time.perf_counter()
        logits = fwd(b)
        loss = loss_fn(logits.reshape(-1, c["V"]), b["targets"].reshape(-1))
        opt.zero_grad()
        loss.backward()  # DDP: the gradients are averaged in buckets during backward
        opt.step()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"step": statistics.median(times)}))
    if size > 1:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(kind, spec, nproc, threads, timeout=600):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    spec = dict(spec, threads=threads, port=_free_port())
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--spec",
           json.dumps(spec)]
    if nproc > 1:
        cmd = [shutil.which("mpiexec"), "-n", str(nproc), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} x{nproc} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["step"]


ARRANGEMENTS = (("ours 1x2", "ours", 1, 2), ("ours 2x1", "ours", 2, 1),
                ("torch 2t", "torch", 1, 2), ("DDP 2x1", "torch", 2, 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(bt.CONFIGS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--worker")
    p.add_argument("--spec")
    args = p.parse_args()
    if args.worker:
        spec = json.loads(args.spec)
        return (worker_ours if args.worker == "ours" else worker_torch)(spec)
    if shutil.which("mpiexec") is None:
        sys.exit('bench_distributed: needs mpiexec and mpi4py: pip install ".[mpi]"')
    have_torch = bt.find_spec("torch") is not None
    start = time.time()
    rows = []
    for name in args.configs.split(","):
        c = bt.CONFIGS[name]
        spec = dict(config=c, dtype=args.dtype, steps=args.steps, warmup=args.warmup)
        cells = {a[0]: [] for a in ARRANGEMENTS}
        for _ in range(args.rounds):
            for label, kind, nproc, threads in ARRANGEMENTS:
                if kind == "torch" and not have_torch:
                    continue
                step = run(kind, spec, nproc, threads)
                cells[label].append(_tokens(c) / step)
                print(f"{name} {label}: {_tokens(c) / step:,.0f} tokens/s", file=sys.stderr,
                      flush=True)
        rows.append((name, {k: statistics.median(v) for k, v in cells.items() if v}))
    heads = [a[0] for a in ARRANGEMENTS]
    print(f"## Training throughput, tokens/s, {args.dtype}, 2 cores "
          f"({time.strftime('%Y-%m-%d %H:%M')}, {time.time() - start:.0f} s; median of "
          f"{args.steps} steps after {args.warmup}, {args.rounds} round(s))\n")
    print("| config | " + " | ".join(heads) + " | best ours / best torch |")
    print("|---|" + "---|" * (len(heads) + 1))
    for name, cell in rows:
        ours = max(cell.get("ours 1x2", 0), cell.get("ours 2x1", 0))
        theirs = max(cell.get("torch 2t", 0), cell.get("DDP 2x1", 0))
        ratio = f"{ours / theirs:.2f}" if theirs else "-"
        print(f"| {name} | " + " | ".join(f"{cell[h]:,.0f}" if h in cell else "-"
                                           for h in heads) + f" | {ratio} |")


if __name__ == "__main__":
    main()
