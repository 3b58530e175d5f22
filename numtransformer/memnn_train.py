"""Training an End-To-End Memory Network on a bAbI-style task.

    from numtransformer.memnn_train import train_memnn
    result = train_memnn(1, hops=3, tying="adjacent", epochs=100, seed=0)
    result["test_error"]      # fraction of test questions answered wrongly

The defaults are the recipe of ``benchmarks/memnn_babi.py`` (paper schedule,
linear start, random noise; 5000 / 500 / 1000 generated stories).

One model per task ("per-task training", as the paper's independent runs).
The recipe follows the paper (Sukhbaatar et al., 2015, sec. 4.2) with the
optimizer as an option:

* cross-entropy of the answer word, summed over the batch (``loss='sum'``, the
  paper's scale for its learning rate and clipping norm) or averaged;
* SGD, learning rate ``lr`` halved every ``anneal_every`` epochs
  (paper: 0.01, halved every 25 epochs, 100 epochs), or Adam with the same
  step decay; gradients clipped to global norm ``max_grad_norm`` (paper: 40;
  None or 0: no clipping);
* linear start (LS, sec. 4.2): the first ``linear_start_epochs`` epochs run
  with the hops' softmax removed, at ``lr * linear_start_lr_scale``; then the
  softmax returns (the paper switches when validation loss stops falling;
  here after a fixed number of epochs, or earlier when ``linear_start_patience``
  epochs pass without a better validation loss);
* random noise (RN, sec. 4.1): each training story gets about
  ``random_noise`` x its length extra empty memories at random places, so the
  temporal encoding is not fitted to exact positions (0 disables it);
* the reported model is the one with the lowest validation error after
  linear start (a run that ends during linear start reports its last model,
  evaluated without the softmax as it was trained).

Everything random (data, init, batch order, noise) follows ``seed``.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data.babi import BABI_TASKS, BabiBatch, BabiData, encode_babi, make_babi
from .data.tokenizers import PAD_ID
from .losses import CrossEntropyLoss
from .models import registry
from .models.memnn import MemN2N
from .optim import SGD, Adam, clip_grad_norm
from .train.errors import ConfigError

__all__ = ["train_memnn", "evaluate_memnn", "add_random_noise", "save_memnn", "load_memnn",
           "MEMNN_RUN"]

MEMNN_RUN = "memnn-training-run"  # the checkpoint kind
# what a checkpoint must hold to rebuild the model and regenerate its stories, with bounds
# that keep a forged file from asking for absurd work (the recipe's own sizes are far below)
_MEMNN_FIELDS = {"task": (1, 20), "hops": (1, 64), "d": (1, 4096), "memory_size": (1, 10_000),
                 "n_train": (1, 200_000), "n_valid": (1, 200_000), "n_test": (1, 200_000),
                 "seed": (0, 2**63 - 1)}


def _build(vocab_size, d, hops, memory_size, tying, position_encoding, temporal, dtype, rng):
    """The MemN2N the registry's memnn entry builds from these settings."""
    settings = SimpleNamespace(d=d, hops=hops, memory_size=memory_size, tying=tying,
                               position_encoding=position_encoding, temporal=temporal,
                               pad_id=PAD_ID, dtype=dtype)
    return registry.get("memnn").build(settings, vocab_size, vocab_size, rng)


