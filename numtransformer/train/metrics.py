"""What a run prints and returns: the progress line, and the metrics of an evaluation."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

__all__ = ["Progress", "Metrics"]


class Progress:
    """One status line: step, loss, tokens/s, learning rate, ETA.  Redrawn in
    place on a terminal, printed every ``every`` steps otherwise."""

    def __init__(self, total: int, stream=None, every: int = 100):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self.start = time.perf_counter()
        self.tokens = 0
        self.loss_avg = None

    def update(self, step, loss, lr, tokens, steps_done):
        self.tokens += tokens
        self.loss_avg = loss if self.loss_avg is None else 0.98 * self.loss_avg + 0.02 * loss
        if not self.tty and step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.tokens / max(elapsed, 1e-9)
        eta = elapsed / max(steps_done, 1) * (self.total - step)
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] step {step}/{self.total}  loss {self.loss_avg:.4f}  "
                f"{rate:,.0f} tok/s  lr {lr:.2e}  eta {_fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text):
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Metrics:
    loss: float
    token_accuracy: float  # teacher-forced next-token accuracy
    exact_match: float | None  # decoded output == reference (None: a language model)
    perplexity: float
    error_rate: float | None  # edit distance / reference length, in target tokens (CER, WER, PER)
    bleu: float | None = None  # sacrebleu corpus BLEU, when sacrebleu is installed (tsv tasks)
    bleu_signature: str | None = None
    examples: list = field(default_factory=list)  # (source, prediction, reference)
    bits_per_char: float | None = None  # language models: loss / ln 2

    def to_json(self) -> dict:
        out = {"loss": self.loss, "token_accuracy": self.token_accuracy,
               "perplexity": self.perplexity}
        for name in ("exact_match", "error_rate", "bits_per_char"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.bleu is not None:
            out["bleu"] = self.bleu
            out["bleu_signature"] = self.bleu_signature
        return out


def _sacrebleu(hypotheses, references, tokens):
    """Corpus BLEU and its signature through sacrebleu, or (None, None) without it."""
    try:
        import sacrebleu
    except ImportError:
        return None, None
    tokenize = "char" if tokens == "char" else "13a"
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize)
    score = metric.corpus_score(hypotheses, [references])
    return float(score.score), str(metric.get_signature())
