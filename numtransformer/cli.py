"""Command line: ``numtransformer <command>`` or ``python -m numtransformer <command>``."""

from __future__ import annotations

import argparse
import sys
import time


def _cmd_gradcheck(args) -> int:
    from .selfcheck import run_all

    start = time.perf_counter()
    results = run_all(seed=args.seed, threshold=args.threshold, only=args.only)
    if not results:
        print(f"numtransformer gradcheck: no layer matches {args.only!r}", file=sys.stderr)
        return 2
    rows = [("layer", "tensor", "max rel error", "pass")]
    failed = []
    for name, report in results:
        for t in report.tensors:
            ok = t.error <= report.threshold
            rows.append((name, t.name, f"{t.error:.2e}", "ok" if ok else "FAIL"))
        for problem in report.problems:
            rows.append((name, problem, "-", "FAIL"))
        if not report.passed:
            failed.append(name)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    worst = max(report.max_error for _, report in results)
    elapsed = time.perf_counter() - start
    print(f"\n{len(results)} layers, {len(rows) - 1} tensors, float64, worst error {worst:.2e} "
          f"(threshold {args.threshold:.0e}), {elapsed:.1f} s")
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    print("all passed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numtransformer",
        description="Attention models in NumPy with hand-written backward passes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    p = sub.add_parser("gradcheck", help="check every layer's backward against finite differences")
    p.add_argument("--seed", type=int, default=0, help="random seed for sizes, inputs and G")
    p.add_argument("--threshold", type=float, default=1e-7,
                   help="max relative error allowed (default 1e-7)")
    p.add_argument("--only", metavar="NAME", default=None,
                   help="check only layers whose name contains NAME")
    p.set_defaults(func=_cmd_gradcheck)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