def evaluate_memnn(model: MemN2N, batch: BabiBatch, batch_size: int = 256,
                   linear_start: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, error rate) of ``model`` on every example of ``batch``."""
    ce = CrossEntropyLoss(reduction="sum")
    total_loss, wrong = 0.0, 0
    n = len(batch)
    for start in range(0, n, batch_size):
        b = batch.take(np.arange(start, min(n, start + batch_size)))
        logits, _ = model.forward(b.story, b.query, b.story_pad_mask, linear_start=linear_start)
        loss, _ = ce.forward(logits, b.answer)
        total_loss += float(loss)
        wrong += int(np.sum(np.argmax(logits, axis=-1) != b.answer))
    return total_loss / n, wrong / n


def add_random_noise(batch: BabiBatch, rate: float, rng: np.random.Generator,
                     memory_size: int) -> BabiBatch:
    """Insert empty memories ("random noise", sec. 4.1) into each story.

    Story b with n sentences gets ``Binomial(n, rate)`` empty slots at random
    places (never more than ``memory_size`` slots in all).  The empty slots are
    *real* memories (not masked): their content is only a temporal code, so
    the model learns to skip them.  Returns the new batch (sentences keep their
    order; ``story_pad_mask`` is False on the empty memories).
    """
    B, N, J = batch.story.shape
    lengths = (~batch.story_pad_mask).sum(axis=1)
    extra = np.minimum(rng.binomial(lengths, rate), memory_size - lengths)
    N2 = max(1, int((lengths + extra).max()))
    story = np.full((B, N2, J), PAD_ID, dtype=batch.story.dtype)
    mask = np.ones((B, N2), dtype=bool)
    support = np.zeros((B, N2), dtype=bool)
    for b in range(B):
        n, e = int(lengths[b]), int(extra[b])
        slots = np.sort(rng.choice(n + e, size=n, replace=False))  # where the sentences go
        story[b, slots] = batch.story[b, :n]
        support[b, slots] = batch.support_mask[b, :n]
        mask[b, : n + e] = False
    return BabiBatch(story, mask, batch.query, batch.query_pad_mask, batch.answer, support)


def train_memnn(task: int, *, hops: int = 3, tying: str = "adjacent", d: int = 20,
                epochs: int = 100, steps: int | None = None, batch_size: int = 32,
                optimizer: str = "sgd",
                lr: float | None = None, anneal_every: int = 25, anneal_factor: float = 0.5,
                max_grad_norm: float | None = 40.0, loss: str = "sum",
                linear_start_epochs: int = 20, linear_start_lr_scale: float = 0.5,
                linear_start_patience: int | None = 3, random_noise: float = 0.1,
                position_encoding: bool = True, temporal: bool = True,
                n_train: int = 5000, n_valid: int = 500, n_test: int = 1000,
                memory_size: int = 50, data: BabiData | None = None, seed: int = 0,
                dtype=np.float32, log=print, log_every: int = 10) -> dict:
    """Train a MemN2N on bAbI task ``task`` (1, 2, 3, 5, 6 or 7) and evaluate it.

    ``steps``, when given, replaces ``epochs``: training stops after that many
    optimizer steps (the schedule still counts epochs of ``ceil(n_train /
    batch_size)`` steps).  ``lr`` defaults to 0.01 for SGD (the paper) and
    0.005 for Adam.  ``data`` overrides the generated splits (else
    ``make_babi(task, n_train, n_valid, n_test, seed)``).  ``log`` receives one
    line per ``log_every`` epochs and a summary (``None``: silent).

    Returns a dict: the metrics ``task``, ``hops``, ``tying``, ``epochs``,
    ``steps``, ``seconds``, ``best_epoch``, ``train_error``, ``valid_error``,
    ``test_error``, ``test_loss``, ``n_train``, ``n_test``; and, for inspection,
    ``model`` (the best MemN2N, by validation error) and ``data`` (the BabiData).
    """
    if task not in BABI_TASKS:
        raise ConfigError(f"train_memnn: unknown task {task!r}; expected one of "
                          f"{sorted(BABI_TASKS)}")
    if optimizer not in ("sgd", "adam"):
        raise ConfigError(f"train_memnn: optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if loss not in ("sum", "mean"):
        raise ConfigError(f"train_memnn: loss must be 'sum' or 'mean', got {loss!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("anneal_every", anneal_every), ("steps", 1 if steps is None else steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"train_memnn: {name} must be an int >= 1, got {value!r}")
    if not 0.0 <= random_noise < 1.0:
        raise ConfigError(f"train_memnn: random_noise must be in [0, 1), got {random_noise}")
    say = log if log is not None else (lambda *_: None)
    start_time = time.perf_counter()
    own_data = data is None
    if own_data:
        data = make_babi(task, n_train, n_valid, n_test, seed=seed)
    if not (data.train and data.valid and data.test):
        raise ValueError(f"train_memnn: every split needs at least one story, got "
                         f"{len(data.train)} / {len(data.valid)} / {len(data.test)}")
    tok = data.tokenizer
    train = encode_babi(data.train, tok, memory_size)
    valid = encode_babi(data.valid, tok, memory_size)
    test = encode_babi(data.test, tok, memory_size)
    rng = np.random.default_rng([seed, 0x6D656D])
    model = _build(len(tok), d, hops, memory_size, tying, position_encoding, temporal, dtype, rng)
    if lr is None:
        lr = 0.01 if optimizer == "sgd" else 0.005
    opt = SGD(model, lr=lr) if optimizer == "sgd" else Adam(model, lr=lr)
    ce = CrossEntropyLoss(reduction=loss)
    n = len(train)
    if steps is not None:
        epochs = math.ceil(steps / math.ceil(n / batch_size))
    step_count, best = 0, (math.inf, math.inf, -1, None)  # (valid error, valid loss, epoch, params)
    linear = linear_start_epochs > 0
    ls_best, ls_wait = math.inf, 0
    for epoch in range(1, epochs + 1):
        rate = lr * anneal_factor ** ((epoch - 1) // anneal_every)
        opt.lr = rate * linear_start_lr_scale if linear else rate
        order = np.random.default_rng([seed, epoch]).permutation(n)
        train_loss = 0.0
        for i in range(0, n, batch_size):
            if steps is not None and step_count == steps:
                break
            batch = train.take(order[i: i + batch_size])
            if random_noise > 0:
                batch = add_random_noise(batch, random_noise, rng, memory_size)
            logits, cache = model.forward(batch.story, batch.query, batch.story_pad_mask,
                                          linear_start=linear)
            value, ce_cache = ce.forward(logits, batch.answer)
            if not np.isfinite(value):
                raise FloatingPointError(f"train_memnn: loss became {float(value)} at epoch "
                                         f"{epoch} (lower the learning rate)")
            train_loss += float(value) * (1 if loss == "sum" else len(batch))
            model.zero_grad()
            model.backward(ce.backward(1.0, ce_cache), cache)
            if max_grad_norm:  # None or 0: no clipping
                clip_grad_norm(model.parameters(), max_grad_norm)
            opt.step()
            step_count += 1
        v_loss, v_err = evaluate_memnn(model, valid, linear_start=linear)
        if linear:
            if v_loss < ls_best:
                ls_best, ls_wait = v_loss, 0
            else:
                ls_wait += 1
            patience_out = linear_start_patience is not None and ls_wait >= linear_start_patience
            if epoch >= linear_start_epochs or patience_out:
                linear = False
                say(f"epoch {epoch}: linear start ends, softmax inserted")
        elif (v_err, v_loss) < best[:2]:
            best = (v_err, v_loss, epoch, model.state_dict())  # copies
        if epoch % log_every == 0 or epoch == epochs:
            say(f"task {task} epoch {epoch:3d}  lr {opt.lr:.4g}  train loss "
                f"{train_loss / n:.4f}  valid loss {v_loss:.4f}  valid error {v_err:.3f}"
                + ("  (linear)" if linear else ""))
    if best[3] is not None:
        model.load_state_dict(best[3])
    else:  # training ended before (or during) linear start: the last model, as trained
        best = (None, None, epochs, None)
    _, train_err = evaluate_memnn(model, train, linear_start=linear)
    v_loss, v_err = evaluate_memnn(model, valid, linear_start=linear)
    t_loss, t_err = evaluate_memnn(model, test, linear_start=linear)
    seconds = time.perf_counter() - start_time
    say(f"task {task} ({BABI_TASKS[task]}): best epoch {best[2]}, train error {train_err:.3f}, "
        f"valid error {v_err:.3f}, test error {t_err:.3f}  ({seconds:.1f} s)")
    config = {"task": task, "hops": hops, "tying": tying, "d": d, "memory_size": memory_size,
              "position_encoding": bool(position_encoding), "temporal": bool(temporal),
              "n_train": n_train, "n_valid": n_valid, "n_test": n_test, "seed": seed,
              "generated": own_data, "linear_start": linear}  # still linear: no softmax
    return {"task": task, "hops": hops, "tying": tying, "epochs": epochs, "steps": step_count,
            "seconds": seconds, "best_epoch": best[2], "train_error": train_err,
            "valid_error": v_err, "test_error": t_err, "test_loss": t_loss,
            "n_train": len(data.train), "n_test": len(data.test), "model": model, "data": data,
            "config": config}


def save_memnn(path: str, result: dict) -> None:
    """Write the model of ``train_memnn``'s result with what rebuilds it: its sizes,
    the data generator's settings (the stories are regenerated, not stored) and the
    vocabulary (checked on load).  Atomic, like every checkpoint."""
    config = {"kind": MEMNN_RUN, **result["config"], "vocab": result["data"].tokenizer.to_json()}
    metrics = {k: result[k] for k in ("epochs", "steps", "seconds", "best_epoch",
                                      "train_error", "valid_error", "test_error", "test_loss")}
    save_checkpoint(path, result["model"], config, {"metrics": metrics})


def load_memnn(path: str) -> tuple[MemN2N, BabiData, dict]:
    """(model, data, config) of a checkpoint written by ``save_memnn``."""
    ck = load_checkpoint(path)
    cfg = ck.config
    if cfg.get("kind") != MEMNN_RUN:
        raise CheckpointError(f"checkpoint {path!r} is not a memory-network run")
    for name, (lo, hi) in _MEMNN_FIELDS.items():
        v = cfg.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise CheckpointError(f"checkpoint {path!r}: {name}={v!r}, expected an int in "
                                  f"[{lo}, {hi}]")
    if cfg["task"] not in BABI_TASKS:
        raise CheckpointError(f"checkpoint {path!r}: unknown bAbI task {cfg['task']}")
    if cfg.get("tying") not in ("adjacent", "layerwise"):
        raise CheckpointError(f"checkpoint {path!r}: tying={cfg.get('tying')!r}")
    for name in ("position_encoding", "temporal", "generated", "linear_start"):
        if not isinstance(cfg.get(name), bool):
            raise CheckpointError(f"checkpoint {path!r}: {name} must be true or false")
    if not cfg["generated"]:
        raise CheckpointError(f"checkpoint {path!r} was trained on stories passed in by its "
                              f"caller; only runs on generated stories can be rebuilt")
    if not ck.params:
        raise CheckpointError(f"checkpoint {path!r} holds no parameters")
    dtype = next(iter(ck.params.values())).dtype
    data = make_babi(cfg["task"], cfg["n_train"], cfg["n_valid"], cfg["n_test"], seed=cfg["seed"])
    if data.tokenizer.to_json() != cfg.get("vocab"):
        raise CheckpointError(f"checkpoint {path!r}: its vocabulary does not match the "
                              f"generator's (was the generator changed?)")
    try:
        model = _build(len(data.tokenizer), cfg["d"], cfg["hops"], cfg["memory_size"],
                       cfg["tying"], cfg["position_encoding"], cfg["temporal"], dtype, None)
        model.load_state_dict(ck.params)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: {exc}") from None
    return model, data, cfg
