"""Training-step benchmark: numtransformer against PyTorch, side by side.

    python benchmarks/bench_train.py                       # the full run (~15 min, 2 cores)
    python benchmarks/bench_train.py --quick               # a smoke run (~3 min)
    python benchmarks/bench_train.py --configs tx-tiny,lm-causal --dtypes float32 --threads 2
    python benchmarks/bench_train.py --custom "big=tx:d=512,h=8,ff=2048,L=2+2,V=8000,B=8,T=128"
    python benchmarks/bench_train.py --json runs/bench.jsonl --markdown runs/bench.md

One training step = forward + cross-entropy + backward + AdamW step (+ zero
grad), dropout 0, random token ids (no padding), in train mode.  Measured:

* the step time, the median of >= 10 steps after warm-up, split into forward
  (model + loss), backward (loss + model) and optimizer (AdamW step + zero grad);
* float32 and float64, with 1 and 2 BLAS threads.  Every measurement runs in
  a fresh subprocess that sets OMP/OPENBLAS/MKL_NUM_THREADS before numpy is
  imported (and ``torch.set_num_threads``);
* with torch installed, the same model in PyTorch (``nn.Transformer`` with
  embeddings and an output layer; ``nn.LSTM`` encoder/decoder with batched
  Luong dot attention; a causal pre-LN decoder-only model from
  ``nn.TransformerEncoderLayer``) in the same invocation, interleaved: ours,
  theirs, ours, theirs, each pair of subprocesses back to back.  The reported
  speed-up is the median of the per-pair ratios torch_time / our_time (> 1:
  numtransformer is faster).  On a shared machine absolute times drift; only
  these interleaved ratios mean anything;
* MFU: matmul FLOPs only, counted analytically from the shapes (training = 3 x
  forward), divided by the step time and by the NumPy GEMM peak of the same
  dtype and thread count, measured in its own subprocess (best of square
  matmuls).  torch's MFU uses the same NumPy peak, so the two are comparable;
* peak memory: the peak resident set size (VmHWM) of the measuring
  subprocess minus its file-backed pages (library code and data: torch maps
  hundreds of MB of shared libraries lazily, during the first step) and minus
  its anonymous RSS right after the imports.  So it counts the model, its
  gradients, the optimizer state, the batch and every activation and
  temporary, for either framework, but not the libraries.  The peak is reset
  after the imports through /proc/self/clear_refs (Linux), so import
  transients do not count.  RSS, not tracemalloc, because it sees torch's
  allocator as well as numpy's, and tracemalloc slows Python-heavy code;
* page faults per step (minor faults of the measuring subprocess): glibc's
  malloc returns freed heap to the OS and mmaps big arrays, so a step can
  fault in (and the kernel zero) its whole working set again.
  numtransformer's training loop (``Trainer.fit``) sets glibc's malloc to
  keep freed memory (``numtransformer._malloc.keep_freed_memory``), so our
  worker does too (``--ours-default-malloc``: not).  PyTorch runs with its
  default, as a user's script does; ``--malloc-tuned`` gives both frameworks
  MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ raised.

A scaling table follows (numtransformer, float32, most threads): the
Transformer's throughput and peak memory as T grows from 64 to 1024 at a fixed
number of tokens per batch (B*T = 4096, so everything but attention stays the
same size) and as d_model grows at T = 128; ``attn MB`` is the estimated size
of the attention weights the forward keeps for backward (B*H*Tq*Tk per
attention layer), the O(T^2) term.  Then greedy decoding of 64 tokens with
the key/value cache against re-running the whole decoder each step.

Kernels: numtransformer's workers run with NUMTRANSFORMER_KERNELS=fast (float64
included: by default float64 runs the reference kernels, which are written to
be read, not to be fast); ``--kernels auto`` measures the defaults instead.

A release against this one: ``--against DIR`` (a checkout of another version
of numtransformer) adds a third subprocess to every interleaved pair, the same
worker importing numtransformer from DIR, and a column ``vs DIR`` = DIR's ms /
this tree's ms (> 1: this tree is faster), the median over the pairs.

Output: a Markdown table on stdout (progress on stderr), JSON lines with
``--json``.  Options: --quick, --pairs, --steps, --warmup, --no-torch,
--no-scaling, --scaling-torch, --no-decode, --malloc-tuned, --kernels, --against.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# -- configurations ----------------------------------------------------------------------------
# tx: encoder-decoder Transformer, post-LN, ReLU (nn.Transformer: final norms on both stacks)
# rnn: LSTM encoder + LSTM decoder, Luong dot attention batched after the recurrence,
#      s~ = tanh([c; s] W_c), bridge tanh(Linear) for h0 and c0
# lm: decoder-only causal LM, pre-LN, ReLU, learned positions, tied output
CONFIGS = {
    "tx-tiny": dict(kind="tx", d=64, h=4, ff=256, Le=2, Ld=2, V=32, B=64, S=32, T=32),
    "tx-small": dict(kind="tx", d=128, h=4, ff=512, Le=2, Ld=2, V=1000, B=32, S=64, T=64),
    "tx-base": dict(kind="tx", d=256, h=8, ff=1024, Le=3, Ld=3, V=8000, B=16, S=128, T=128),
    "rnn-attn": dict(kind="rnn", E=128, H=256, V=1000, B=32, S=32, T=32),
    "lm-causal": dict(kind="lm", d=128, h=4, ff=512, L=4, V=1000, B=16, T=128),
}
REFERENCE_MS = {"tx-tiny": 92, "tx-small": 256, "tx-base": 1350, "rnn-attn": 155,
                "lm-causal": 250}  # the PyTorch fp32 2-thread figures
LR = 1e-4


def parse_custom(text: str):
    """``name=kind:key=val,key=val`` -> (name, config); L=2+2 sets Le and Ld."""
    name, _, rest = text.partition("=")
    kind, _, body = rest.partition(":")
    if kind not in ("tx", "rnn", "lm") or not name:
        raise SystemExit(f"--custom {text!r}: expected NAME=tx|rnn|lm:key=val,...")
    base = {"tx": "tx-small", "rnn": "rnn-attn", "lm": "lm-causal"}[kind]
    cfg = dict(CONFIGS[base])
    for item in filter(None, body.split(",")):
        key, _, val = item.partition("=")
        if kind == "tx" and key == "L":
            le, _, ld = val.partition("+")
            cfg["Le"], cfg["Ld"] = int(le), int(ld or le)
        elif key in cfg and key != "kind":
            cfg[key] = int(val)
        else:
            raise SystemExit(f"--custom {text!r}: unknown key {key!r} for kind {kind}")
    if kind == "tx" and "S" not in body:
        cfg["S"] = cfg["T"]
    return name, cfg


def matmul_flops(c: dict) -> float:
    """Forward matmul FLOPs (2 per multiply-add) of one batch; attention counted in full."""
    k = c["kind"]
    if k == "rnn":
        B, S, T, E, H, V = c["B"], c["S"], c["T"], c["E"], c["H"], c["V"]
        lstm = lambda n: 2 * n * (E * 4 * H + H * 4 * H)  # noqa: E731 (input + recurrent)
        bridge = 2 * 2 * B * H * H
        attn = 2 * 2 * B * T * S * H  # scores and context
        out = 2 * B * T * (2 * H * H + H * V)  # W_c and W_s
        return lstm(B * S) + lstm(B * T) + bridge + attn + out
    d, ff, V, B = c["d"], c["ff"], c["V"], c["B"]

    def self_layer(T):
        n = B * T
        return 2 * n * (3 * d * d + d * d + 2 * d * ff) + 2 * 2 * B * T * T * d

    if k == "lm":
        return c["L"] * self_layer(c["T"]) + 2 * B * c["T"] * d * V
    S, T = c["S"], c["T"]
    cross = 2 * B * T * 2 * d * d + 2 * B * S * 2 * d * d + 2 * 2 * B * T * S * d
    dec = self_layer(T) + cross  # self-attention + FFN, plus cross-attention
    return c["Le"] * self_layer(S) + c["Ld"] * dec + 2 * B * T * d * V


def attn_bytes(c: dict, itemsize: int) -> int:
    """Bytes of the attention weights kept for backward (one B*H*Tq*Tk array per layer)."""
    if c["kind"] == "tx":
        B, h, S, T = c["B"], c["h"], c["S"], c["T"]
        return itemsize * B * h * (c["Le"] * S * S + c["Ld"] * (T * T + T * S))
    if c["kind"] == "lm":
        return itemsize * c["B"] * c["h"] * c["L"] * c["T"] ** 2
    return itemsize * c["B"] * c["T"] * c["S"]


# -- memory of this process --------------------------------------------------------------------
def _status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> str:
    """Reset the peak RSS to the current RSS; returns the method the peak is read with."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM after clear_refs"
    except OSError:
        return "ru_maxrss (not resettable: includes import peaks)"


def minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def rss_mb() -> float:
    """Anonymous resident memory (the heap: arrays, tensors), without mapped files."""
    kb = _status_kb("RssAnon")
    if kb is None:
        kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else float("nan")


def peak_mb() -> float:
    """Peak resident memory minus the file-backed part (library code and data pages,
    which only grow: torch maps hundreds of MB lazily), i.e. the anonymous peak."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    files = (_status_kb("RssFile") or 0) + (_status_kb("RssShmem") or 0)
    return (kb - files) / 1024


# -- the models -----------------------------------------------------------------------------------
def batch(c: dict, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = lambda *s: rng.integers(4, c["V"], s).astype(np.int64)  # noqa: E731 (no special ids)
    if c["kind"] == "lm":
        x = ids(c["B"], c["T"] + 1)
        return dict(ids=x[:, :-1], targets=x[:, 1:].copy())
    tgt = ids(c["B"], c["T"] + 1)
    return dict(src=ids(c["B"], c["S"]), tgt_in=tgt[:, :-1], targets=tgt[:, 1:].copy())


def build_ours(c: dict, dtype, seed: int = 0):
    """(model, forward(batch) -> (logits, cache))"""
    import numpy as np

    import numtransformer as nt

    k = c["kind"]
    if k == "tx":
        model = nt.Transformer(c["V"], c["V"], c["d"], c["h"], c["Le"], c["Ld"], c["ff"],
                               dropout=0.0, activation="relu", final_norm=True,
                               max_len=max(c["S"], c["T"]), dtype=dtype, rng=seed)
        fwd = lambda b: model.forward(b["src"], b["tgt_in"])  # noqa: E731
    elif k == "rnn":
        model = nt.Seq2Seq(c["V"], c["V"], embed_dim=c["E"], hidden_size=c["H"], cell="lstm",
                           attention="luong", score="dot", input_feeding=False, dropout=0.0,
                           dtype=dtype, rng=seed)
        fwd = lambda b: model.forward(b["src"], b["tgt_in"])  # noqa: E731
    else:
        model = nt.TransformerLM(c["V"], c["d"], c["h"], c["L"], c["ff"], dropout=0.0,
                                 activation="relu", max_len=c["T"], tie_output=True,
                                 dtype=dtype, rng=seed)
        fwd = lambda b: model.forward(b["ids"])  # noqa: E731
    model.train()
    assert all(p.dtype == np.dtype(dtype) for p in model.parameters())
    return model, fwd


def build_torch(c: dict, dtype, seed: int = 0):
    import torch
    from torch import nn
    import torch.nn.functional as F

    torch.manual_seed(seed)
    k = c["kind"]

    def sinusoid(n, d):
        pos = torch.arange(n, dtype=torch.float64)[:, None]
        div = torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
        pe = torch.zeros(n, d, dtype=torch.float64)
        pe[:, 0::2] = torch.sin(pos / div)
        pe[:, 1::2] = torch.cos(pos / div)[:, : d // 2]
        return pe

    class Tx(nn.Module):
        def __init__(self):
            super().__init__()
            d = c["d"]
            self.src_embed = nn.Embedding(c["V"], d)
            self.tgt_embed = nn.Embedding(c["V"], d)
            self.register_buffer("pe", sinusoid(max(c["S"], c["T"]), d))
            self.tf = nn.Transformer(d, c["h"], c["Le"], c["Ld"], c["ff"], dropout=0.0,
                                     activation="relu", batch_first=True)
            self.out = nn.Linear(d, c["V"])
            self.scale = math.sqrt(d)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(c["T"]))

        def forward(self, src, tgt):
            x = self.src_embed(src) * self.scale + self.pe[: src.shape[1]]
            y = self.tgt_embed(tgt) * self.scale + self.pe[: tgt.shape[1]]
            h = self.tf(x, y, tgt_mask=self.mask, tgt_is_causal=True)
            return self.out(h)

    class Rnn(nn.Module):
        def __init__(self):
            super().__init__()
            E, H, V = c["E"], c["H"], c["V"]
            self.src_embed, self.tgt_embed = nn.Embedding(V, E), nn.Embedding(V, E)
            self.enc = nn.LSTM(E, H, batch_first=True)
            self.dec = nn.LSTM(E, H, batch_first=True)
            self.bridge_h, self.bridge_c = nn.Linear(H, H), nn.Linear(H, H)
            self.W_c = nn.Linear(2 * H, H, bias=False)
            self.W_s = nn.Linear(H, V)

        def forward(self, src, tgt):
            M, (h_n, c_n) = self.enc(self.src_embed(src))
            h0, c0 = torch.tanh(self.bridge_h(h_n)), torch.tanh(self.bridge_c(c_n))
            S, _ = self.dec(self.tgt_embed(tgt), (h0, c0))
            alpha = torch.softmax(S @ M.transpose(1, 2), dim=-1)  # Luong dot
            C = alpha @ M
            s_tilde = torch.tanh(self.W_c(torch.cat([C, S], dim=-1)))
            return self.W_s(s_tilde)

    class Lm(nn.Module):
        def __init__(self):
            super().__init__()
            d = c["d"]
            self.embed = nn.Embedding(c["V"], d)
            self.pos = nn.Parameter(0.02 * torch.randn(c["T"], d))
            layer = nn.TransformerEncoderLayer(d, c["h"], c["ff"], dropout=0.0, activation="relu",
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, c["L"], enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(c["T"]))

        def forward(self, ids):
            x = self.embed(ids) + self.pos[: ids.shape[1]]
            h = self.blocks(x, mask=self.mask, is_causal=True)
            return F.linear(self.norm(h), self.embed.weight)  # tied output

    model = {"tx": Tx, "rnn": Rnn, "lm": Lm}[k]().to(getattr(torch, str(dtype)))
    model.train()
    if k == "lm":
        fwd = lambda b: model(b["ids"])  # noqa: E731
    else:
        fwd = lambda b: model(b["src"], b["tgt_in"])  # noqa: E731
    return model, fwd


# -- workers (each in its own subprocess) ---------------------------------------------------------
def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def worker_ours(spec):
    import numpy as np

    sys.path.insert(0, spec.get("root") or ROOT)
    from numtransformer._malloc import keep_freed_memory
    from numtransformer.losses import CrossEntropyLoss
    from numtransformer.optim import AdamW

    if not spec.get("ours_default_malloc"):
        keep_freed_memory()  # as Trainer.fit does
    base = rss_mb()
    method = reset_peak()
    c, dtype = spec["config"], np.dtype(spec["dtype"])
    model, fwd = build_ours(c, dtype)
    b = batch(c)
    loss_fn = CrossEntropyLoss(ignore_index=0)
    opt = AdamW(model, lr=LR, weight_decay=0.01)
    fw, bw, op, losses = [], [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        if i == spec["warmup"]:
            faults = minor_faults()
        t0 = time.perf_counter()
        logits, cache = fwd(b)
        loss, lcache = loss_fn.forward(logits, b["targets"])
        t1 = time.perf_counter()
        model.backward(loss_fn.backward(1.0, lcache), cache)
        del cache, lcache, logits
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        assert loss.dtype == dtype
        losses.append(float(loss))
        if i >= spec["warmup"]:
            fw.append(t1 - t0), bw.append(t2 - t1), op.append(t3 - t2)
    faults = (minor_faults() - faults) / spec["steps"]
    return dict(fwd=fw, bwd=bw, opt=op, peak_mb=peak_mb() - base, mem_method=method,
                faults_per_step=faults,
                loss_first=losses[0], loss_last=losses[-1],
                n_params=sum(p.size for p in model.parameters()))


def worker_torch(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    import warnings

    warnings.filterwarnings("ignore")
    base = rss_mb()
    method = reset_peak()
    c, dtype = spec["config"], spec["dtype"]
    model, fwd = build_torch(c, dtype)
    b = {k: torch.from_numpy(v) for k, v in batch(c).items()}
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    V = c["V"]
    fw, bw, op, losses = [], [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        if i == spec["warmup"]:
            faults = minor_faults()
        t0 = time.perf_counter()
        logits = fwd(b)
        loss = loss_fn(logits.reshape(-1, V), b["targets"].reshape(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t3 = time.perf_counter()
        losses.append(float(loss))
        del logits, loss
        if i >= spec["warmup"]:
            fw.append(t1 - t0), bw.append(t2 - t1), op.append(t3 - t2)
    faults = (minor_faults() - faults) / spec["steps"]
    return dict(fwd=fw, bwd=bw, opt=op, peak_mb=peak_mb() - base, mem_method=method,
                faults_per_step=faults,
                loss_first=losses[0], loss_last=losses[-1],
                n_params=sum(p.numel() for p in model.parameters()))


def worker_gemm(spec):
    import numpy as np

    out = {}
    for dt in ("float32", "float64"):
        best = 0.0
        for n in (1024, 2048):
            a = np.random.default_rng(0).standard_normal((n, n)).astype(dt)
            b = a.T.copy()
            c = a @ b
            for _ in range(4 if n == 1024 else 2):
                t0 = time.perf_counter()
                np.matmul(a, b, out=c)
                best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
        out[dt] = best
    return out


def worker_decode(spec):
    """Greedy decoding of ``n`` tokens: KV-cache steps vs re-running the full decoder."""
    import numpy as np

    sys.path.insert(0, ROOT)
    c, n = spec["config"], spec["n"]
    model, _ = build_ours(c, np.float32)
    model.eval()
    src = batch(c)["src"]
    B = src.shape[0]

    def incremental():
        state = model.start_decoding(src)
        tok = np.full(B, 1, dtype=np.int64)
        out = []
        for _ in range(n):
            tok = np.argmax(model.decode_step(state, tok), axis=-1)
            out.append(tok)
        return np.stack(out, 1)

    def full():
        prefix = np.full((B, 1), 1, dtype=np.int64)
        for _ in range(n):
            tok = np.argmax(model(src, prefix)[:, -1], axis=-1)
            prefix = np.concatenate([prefix, tok[:, None]], axis=1)
        return prefix[:, 1:]

    inc, ful = [], []
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        a = incremental()
        t1 = time.perf_counter()
        b = full()
        t2 = time.perf_counter()
        inc.append(t1 - t0), ful.append(t2 - t1)
    same = bool(np.array_equal(a, b))
    return dict(incremental=statistics.median(inc), full=statistics.median(ful), same=same)


WORKERS = {"ours": worker_ours, "torch": worker_torch, "gemm": worker_gemm,
           "decode": worker_decode}


# glibc malloc: never give freed memory back to the OS and serve every size from the
# heap, so steady-state steps reuse pages instead of faulting in fresh ones (--malloc-tuned)
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc refuses more than 32 MiB
                "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def spawn(kind: str, spec: dict, timeout: float = 1800):
    """Run one worker in a fresh interpreter with the thread count set before imports."""
    env = dict(os.environ)
    if spec.get("kernels"):
        env["NUMTRANSFORMER_KERNELS"] = spec["kernels"]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    if kind != "torch":  # what importing numtransformer before numpy sets (its __init__)
        env.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")
    if spec.get("malloc_tuned"):
        env.update(MALLOC_TUNED)
    env["PYTHONPATH"] = (spec.get("root") or ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                           "--spec", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the orchestrator ---------------------------------------------------------------------------
def med(xs):
    return statistics.median(xs) if xs else float("nan")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_cell(name, c, dtype, threads, args, have_torch, gemm):
    """Interleaved pairs of subprocesses for one (config, dtype, threads) cell."""
    spec = dict(config=c, dtype=dtype, threads=threads, warmup=args.warmup,
                steps=math.ceil(args.steps / args.pairs), malloc_tuned=args.malloc_tuned,
                ours_default_malloc=args.ours_default_malloc, kernels=args.kernels)
    runs = {"ours": [], "torch": []}
    ratios, release_ratios = [], []
    step_ms = lambda r: med([a + b + c_ for a, b, c_ in zip(r["fwd"], r["bwd"], r["opt"])])
    for _ in range(args.pairs):
        r_o = spawn("ours", spec)
        runs["ours"].append(r_o)
        if args.against:
            r_r = spawn("ours", dict(spec, root=args.against))
            release_ratios.append(step_ms(r_r) / step_ms(r_o))
        if have_torch:
            r_t = spawn("torch", spec)
            runs["torch"].append(r_t)
            step_o = med([a + b + c_ for a, b, c_ in zip(r_o["fwd"], r_o["bwd"], r_o["opt"])])
            step_t = med([a + b + c_ for a, b, c_ in zip(r_t["fwd"], r_t["bwd"], r_t["opt"])])
            ratios.append(step_t / step_o)
    flops = 3 * matmul_flops(c)
    row = dict(kind="train", config=name, model=c["kind"], dtype=dtype, threads=threads,
               gemm_peak_gflops=gemm[dtype], train_matmul_gflop=flops / 1e9,
               steps_measured=spec["steps"] * args.pairs, pairs=args.pairs,
               attn_weights_mb=attn_bytes(c, 4 if dtype == "float32" else 8) / 2 ** 20,
               shape={k: v for k, v in c.items() if k != "kind"})
    for fw, rs in runs.items():
        if not rs:
            continue
        step = [a + b + c_ for r in rs for a, b, c_ in zip(r["fwd"], r["bwd"], r["opt"])]
        t = med(step)
        row[fw] = dict(step_ms=1e3 * t, fwd_ms=1e3 * med([x for r in rs for x in r["fwd"]]),
                       bwd_ms=1e3 * med([x for r in rs for x in r["bwd"]]),
                       opt_ms=1e3 * med([x for r in rs for x in r["opt"]]),
                       step_ms_per_run=[1e3 * med([a + b + c_ for a, b, c_ in
                                                   zip(r["fwd"], r["bwd"], r["opt"])])
                                        for r in rs],
                       mfu=flops / t / (gemm[dtype] * 1e9),
                       peak_mb=max(r["peak_mb"] for r in rs), mem_method=rs[0]["mem_method"],
                       faults_per_step=med([r["faults_per_step"] for r in rs]),
                       loss_first=rs[0]["loss_first"], loss_last=rs[-1]["loss_last"],
                       n_params=rs[0]["n_params"])
    if release_ratios:
        row["vs_release_median"] = med(release_ratios)
        row["vs_release_pairs"] = release_ratios
    if ratios:
        row["speedup_median"] = med(ratios)
        row["speedup_pairs"] = ratios
        row["mem_ratio"] = row["torch"]["peak_mb"] / max(row["ours"]["peak_mb"], 1e-9)
    return row


def fmt_train_table(rows, have_torch):
    out = []
    if have_torch:
        out.append("| config | dtype | thr | ours ms (fwd/bwd/opt) | torch ms (fwd/bwd/opt) "
                   "| speed-up torch/ours (pairs) | MFU ours | MFU torch "
                   "| peak MB ours | peak MB torch | flt/step ours / torch |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    else:
        out.append("| config | dtype | thr | ours ms (fwd/bwd/opt) | MFU ours | peak MB ours |")
        out.append("|---|---|---|---|---|---|")
    for r in rows:
        o = r["ours"]
        ours = f"{o['step_ms']:.0f} ({o['fwd_ms']:.0f}/{o['bwd_ms']:.0f}/{o['opt_ms']:.1f})"
        dt = "fp32" if r["dtype"] == "float32" else "fp64"
        if have_torch:
            t = r["torch"]
            theirs = f"{t['step_ms']:.0f} ({t['fwd_ms']:.0f}/{t['bwd_ms']:.0f}/{t['opt_ms']:.1f})"
            pairs = ", ".join(f"{x:.2f}" for x in r["speedup_pairs"])
            out.append(f"| {r['config']} | {dt} | {r['threads']} | {ours} | {theirs} "
                       f"| **{r['speedup_median']:.2f}** ({pairs}) | {100 * o['mfu']:.0f}% "
                       f"| {100 * t['mfu']:.0f}% | {o['peak_mb']:.0f} | {t['peak_mb']:.0f} "
                       f"| {o['faults_per_step']:.0f} / {t['faults_per_step']:.0f} |")
        else:
            out.append(f"| {r['config']} | {dt} | {r['threads']} | {ours} "
                       f"| {100 * o['mfu']:.0f}% | {o['peak_mb']:.0f} |")
    if any("vs_release_median" in r for r in rows):
        out += ["", "| config | dtype | thr | release ms / this ms (pairs) |", "|---|---|---|---|"]
        for r in rows:
            if "vs_release_median" in r:
                dt = "fp32" if r["dtype"] == "float32" else "fp64"
                pairs = ", ".join(f"{x:.2f}" for x in r["vs_release_pairs"])
                out.append(f"| {r['config']} | {dt} | {r['threads']} "
                           f"| **{r['vs_release_median']:.2f}** ({pairs}) |")
    return "\n".join(out)


def scaling_configs(quick: bool):
    base = dict(kind="tx", d=128, h=4, ff=512, Le=2, Ld=2, V=1000)
    Ts = (64, 256, 1024) if quick else (64, 128, 256, 512, 1024)
    for T in Ts:
        yield "T", dict(base, B=max(1, 4096 // T), S=T, T=T)
    ds = (64, 256) if quick else (64, 128, 256, 512)
    for d in ds:
        yield "d_model", dict(base, d=d, h=max(1, d // 32), ff=4 * d, B=32, S=128, T=128)


def run_scaling(args, threads, gemm, have_torch):
    rows = []
    with_torch = have_torch and args.scaling_torch
    for axis, c in scaling_configs(args.quick):
        spec = dict(config=c, dtype="float32", threads=threads, warmup=1,
                    steps=args.scaling_steps)
        log(f"  scaling {axis}: d={c['d']} T={c['T']} B={c['B']}")
        r = spawn("ours", spec)
        step = med([a + b + c_ for a, b, c_ in zip(r["fwd"], r["bwd"], r["opt"])])
        tokens = c["B"] * (c["S"] + c["T"])
        row = dict(kind="scaling", axis=axis, d=c["d"], h=c["h"], ff=c["ff"], B=c["B"],
                   T=c["T"], threads=threads, dtype="float32", step_ms=1e3 * step,
                   tokens_per_s=tokens / step, peak_mb=r["peak_mb"],
                   attn_weights_mb=attn_bytes(c, 4) / 2 ** 20,
                   mfu=3 * matmul_flops(c) / step / (gemm["float32"] * 1e9))
        if with_torch:
            t = spawn("torch", spec)
            tstep = med([a + b + c_ for a, b, c_ in zip(t["fwd"], t["bwd"], t["opt"])])
            row.update(torch_step_ms=1e3 * tstep, torch_peak_mb=t["peak_mb"])
        rows.append(row)
    return rows


def fmt_scaling(rows):
    torch_cols = "torch_step_ms" in rows[0] if rows else False
    head = "| axis | d | h | B | T | ms/step | tokens/s | MFU | peak MB | attn MB (est.) |"
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    if torch_cols:
        head += " torch ms | torch peak MB |"
        sep += "---|---|"
    out = [head, sep]
    for r in rows:
        line = (f"| {r['axis']} | {r['d']} | {r['h']} | {r['B']} | {r['T']} | {r['step_ms']:.0f} "
                f"| {r['tokens_per_s']:.0f} | {100 * r['mfu']:.0f}% | {r['peak_mb']:.0f} "
                f"| {r['attn_weights_mb']:.0f} |")
        if torch_cols:
            line += f" {r['torch_step_ms']:.0f} | {r['torch_peak_mb']:.0f} |"
        out.append(line)
    return "\n".join(out)


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def versions(have_torch) -> dict:
    code = ("import json, numpy, scipy; d = dict(numpy=numpy.__version__, scipy=scipy.__version__)\n"
            "try:\n import torch; d['torch'] = torch.__version__\nexcept ImportError: pass\n"
            "print(json.dumps(d))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    p.add_argument("--custom", action="append", default=[],
                   help="NAME=tx|rnn|lm:key=val,... (keys: d h ff L=Le+Ld V B S T | E H | L)")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--pairs", type=int, default=None, help="interleaved subprocess pairs")
    p.add_argument("--steps", type=int, default=None, help="measured steps in total (>= 10)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per subprocess")
    p.add_argument("--quick", action="store_true", help="fewer pairs and steps, short scaling")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--scaling-torch", action="store_true", help="torch in the scaling table too")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--malloc-tuned", action="store_true",
                   help="run both frameworks with glibc's MALLOC_MMAP_THRESHOLD_/"
                        "MALLOC_TRIM_THRESHOLD_ raised (no page faults in steady state)")
    p.add_argument("--ours-default-malloc", action="store_true",
                   help="do not let numtransformer keep freed memory (Trainer.fit does)")
    p.add_argument("--kernels", default="fast", choices=["fast", "auto", "reference"],
                   help="NUMTRANSFORMER_KERNELS for numtransformer's workers (default fast)")
    p.add_argument("--against", help="a checkout of another numtransformer version, "
                                     "measured in the same interleaved pairs")
    p.add_argument("--json", help="write JSON lines here")
    p.add_argument("--markdown", help="write the Markdown tables here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # inside a subprocess: threads are already in the environment
        spec = json.loads(args.spec)
        print(json.dumps(WORKERS[args.worker](spec)))
        return

    args.pairs = args.pairs or (2 if args.quick else 3)
    args.steps = args.steps or (4 if args.quick else 12)
    args.scaling_steps = 3 if args.quick else 5
    configs = {}
    for name in filter(None, args.configs.split(",")):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
        configs[name] = CONFIGS[name]
    for text in args.custom:
        name, cfg = parse_custom(text)
        configs[name] = cfg
    dtypes = args.dtypes.split(",")
    threads_list = [int(t) for t in args.threads.split(",")]
    have_torch = not args.no_torch and find_spec("torch") is not None

    t_start = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M")
    vers = versions(have_torch)
    meta = dict(kind="meta", date=stamp, machine=machine(), versions=vers,
                command="python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
                pairs=args.pairs, steps=args.steps, warmup=args.warmup)
    records = [meta]
    rows = []
    gemms = {}
    for threads in threads_list:
        gemms[threads] = spawn("gemm", dict(threads=threads))
        records.append(dict(kind="gemm", threads=threads, **{f"{k}_gflops": v for k, v in
                                                              gemms[threads].items()}))
        log(f"threads={threads}: NumPy GEMM peak fp32 {gemms[threads]['float32']:.0f}, "
            f"fp64 {gemms[threads]['float64']:.0f} GFLOP/s")
        for name, c in configs.items():
            for dtype in dtypes:
                t0 = time.time()
                row = run_cell(name, c, dtype, threads, args, have_torch, gemms[threads])
                rows.append(row)
                records.append(row)
                msg = f"  {name} {dtype} threads={threads}: ours {row['ours']['step_ms']:.0f} ms"
                if have_torch:
                    msg += (f", torch {row['torch']['step_ms']:.0f} ms, speed-up "
                            f"{row['speedup_median']:.2f}")
                if args.against:
                    msg += (f", vs release {row['vs_release_median']:.2f} "
                            f"{[round(x, 2) for x in row['vs_release_pairs']]}")
                log(msg + f" ({time.time() - t0:.0f} s)")

    scaling = []
    if not args.no_scaling:
        scaling = run_scaling(args, max(threads_list), gemms[max(threads_list)], have_torch)
        records += scaling
    decode = None
    if not args.no_decode:
        decode = spawn("decode", dict(config=CONFIGS["tx-small"], threads=max(threads_list),
                                      n=64, repeat=1 if args.quick else 3))
        decode.update(kind="decode", config="tx-small", threads=max(threads_list), tokens=64,
                      speedup=decode["full"] / decode["incremental"])
        records.append(decode)

    elapsed = time.time() - t_start
    meta["elapsed_s"] = elapsed
    md = [f"## Training step, numtransformer vs PyTorch ({stamp}; {meta['machine']}; "
          + ", ".join(f"{k} {v}" for k, v in vers.items()) + ")", "",
          f"Command: `{meta['command']}` ({elapsed / 60:.1f} min).  Median of "
          f"{args.pairs} x {math.ceil(args.steps / args.pairs)} steps after {args.warmup} "
          f"warm-up step(s) per subprocess; speed-up = median over the {args.pairs} "
          "interleaved pairs of torch ms / ours ms (> 1: numtransformer is faster); "
          "MFU = matmul FLOPs (training = 3x forward) / time / NumPy GEMM peak of the same "
          "dtype and threads; peak MB = peak anonymous RSS of the subprocess minus its "
          "anonymous RSS after the imports; flt = minor page faults per step.  Allocator: "
          + ("glibc tuned (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ raised) for both "
             "frameworks." if args.malloc_tuned else
             "PyTorch with the default glibc malloc; numtransformer "
             + ("likewise." if args.ours_default_malloc else
                "keeping freed memory for reuse, as its Trainer.fit does "
                "(numtransformer._malloc.keep_freed_memory).")),
          "",
          "NumPy GEMM peak (GFLOP/s): " + "; ".join(
              f"{t} thread(s): fp32 {g['float32']:.0f}, fp64 {g['float64']:.0f}"
              for t, g in gemms.items()), "",
          fmt_train_table(rows, have_torch)]
    if scaling:
        md += ["", f"## Scaling (numtransformer, fp32, {max(threads_list)} threads; "
               "T axis: B*T = 4096 tokens per side)", "", fmt_scaling(scaling)]
    if decode:
        md += ["", f"## Greedy decoding, 64 tokens (tx-small, B=32, fp32, "
               f"{max(threads_list)} threads)", "",
               f"KV cache: {1e3 * decode['incremental']:.0f} ms; re-running the full decoder "
               f"each step: {1e3 * decode['full']:.0f} ms; speed-up **{decode['speedup']:.1f}x** "
               f"(same tokens: {decode['same']})."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    if "--worker" in sys.argv:  # the thread count must be fixed before numpy is imported
        spec_arg = sys.argv[sys.argv.index("--spec") + 1]
        _set_threads(json.loads(spec_arg)["threads"])
    main()
