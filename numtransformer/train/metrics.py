"""What a run prints and returns: the progress line, and the metrics of an evaluation."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

__all__ = ["Progress", "Metrics"]


class Progress:
    """One status line: step, loss, tokens/s, learning rate, ETA.  Redrawn in
    place on a terminal, printed every ``every`` steps otherwise (and at least
    every ``AT_LEAST_EVERY`` seconds: a time budget may end the run long before
    ``every`` steps).

    ``loss_label`` names the loss shown (``"train loss (label smoothing 0.1)"``:
    a smoothed loss sits above the validation loss).  With a time ``budget``
    (seconds of training) the ETA is the sooner of the steps left and the
    budget left (``seconds``, given to ``update``, is the training time so
    far), marked "(time budget)" when the budget ends the run first."""

    AT_LEAST_EVERY = 30.0  # seconds: off a terminal, a line at least this often too

    def __init__(self, total: int, stream=None, every: int = 100, budget: float | None = None,
                 loss_label: str = "loss"):
        self.total, self.stream = total, stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self.budget, self.loss_label = budget, loss_label
        self.start = time.perf_counter()
        self.tokens = 0
        self.loss_avg = None

    def eta(self, step, steps_done, seconds=None) -> tuple[float, bool]:
        """(seconds left, whether the time budget is what ends the run)."""
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(steps_done, 1) * (self.total - step)
        if self.budget is not None and seconds is not None:
            left = max(self.budget - seconds, 0.0)
            if left < eta:
                return left, True
        return eta, False

    def update(self, step, loss, lr, tokens, steps_done, seconds=None):
        self.tokens += tokens
        self.loss_avg = loss if self.loss_avg is None else 0.98 * self.loss_avg + 0.02 * loss
        now = time.perf_counter()
        if (not self.tty and step % self.every and step != self.total
                and now - getattr(self, "_printed", self.start) < self.AT_LEAST_EVERY):
            return
        self._printed = now
        elapsed = time.perf_counter() - self.start
        rate = self.tokens / max(elapsed, 1e-9)
        eta, budget = self.eta(step, steps_done, seconds)
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] step {step}/{self.total}  {self.loss_label} {self.loss_avg:.4f}  "
                f"{rate:,.0f} tok/s  lr {lr:.2e}  eta {_fmt_time(eta)}"
                + (" (time budget)" if budget else ""))
        if self.tty:
            self._drawn = max(getattr(self, "_drawn", 0), len(line))
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text):
        if self.tty:
            self.stream.write("\r" + " " * max(getattr(self, "_drawn", 0), 100) + "\r")
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
