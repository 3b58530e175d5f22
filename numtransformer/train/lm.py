"""``LMTrainer``: the training loop for ``--model lm``, a decoder-only character
language model on a text (``task="text:hamlet"`` or ``"text:PATH"``): random
windows of ``context`` characters, next-character cross-entropy, evaluation in
bits per character.  ``make_trainer(cfg)`` returns it for ``cfg.model == "lm"``.
"""

from __future__ import annotations

import math

import numpy as np

from ..attention import plain_attention
from ..data.text import TextTask, WindowIterator, eval_windows, is_text_task, make_text_task
from ..data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID, tokenizer_from_json
from ..decoding import sample
from ..losses import CrossEntropyLoss
from .config import TrainConfig
from .errors import UserError
from .loop import Trainer
from .metrics import Metrics

__all__ = ["LMTrainer", "SPECIAL_IDS"]

SPECIAL_IDS = (PAD_ID, BOS_ID, EOS_ID, UNK_ID)  # never in a text: never generated


class LMTrainer(Trainer):
    """The training loop for ``--model lm``: a decoder-only Transformer
    (``TransformerLM``, pre-LN, learned positions, tied output) learning the
    next character of a text.

    Batches are ``batch_size`` random windows of ``context`` characters from the
    train split (``WindowIterator``); the loss is the cross-entropy of every
    position's next character.  Evaluation scores each character of a split
    once, in consecutive windows of ``context`` (each from a fresh context):
    loss in nats per character, perplexity, next-character accuracy, and bits
    per character = loss / ln 2.  Generation continues a prompt by sampling
    with the KV cache; past ``context`` characters it keeps the last half as
    the new prompt.  Checkpoints, resume, time budget and progress are the
    seq2seq loop's own.
    """

    SAMPLE_TEMPERATURE = 0.8  # the samples printed after training
    VALID_EXAMPLES_SHOWN = 1  # one sample at each evaluation (generating costs time)

    def _build_data(self, cfg: TrainConfig) -> None:
        if not is_text_task(cfg.task):
            raise UserError(f"--model lm trains on a text: --task text:hamlet (built in) or "
                            f"text:PATH, not {cfg.task!r}")
        if cfg.context < 2:  # (TrainConfig refuses it for --model lm too)
            raise UserError(f"context must be >= 2, got {cfg.context}")
        try:  # the loader checks the text's name, file and length
            if "splits" in self._source:  # a large text's kept splits (eval, decode)
                kept, (vocab, _) = self._source["splits"], self._source["vocab"]
                self.task = TextTask(cfg.task, kept["train_head"], kept["valid"],
                                     kept["test"], tokenizer_from_json(vocab))
            else:
                name = ("text:" + self._source["file"]) if "file" in self._source else cfg.task
                self.task = make_text_task(name, cfg.context)
                self.task.name = cfg.task
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        self.src_tok = self.tgt_tok = self.task.tokenizer
        self.batches = WindowIterator(self.task.ids("train"), cfg.batch_size, cfg.context,
                                      seed=cfg.seed)

    def describe_data(self) -> str:
        return (f"{len(self.task.train):,} train / {len(self.task.valid):,} valid / "
                f"{len(self.task.test):,} test characters, {len(self.tgt_tok)} symbols, "
                f"windows of {self.cfg.context}")

    def _forward(self, batch):
        logits, cache = self.model.forward(batch.ids)
        return logits, cache, batch.targets

    def evaluate(self, split: str = "valid", limit: int | None = None, batch_size: int = 64,
                 n_examples_shown: int = 0, beam: int = 1) -> Metrics:
        """Loss per character, perplexity, next-character accuracy and bits per
        character on a split (its first ``limit`` windows); ``n_examples_shown``
        samples continue prompts taken from the split."""
        if beam != 1:
            raise UserError("a language model is scored by its probabilities; beam search "
                            "applies to sequence-to-sequence runs")
        self._check_split(split)
        ids = self.task.ids(split)
        windows = eval_windows(ids, self.cfg.context, limit)
        self.model.eval()
        loss_fn = CrossEntropyLoss(reduction="sum")
        total_loss, n_tokens, n_correct = 0.0, 0, 0
        full = [w for w in windows if w[0].size == self.cfg.context]
        groups = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
        groups += [[w] for w in windows if w[0].size != self.cfg.context]  # the short tail
        for group in groups:
            x = np.stack([w[0] for w in group])
            y = np.stack([w[1] for w in group])
            logits = self.model(x)
            total_loss += float(loss_fn(logits, y))
            n_tokens += y.size
            n_correct += int((logits.argmax(-1) == y).sum())
        loss = total_loss / max(n_tokens, 1)
        shown = []
        if n_examples_shown:
            text = getattr(self.task, split)
            n_prompt, n_new = min(48, self.cfg.context // 2), 160
            step = max((len(text) - n_prompt - n_new) // n_examples_shown, 1)
            starts = [i * step for i in range(n_examples_shown)
                      if i * step + n_prompt + n_new <= len(text)]
            prompts = [text[s:s + n_prompt] for s in starts]
            outs = self.generate(prompts, n_new, temperature=self.SAMPLE_TEMPERATURE, seed=0)
            shown = [(p, o, text[s + n_prompt:s + n_prompt + n_new])
                     for p, o, s in zip(prompts, outs, starts)]
        return Metrics(loss=loss, token_accuracy=n_correct / max(n_tokens, 1),
                       exact_match=None, perplexity=math.exp(min(loss, 50)), error_rate=None,
                       bits_per_char=loss / math.log(2), examples=shown)

    def example_input(self) -> str:
        """A prompt for the suggested ``decode`` command: the start of the valid split."""
        text = self.task.valid or self.task.train
        return text[:40].split("\n")[0].strip() or text[:20]

    def example_lines(self, m: Metrics) -> list[str]:
        lines = []
        for i, (prompt, out, ref) in enumerate(m.examples):
            lines += [f"  sample {i + 1} (temperature {self.SAMPLE_TEMPERATURE}): prompt "
                      f"{prompt!r}", f"    model: {out!r}", f"    text:  {ref!r}"]
        return lines

    def _metrics_line(self, split, m: Metrics) -> str:
        return (f"step {self.step}: {split} loss {m.loss:.4f}  ppl {m.perplexity:.3f}  "
                f"next-char acc {100 * m.token_accuracy:.2f}%  bits/char "
                f"{m.bits_per_char:.3f}")

    def generate(self, prompts: list[str], n: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0) -> list[str]:
        """Continue each prompt by ``n`` characters (temperature 0: greedy).

        Decoding uses the KV cache; the model sees at most ``context``
        positions, so when a continuation would run past them the last
        ``context // 2`` characters become a fresh prompt.  An empty prompt
        starts from a newline (or the most frequent character)."""
        if n < 0:
            raise UserError(f"n must be >= 0, got {n}")
        self.model.eval()
        ctx = self.cfg.context
        tok = self.tgt_tok
        fallback = tok.stoi.get("\n", 4 if len(tok) > 4 else 3)
        rng = np.random.default_rng(seed)
        outs = []
        for prompt in prompts:
            seq = tok.encode(prompt) or [fallback]
            produced = 0
            while produced < n:
                remaining = n - produced
                keep = len(seq) if len(seq) + remaining <= ctx else ctx // 2
                context = seq[-min(keep, len(seq)):]
                new = min(remaining, ctx - len(context))
                ids = sample(self.model, np.array([context]), new, temperature=temperature,
                             top_k=top_k, rng=rng, suppress=SPECIAL_IDS)
                seq.extend(int(i) for i in ids[0, len(context):])
                produced += new
            outs.append(tok.decode(seq[len(seq) - n:], strip_special=False) if n else "")
        return outs

    def translate(self, sources: list[str], beam: int = 1, max_len: int = 64) -> list[str]:
        """Greedy continuations of ``max_len`` characters (``generate`` samples)."""
        if beam != 1:
            raise UserError("beam search applies to sequence-to-sequence runs; a language "
                            "model continues a prompt (greedy, or sampled with a temperature)")
        return self.generate(sources, max_len)

    def self_attention(self, text: str):
        """(tokens, weights (L, H, T, T)): the causal self-attention of every layer
        and head over the last ``context`` characters of ``text``."""
        self.model.eval()
        ids = self.tgt_tok.encode(text)[-self.cfg.context:]
        if not ids:
            raise UserError("no text to draw the attention of")
        with plain_attention(self.model):  # a tiled core never forms the weights
            _, cache = self.model.forward(np.array([ids]))
        weights = np.stack([c.self_attn.alpha[0] for c in cache.blocks])
        return [self.tgt_tok.itos[i] for i in ids], weights

    def cross_attention(self, source: str, beam: int = 1, max_len: int = 64):
        raise UserError("a language model has no cross-attention; self_attention(text) "
                        "gives its causal self-attention")
