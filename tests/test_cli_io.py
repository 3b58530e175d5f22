"""The command line says what happened: decode's inputs (blank lines, characters
outside the vocabulary, standard input, non-UTF-8 files, one output line per
input for every model), output paths checked before any work, --version,
defaults in --help, eval's metrics explained, gradcheck's progress, and the
size check before a model is allocated."""

import argparse
import inspect
import io
import itertools
import os
import sys

import numpy as np
import pytest

from numtransformer import cli
from numtransformer.train import TrainConfig, UserError

TINY = ["--steps", "2", "--n-train", "50", "--n-valid", "2", "--n-test", "2",
        "--eval-every", "0"]
RUNS = {  # a tiny run of every kind decode takes, and an input its vocabulary knows
    "transformer": (["--task", "copy", "--d-model", "16", "--nhead", "2", "--layers", "2",
                     "--ff", "32"], "123"),
    "seq2seq": (["--model", "seq2seq", "--task", "copy", "--d-model", "8", "--hidden-size",
                 "16", "--layers", "1"], "123"),
    "lm": (["--model", "lm", "--d-model", "16", "--nhead", "2", "--layers", "1", "--ff", "32",
            "--context", "16"], "the"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for kind, (flags, good) in RUNS.items():
        path = str(root / kind)
        assert cli.main(["train", *flags, *TINY, "--out", path]) == 0
        out[kind] = (path, good)
    return out


def _one_line_error(capsys, *needles):
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    for needle in needles:
        assert needle in captured.err, (needle, captured.err)
    return captured


# -- decode's inputs ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(RUNS))
def test_blank_and_unknown_lines_give_empty_output_lines_for_every_model(kind, runs, tmp_path,
                                                                         capsys, monkeypatch):
    """Every input line gives one output line: a blank line (empty, spaces, a CRLF line
    end) and a line with no known character give an empty one, named on stderr; a line
    with some unknown characters is decoded, and they are named with the line."""
    from numtransformer.train import LMTrainer, Trainer

    decoded = []
    for klass, method in ((Trainer, "translate"), (LMTrainer, "generate")):
        original = getattr(klass, method)

        def recording(self, texts, *args, _original=original, **kwargs):
            decoded.append(list(texts))
            return _original(self, texts, *args, **kwargs)

        monkeypatch.setattr(klass, method, recording)
    path, good = runs[kind]
    lines = [good, "", "   ", "日本", good[:2] + "日"]
    (tmp_path / "in.txt").write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")
    args = ["decode", "--checkpoint", path, "--input-file", str(tmp_path / "in.txt"),
            "--max-len", "5"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    out = captured.out.split("\n")
    assert len(out) == len(lines) + 1 and out[-1] == "", captured.out
    assert decoded == [[good, good[:2] + "日"]]  # only these reach the model
    assert out[1] == out[2] == out[3] == ""
    err = captured.err
    assert "line 2 is blank" in err and "line 3 is blank" in err, err
    assert "line 4: no character of it is in the vocabulary ('日', '本')" in err, err
    assert "line 5: '日' is not in the vocabulary (read as <unk>)" in err, err
    assert "line 1" not in err and "Traceback" not in err


@pytest.mark.parametrize("kind", list(RUNS))
def test_an_empty_argument_is_named_not_an_internal_error(kind, runs, capsys):
    path, good = runs[kind]
    assert cli.main(["decode", "--checkpoint", path, "", good, "--max-len", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2 and captured.out.startswith("\n"), captured.out
    assert captured.err.strip() == "numtransformer decode: warning: argument 1 is blank: its " \
                                   "output line is empty"


def test_inputs_and_outputs_longer_than_a_transformer_reads_are_named(runs, capsys):
    path, _ = runs["transformer"]  # its positions end at 256
    assert cli.main(["decode", "--checkpoint", path, "1" * 300, "12", "--max-len", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("\n") and captured.out.count("\n") == 2
    assert "argument 1 has 300 characters; this model reads at most 256: its output line is " \
           "empty" in captured.err
    assert cli.main(["decode", "--checkpoint", path, "12", "--max-len", "257"]) == 2
    _one_line_error(capsys, "--max-len 257: this model's positions end at 256")


def test_trace_names_unknown_characters_and_refuses_a_text_too_long(capsys):
    assert cli.main(["trace", "--text", "2009 日", "--values", "1"]) == 0
    assert "trace: warning: --text: '日' is not in the vocabulary (read as <unk>)" in \
        capsys.readouterr().err
    assert cli.main(["trace", "--text", "1" * 300]) == 2
    _one_line_error(capsys, "--text has 300 tokens; this model reads at most 256")


def test_decode_reads_standard_input(runs, monkeypatch, capsys):
    path, _ = runs["transformer"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"12\n345\n"),
                                                       encoding="utf-8"))
    assert cli.main(["decode", "--checkpoint", path, "--input-file", "-", "--max-len",
                     "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2 and captured.err == ""
    monkeypatch.setattr(sys, "stdin", io.StringIO("12\n\xff\n"))  # a text stream works too
    assert cli.main(["decode", "--checkpoint", path, "--input-file", "-"]) == 0
    assert "standard input line 2: no character" in capsys.readouterr().err


def test_a_non_utf8_input_file_names_the_file_and_line(runs, tmp_path, capsys):
    path, _ = runs["transformer"]
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("12\n34\n5é6\n".encode("latin-1"))
    assert cli.main(["decode", "--checkpoint", path, "--input-file", str(bad)]) == 2
    captured = _one_line_error(capsys, f"{bad}, line 3: not UTF-8", "byte 0xe9 at byte 2")
    assert captured.out == ""


def test_an_lm_gives_one_line_per_prompt_with_newlines_escaped(runs, monkeypatch, capsys):
    from numtransformer.train import LMTrainer

    path, _ = runs["lm"]
    continuations = iter([["he said\nno\\", ", and\r\n"], ["x\ny"]])
    monkeypatch.setattr(LMTrainer, "generate", lambda self, prompts, *a, **k: next(continuations))
    assert cli.main(["decode", "--checkpoint", path, "a", "b"]) == 0
    assert capsys.readouterr().out == "he said\\nno\\\\\n, and\\r\\n\n"
    # one prompt on the command line: the prompt and its continuation, as text
    assert cli.main(["decode", "--checkpoint", path, "a"]) == 0
    assert capsys.readouterr().out == "ax\ny\n"


def test_nothing_to_decode_and_a_missing_file_are_one_line(tmp_path, capsys):
    assert cli.main(["decode", "--checkpoint", str(tmp_path)]) == 2
    _one_line_error(capsys, "nothing to decode")
    assert cli.main(["decode", "--checkpoint", str(tmp_path), "--input-file",
                     str(tmp_path)]) == 2
    _one_line_error(capsys, "is a directory")


# -- output paths are checked before any work -------------------------------------------------
def test_attention_paths_are_checked_before_decoding(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path, _ = runs["transformer"]
    for target, message in ((tmp_path / "missing" / "dir" / "x.png", "does not exist"),
                            (tmp_path / "x.xyz", "cannot write .xyz files"),
                            (tmp_path / "noext", "no suffix"),
                            (tmp_path, "is a directory")):
        assert cli.main(["decode", "--checkpoint", path, "12", "--attention",
                         str(target)]) == 2
        assert _one_line_error(capsys, message).out == ""  # nothing decoded, nothing printed
    # a layer the model does not have: refused before the output is printed
    assert cli.main(["decode", "--checkpoint", path, "12", "--attention",
                     str(tmp_path / "a.png"), "--layer", "2"]) == 2
    assert _one_line_error(capsys, "--layer 2: the model has 2 layers").out == ""
    # a missing checkpoint and a bad path: the path is named first (no run is loaded)
    assert cli.main(["decode", "--checkpoint", str(tmp_path / "nope"), "12", "--attention",
                     str(tmp_path / "x.xyz")]) == 2
    _one_line_error(capsys, "--attention")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write into any directory")
def test_an_unwritable_attention_directory_is_refused(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["decode", "--checkpoint", runs["transformer"][0], "12",
                         "--attention", str(locked / "a.png")]) == 2
        _one_line_error(capsys, "is not writable")
    finally:
        locked.chmod(0o700)


def test_attention_without_matplotlib_is_refused_first(runs, tmp_path, monkeypatch, capsys):
    from numtransformer import plotting

    def missing():
        raise ImportError("drawing attention needs matplotlib: pip install ...")

    monkeypatch.setattr(plotting, "image_formats", missing)
    assert cli.main(["decode", "--checkpoint", runs["transformer"][0], "12", "--attention",
                     str(tmp_path / "a.png")]) == 2
    assert _one_line_error(capsys, "--attention: drawing attention needs matplotlib").out == ""


def test_attention_titles_number_layers_and_heads_from_one(runs, tmp_path, monkeypatch,
                                                           capsys):
    pytest.importorskip("matplotlib")
    from numtransformer import plotting

    drawn = {}
    monkeypatch.setattr(plotting, "plot_attention",
                        lambda w, src, out, path, **kw: drawn.update(w=w, path=path, **kw))
    path, _ = runs["transformer"]
    png = str(tmp_path / "a.png")
    assert cli.main(["decode", "--checkpoint", path, "", "12", "--attention", png, "--heads",
                     "--layer", "0"]) == 0
    assert drawn["titles"] == ["head 1 of 2", "head 2 of 2"] and drawn["w"].shape[0] == 2
    assert "decoder layer 1 of 2 (--layer 0)" in drawn["suptitle"]
    assert (drawn["xlabel"], drawn["ylabel"]) == ("input", "output")
    assert "argument 2 ('12') written to" in capsys.readouterr().err  # the first decoded input
    assert cli.main(["decode", "--checkpoint", path, "12", "--attention", png]) == 0
    assert drawn["titles"] == ["mean of 2 heads"] and drawn["w"].ndim == 2
    assert "decoder layer 2 of 2 (--layer 1)" in drawn["suptitle"]


# -- --version, --help ------------------------------------------------------------------------
def test_version(capsys):
    from numtransformer import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"numtransformer {__version__} (numpy ")


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_with_a_value_shows_its_default():
    for name, sub in _subparsers(cli.build_parser()).items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if (not action.option_strings or action.nargs == 0 or action.required
                    or isinstance(action, argparse._HelpAction)
                    or action.help == argparse.SUPPRESS):
                continue  # flags (on / off), required options, -h, hidden options
            text = formatter._expand_help(action) if action.help else ""
            assert "default" in text, (name, action.option_strings, text)
    train = _subparsers(cli.build_parser())["train"].format_help()
    # the kinds' own defaults, where they depart from TrainConfig's
    assert "(default: 4000; lm: 2000)" in " ".join(train.split())
    assert "(default: 64; memnn: 20)" in " ".join(train.split())


def test_eval_help_explains_its_metrics():
    text = " ".join(_subparsers(cli.build_parser())["eval"].format_help().split())
    for words in ("exact match", "token accuracy", "error rate", "insertion", "exceed 100%",
                  "label smoothing", "bits per character"):
        assert words in text, words


def test_eval_explains_an_error_rate_above_100_percent(runs, monkeypatch, capsys):
    import dataclasses

    from numtransformer.train import Trainer

    original = Trainer.evaluate
    for rate, said in ((2.5, True), (0.5, False)):
        def evaluate(self, *args, _rate=rate, **kwargs):
            return dataclasses.replace(original(self, *args, **kwargs), error_rate=_rate)

        monkeypatch.setattr(Trainer, "evaluate", evaluate)
        assert cli.main(["eval", "--checkpoint", runs["transformer"][0], "--limit", "2"]) == 0
        out = capsys.readouterr().out
        assert f"error rate {100 * rate:.2f}%" in out
        assert ("every extra token counts as an insertion" in out) == said, out


def test_decode_help_says_what_blank_lines_and_lm_outputs_give():
    text = " ".join(_subparsers(cli.build_parser())["decode"].format_help().split())
    for words in ("blank input", "output line is empty", "- reads standard input",
                  "newline written as \\n"):
        assert words in text, words


# -- gradcheck's progress ------------------------------------------------------------------
def test_gradcheck_shows_progress_on_stderr(capsys):
    assert cli.main(["gradcheck", "--only", "LayerNorm"]) == 0
    captured = capsys.readouterr()
    assert "gradcheck: 1/" in captured.err and "LayerNorm" in captured.err, captured.err
    assert "gradcheck:" not in captured.out  # the table stays clean


def test_progress_is_a_counter_on_a_terminal_and_a_line_per_family_in_a_log():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    log = io.StringIO()
    progress = cli._Progress("gradcheck", log)
    for k, name in enumerate(["Linear", "Linear(bias=False)", "GELU", "GELU(tanh)"], 1):
        progress(k, 4, name)
    progress.done()
    assert log.getvalue() == "gradcheck: 1/4 Linear\ngradcheck: 3/4 GELU\n"
    tty = Tty()
    progress = cli._Progress("gradcheck", tty)
    progress(1, 2, "LongName(with options)")
    progress(2, 2, "GELU")
    progress.done()
    text = tty.getvalue()
    assert "\n" not in text and "\rgradcheck: 2/2 GELU" in text and text.endswith("\r")


# -- sizes are checked before allocating ---------------------------------------------------
def _configs():
    for nf, tie, layers in itertools.product([False, True], [False, True], [1, 2]):
        yield dict(norm_first=nf, tie_output=tie, layers=layers)
        yield dict(model="lm", task="text:hamlet", context=24, tie_output=tie, layers=layers)
    for arch, kv in itertools.product(["gpt", "llama"], [None, 1]):
        yield dict(model="lm", task="text:hamlet", context=24, arch=arch, kv_heads=kv)
    for model, cell, decoder, layers in itertools.product(
            ["seq2seq", "lstmn"], ["rnn", "lstm", "gru"], ["luong", "bahdanau", "none"], [1, 2]):
        yield dict(model=model, cell=cell, decoder=decoder, layers=layers)
    for score in ("dot", "scaled_dot", "general", "additive", "cosine", "location"):
        yield dict(model="seq2seq", score=score)


def test_the_parameter_count_is_exact_for_every_kind():
    from numtransformer.train.loop import build_model
    from numtransformer.train.sizes import count_parameters

    fields = {f.name for f in TrainConfig.settings()}
    for kw in _configs():
        if not set(kw) <= fields:  # a setting this version does not have
            continue
        cfg = TrainConfig(**{"d_model": 8, "nhead": 2, "dim_feedforward": 12, "hidden_size": 6,
                             **kw})
        model = build_model(cfg, 11, 13, np.random.default_rng(0))
        assert count_parameters(cfg, 11, 13) == model.num_parameters(), kw


def test_a_model_that_cannot_fit_is_refused_in_one_line_before_allocating():
    from numtransformer.train.sizes import available_memory, check_fits, estimate

    huge = TrainConfig(d_model=1_000_000, nhead=1)
    with pytest.raises(UserError) as info:
        check_fits(huge, available=8 * 2**30)
    message = str(info.value)
    assert "\n" not in message and "does not fit in memory" in message
    assert "at least 24,002,104,001,024 parameters (float32)" in message
    assert "TiB for the parameters, their gradients and AdamW's two moments" in message
    assert "against 8.0 GiB available" in message and "--d-model" in message
    # the real vocabulary makes the count exact; the default run fits in 1 GiB
    est = check_fits(TrainConfig(), 20, 20, available=2**30)
    assert not est.lower_bound and est.parameters > 0 and est.fits
    assert est.state_bytes == 16 * est.parameters  # float32: parameters, grads, 2 moments
    assert check_fits(huge, available=None).fits  # memory unknown: nothing refused
    assert estimate(TrainConfig(dtype="float64"), 20, 20).state_bytes == 2 * est.state_bytes
    room = available_memory()
    assert room is None or room > 0


@pytest.mark.skipif("check_fits" not in inspect.getsource(cli._cmd_train),
                    reason="train calls train.sizes.check_fits once the lead wires it in")
def test_train_refuses_a_model_that_cannot_fit(tmp_path, capsys):
    assert cli.main(["train", "--d-model", "1000000", "--nhead", "1", "--out",
                     str(tmp_path / "big")]) == 2
    _one_line_error(capsys, "does not fit in memory", "parameters")
    assert not os.path.exists(tmp_path / "big" / "checkpoint.npz")


# -- the input helpers ------------------------------------------------------------------------
def test_read_lines_splits_like_an_editor(tmp_path, monkeypatch):
    from numtransformer._io import check_output_file, read_lines

    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfone\r\ntwo\n\nthree\x0bstill three\nlast")
    assert read_lines(str(f)) == ["one", "two", "", "three\x0bstill three", "last"]
    f.write_bytes(b"")
    assert read_lines(str(f)) == []
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"x\n\xc3(\n")))
    with pytest.raises(UserError, match=r"standard input, line 2: not UTF-8 text \(byte 0xc3 "
                                        r"at byte 1 of the line\)"):
        read_lines("-")
    with pytest.raises(UserError, match="no such file"):
        read_lines(str(tmp_path / "missing"))
    assert check_output_file(str(tmp_path / "out.svg"), "--out", ("png", "svg")).endswith("svg")
    with pytest.raises(UserError, match="is a directory"):
        check_output_file(str(tmp_path) + os.sep, "--out")


@pytest.mark.parametrize("kind", ["tsv", "text"])
def test_a_non_utf8_corpus_is_named_by_file_and_line(tmp_path, kind):
    from numtransformer.data.corpora import load_tsv_pairs
    from numtransformer.data.text import load_text

    path = tmp_path / f"bad.{kind}"
    path.write_bytes(b"one\ttwo\nthree\tf\xe9our\n")
    with pytest.raises(ValueError) as info:
        (load_tsv_pairs if kind == "tsv" else load_text)(
            str(path) if kind == "tsv" else f"text:{path}")
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "0xe9" in message
