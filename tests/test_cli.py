import subprocess
import sys

import numpy as np

from numtransformer import Linear, cli


def test_gradcheck_command_covers_every_layer_and_passes(capsys):
    # The whole command (104 cases, ~40-60 s) is run for each release and its
    # table is in the README; here every layer must be among its cases, and
    # the command must pass on a cheap subset.  Each layer's backward is also
    # checked by its own hypothesis-drawn gradcheck in the suite.
    from numtransformer.selfcheck import all_cases

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
                  "Seq2Seq", "MemN2N", "BertModel", "SentenceEncoder"]:
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

