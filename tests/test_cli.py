import os
import subprocess
import sys

import numpy as np
import pytest

from numtransformer import Linear, cli


def test_gradcheck_command_covers_every_layer_and_passes(capsys):
    # The whole command (all cases, ~40-60 s) is run for each release and its
    # table is in the README; here every layer must be among its cases, and
    # the command must pass on a cheap subset.  Each layer's backward is also
    # checked by its own hypothesis-drawn gradcheck in the suite.
    from numtransformer.cases import all_cases

    out = "\n" + "\n".join(case.name for case in all_cases()) + "\n"
    for layer in ["Linear", "Embedding", "ReLU", "GELU", "GELU(tanh)", "Tanh", "Sigmoid",
                  "Softmax", "Dropout", "LayerNorm", "PositionwiseFeedForward",
                  "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding",
                  "CrossEntropyLoss",
                  # the layers and models of the later issues
                  "TiedLinear", "DotScore", "ScaledDotScore", "GeneralScore", "AdditiveScore",
                  "CosineScore", "LocationScore", "Attention", "MultiHeadAttention", "RNNCell",
                  "LSTMCell", "GRUCell", "RNN", "LSTMN", "TransformerEncoderLayer",
                  "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
                  "Transformer", "TransformerLM", "LuongDecoder", "BahdanauDecoder", "Encoder",
                  "Seq2Seq", "MemN2N", "BertModel", "SentenceEncoder", "SublayerConnection",
                  "RMSNorm", "SiLU", "SwiGLUFeedForward"]:
        assert f"\n{layer}\n" in out or f"\n{layer}(" in out, layer
    assert cli.main(["gradcheck", "--only", "Linear"]) == 0
    out = capsys.readouterr().out
    assert "TiedLinear" in out and "all passed" in out and "FAIL" not in out


def test_gradcheck_command_fails_on_a_wrong_backward(capsys, monkeypatch):
    original = Linear.backward

    def broken(self, dy, cache):
        dx = original(self, dy, cache)
        self.W.grad *= 1.01
        return dx

    monkeypatch.setattr(Linear, "backward", broken)
    assert cli.main(["gradcheck", "--only", "Linear"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "FAILED: Linear" in out


def test_only_with_no_match_is_an_error(capsys):
    assert cli.main(["gradcheck", "--only", "NoSuchLayer"]) == 2


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "numtransformer", "gradcheck", "--only",
                             "LayerNorm"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LayerNorm" in result.stdout and "all passed" in result.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "gradcheck" in capsys.readouterr().out


def test_cli_gradcheck_is_seeded():
    from numtransformer.selfcheck import run_all

    a = [r.errors for _, r in run_all(seed=3, only="Linear")]
    b = [r.errors for _, r in run_all(seed=3, only="Linear")]
    assert a == b
    assert np.all([e < 1e-7 for errs in a for e in errs.values()])



# -- user mistakes are one line; failures inside the library show their traceback ----------
TINY_RUN = ["--task", "copy", "--steps", "2", "--d-model", "16", "--nhead", "2", "--layers", "1",
            "--ff", "32", "--n-train", "50", "--n-valid", "2", "--n-test", "2",
            "--eval-every", "0"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_mistakes_in_what_the_user_typed_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    # a run directory that does not exist
    assert cli.main(["train", "--resume", "--out", missing]) == 2
    _one_line_error(capsys, "does not exist")
    # a missing file: the input of decode, the corpus of a tsv task
    assert cli.main(["decode", "--checkpoint", missing, "--input-file", missing]) == 2
    _one_line_error(capsys, "no such file")
    assert cli.main(["train", "--task", f"tsv:{missing}.tsv", "--out", str(tmp_path / "a")]) == 2
    _one_line_error(capsys, "does not exist")
    # settings the config check refuses (the model kind's own check)
    assert cli.main(["train", "--d-model", "30", "--nhead", "4", "--out",
                     str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "not divisible")
    assert cli.main(["train", "--model", "seq2seq", "--hidden-size", "33", "--out",
                     str(tmp_path / "c")]) == 2
    _one_line_error(capsys, "hidden_size=33 must be even")
    # refused resumes: nothing to resume, a kind that cannot resume
    assert cli.main(["train", "--model", "memnn", "--resume", "--out", missing]) == 2
    _one_line_error(capsys, "--resume is not supported")
    out = str(tmp_path / "run")
    assert cli.main(["train", *TINY_RUN, "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["train", *TINY_RUN, "--out", out]) == 2  # a run is never overwritten
    _one_line_error(capsys, "already holds a checkpoint")
    assert cli.main(["decode", "--checkpoint", out, "--attention", str(tmp_path / "a.png"),
                     "--layer", "3", "12"]) == 2
    _one_line_error(capsys, "--layer 3")


def test_a_failure_inside_the_library_shows_its_traceback(tmp_path, monkeypatch):
    """A ValueError from a model is not the user's mistake: cli.main lets it through
    (in-process) and the command prints the traceback (exit status 1)."""
    from numtransformer.models.transformer import Transformer

    def broken(self, *args, **kwargs):
        raise ValueError("boom inside the model")

    monkeypatch.setattr(Transformer, "forward", broken)
    with pytest.raises(ValueError, match="boom inside the model"):
        cli.main(["train", *TINY_RUN, "--out", str(tmp_path / "run")])

    code = ("import sys\n"
            "from numtransformer.models.transformer import Transformer\n"
            "def broken(self, *a, **k):\n"
            "    raise ValueError('boom inside the model')\n"
            "Transformer.forward = broken\n"
            "from numtransformer.cli import main\n"
            f"sys.exit(main(['train', *{TINY_RUN!r}, '--out', {str(tmp_path / 'sub')!r}]))\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 1, result
    assert "Traceback (most recent call last)" in result.stderr, result.stderr
    assert "ValueError: boom inside the model" in result.stderr


def test_user_error_is_the_one_raised_where_input_is_checked():
    from numtransformer.train import ConfigError, TrainConfig, UserError

    assert cli.UserError is UserError and issubclass(UserError, ValueError)
    with pytest.raises(ConfigError, match="TrainConfig: score must be one of"):
        TrainConfig(score="dotty")
    with pytest.raises(ConfigError, match="not divisible by nhead"):
        TrainConfig(d_model=30, nhead=4)
