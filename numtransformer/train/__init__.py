"""Training: one loop for every model, with evaluation, checkpoints that
resume bit for bit, and a progress display.

    cfg = TrainConfig(task="dates", steps=3000)
    run = Trainer(cfg, out_dir="runs/dates")     # builds data, model, optimizer
    metrics = run.fit()                          # trains, evaluates, saves

``make_trainer(cfg, ...)`` builds the trainer the model kind names (in
``numtransformer.models.registry``): ``Trainer`` for the sequence-to-sequence
kinds (transformer, seq2seq, lstmn), ``LMTrainer`` for ``--model lm`` (a
decoder-only character language model on a text, ``task="text:hamlet"`` or
``"text:PATH"``: random windows of ``context`` characters, next-character
cross-entropy, evaluation in bits per character).  ``Trainer.resume(out_dir)``
and ``Trainer.from_checkpoint(path)`` return the trainer of the saved run's kind.

The package, by concern:

    config.py    TrainConfig: the settings of a run, their ranges and choices
                 (from which the CLI's train flags are derived)
    loop.py      Trainer: the step, the loop, evaluation, checkpoints and resume;
                 make_trainer, build_model
    lm.py        LMTrainer: the loop for character language models
    rundir.py    the run directory and its lock
    metrics.py   the progress line, the Metrics of an evaluation
    errors.py    UserError (a mistake in what was asked), TrainingError
"""

from .config import DTYPES, SCHEDULES, TOKENS, Range, TrainConfig
from .errors import ConfigError, TrainingError, UserError
from .lm import SPECIAL_IDS, LMTrainer
from .loop import (MAX_EXAMPLES, MODEL_KINDS, Trainer, _check_sizes, _schedule, build_model,
                   make_trainer, resolve_trainer, trainer_class)
from .metrics import Metrics, Progress, _fmt_time, _sacrebleu
from .rundir import CHECKPOINT, _alive, _Lock, claim

__all__ = ["TrainConfig", "Trainer", "LMTrainer", "TrainingError", "build_model",
           "MODEL_KINDS", "make_trainer", "trainer_class", "resolve_trainer", "UserError",
           "ConfigError", "Metrics", "Progress", "CHECKPOINT", "SPECIAL_IDS", "MAX_EXAMPLES",
           "Range", "SCHEDULES", "DTYPES", "TOKENS", "claim"]
