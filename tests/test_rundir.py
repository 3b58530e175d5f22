"""Self-contained run directories (issue 23): a run on a file (``tsv:PATH``,
``text:PATH``) is named after the file's base name, records the file's path,
size and sha256, and keeps a copy of it (or, for a corpus of 5 MB or more, its
valid and test splits), so ``eval``, ``decode`` and ``trace`` work after the
corpus moves and from any working directory; ``--resume`` says when the corpus
moved, and needs it only when the directory keeps just the splits."""

from __future__ import annotations

import os
import random
import shutil

import numpy as np
import pytest

from numtransformer import cli
from numtransformer.checkpoint import CheckpointError, load_checkpoint
from numtransformer.train import Trainer, rundir
from numtransformer.train.rundir import default_run_dir, run_name

SMALL = ["--steps", "4", "--d-model", "16", "--nhead", "2", "--layers", "1", "--ff", "32",
         "--n-valid", "10", "--n-test", "10", "--batch-size", "16", "--eval-every", "0"]


@pytest.fixture
def corpus(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "data" / "good.tsv"
    path.parent.mkdir()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(200):
            s = "".join(rng.choice("abcdef") for _ in range(rng.randint(2, 8)))
            f.write(f"{s}\t{s[::-1]}\n")
    return path


@pytest.fixture
def poem(tmp_path):
    path = tmp_path / "data" / "poem.txt"
    path.parent.mkdir(exist_ok=True)
    rng = random.Random(1)
    path.write_text("".join(rng.choice("the cat sat on a mat.\n") for _ in range(3000)),
                    encoding="utf-8")
    return path


def _one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_default_names_use_the_file_base_name_and_no_colon():
    assert run_name("tsv:/data/good.tsv") == "good"
    assert run_name("text:../books/poem.txt") == "poem"
    assert run_name("text:hamlet") == "hamlet"
    assert run_name("babi:1") == "babi1"
    assert run_name("dates") == "dates"
    for task in ("tsv:/data/good.tsv", "text:C:\\corpus\\x.txt", "babi:3", "tsv:a b:c.tsv"):
        name = os.path.basename(default_run_dir(task, "transformer"))
        assert ":" not in name and "/" not in name and "\\" not in name and " " not in name


def test_a_tsv_run_works_after_its_corpus_moves_and_from_another_directory(
        tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.chdir(corpus.parent)
    assert cli.main(["train", "--task", "tsv:good.tsv", *SMALL]) == 0  # a relative path
    (name,) = os.listdir("runs")
    assert name.startswith("good-transformer-")
    run = corpus.parent / "runs" / name
    assert sorted(os.listdir(run)) == [".lock", "checkpoint.npz", "corpus.tsv"]
    record = load_checkpoint(str(run / "checkpoint.npz")).config["data"]
    assert record["path"] == str(corpus) and record["size"] == corpus.stat().st_size
    assert record["stored"] == "copy" and len(record["sha256"]) == 64
    capsys.readouterr()
    shutil.move(str(corpus), str(tmp_path / "elsewhere.tsv"))
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert cli.main(["eval", "--checkpoint", str(run), "--limit", "5", "--json"]) == 0
    assert cli.main(["decode", "--checkpoint", str(run), "abc"]) == 0
    assert cli.main(["trace", "--checkpoint", str(run)]) == 0
    capsys.readouterr()
    # --resume works on the copy, and says in one line that the corpus moved
    assert cli.main(["train", "--out", str(run), "--resume", "--steps", "6"]) == 0
    text = capsys.readouterr().out
    note = [line for line in text.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and str(corpus) in note[0] and record["sha256"][:16] in note[0]
    assert "has moved or changed" in note[0]
    assert load_checkpoint(str(run / "checkpoint.npz")).meta["step"] == 6


def test_a_resumed_copy_run_equals_the_straight_run_after_the_corpus_changed(tmp_path, corpus):
    from numtransformer.train import TrainConfig

    cfg = dict(task=f"tsv:{corpus}", n_valid=10, n_test=10, d_model=16, nhead=2, layers=1,
               dim_feedforward=32, batch_size=16, eval_every=0, steps=8)
    null = open(os.devnull, "w")
    straight = Trainer(TrainConfig(**cfg), stream=null)
    straight.fit()
    first = Trainer(TrainConfig(**cfg), out_dir=str(tmp_path / "run"), stream=null)
    first.fit(until=4)
    first.close()
    corpus.write_text("changed\tdegnahc\n" * 50, encoding="utf-8")
    notes = []
    again = Trainer.resume(str(tmp_path / "run"), stream=null, log=notes.append)
    again.fit()
    again.close()
    assert len(notes) == 1 and "moved or changed" in notes[0]
    for (n, a), (_, b) in zip(straight.model.named_parameters(),
                              again.model.named_parameters()):
        assert np.array_equal(a.data, b.data), n


def test_a_large_corpus_keeps_its_splits_and_resume_names_the_missing_corpus(
        tmp_path, corpus, monkeypatch, capsys):
    monkeypatch.setattr(rundir, "SMALL_CORPUS", 100)  # "large": splits, not a copy
    run = str(tmp_path / "run")
    assert cli.main(["train", "--task", f"tsv:{corpus}", "--out", run, *SMALL]) == 0
    assert sorted(os.listdir(run)) == [".lock", "checkpoint.npz", "splits.json"]
    record = load_checkpoint(os.path.join(run, "checkpoint.npz")).config["data"]
    assert record["stored"] == "splits"
    capsys.readouterr()
    moved = tmp_path / "moved.tsv"
    shutil.move(str(corpus), str(moved))
    assert cli.main(["eval", "--checkpoint", run, "--json"]) == 0
    assert cli.main(["decode", "--checkpoint", run, "abc"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", run, "--split", "train"]) == 2
    assert "not the training split" in _one_line(capsys)
    # --resume needs the corpus: one line naming the recorded path and fingerprint
    assert cli.main(["train", "--out", run, "--resume", "--steps", "6"]) == 2
    err = _one_line(capsys)
    assert str(corpus) in err and record["sha256"][:16] in err and "--task tsv:NEWPATH" in err
    # ... and given its new place, resumes
    assert cli.main(["train", "--out", run, "--resume", "--steps", "6",
                     "--task", f"tsv:{moved}"]) == 0
    ck = load_checkpoint(os.path.join(run, "checkpoint.npz"))
    assert ck.meta["step"] == 6 and ck.config["data"]["path"] == str(moved)
    # another file under the run's name is refused
    other = tmp_path / "other.tsv"
    other.write_text("x\ty\n" * 40, encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["train", "--out", run, "--resume", "--steps", "8",
                     "--task", f"tsv:{other}"]) == 2
    assert "is not the corpus of this run" in _one_line(capsys)


def test_a_text_run_keeps_its_text(tmp_path, poem, capsys):
    run = str(tmp_path / "run")
    args = ["train", "--model", "lm", "--task", f"text:{poem}", "--out", run, "--steps", "3",
            "--d-model", "16", "--nhead", "2", "--layers", "1", "--context", "16",
            "--batch-size", "4", "--eval-every", "0"]
    assert cli.main(args) == 0
    assert "corpus.txt" in os.listdir(run)
    os.remove(poem)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", run, "--json"]) == 0
    assert cli.main(["decode", "--checkpoint", run, "--max-len", "5", "the"]) == 0
    # without its copy and without the text, the checkpoint says what is missing
    os.remove(os.path.join(run, "corpus.txt"))
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", run]) == 2
    err = _one_line(capsys)
    assert "'corpus.txt' is missing or changed" in err and str(poem) in err


def test_a_checkpoint_without_a_data_record_still_loads(tmp_path, corpus):
    """Checkpoints written before the record existed rebuild the data from the task."""
    from numtransformer.train import TrainConfig

    t = Trainer(TrainConfig(task=f"tsv:{corpus}", n_valid=10, n_test=10, d_model=16, nhead=2,
                            layers=1, dim_feedforward=32, steps=2),
                stream=open(os.devnull, "w"))
    t.fit()
    path = str(tmp_path / "old.npz")
    t.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    import json

    config = json.loads(str(arrays["config"]))
    del config["data"]
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    os.remove(os.path.join(tmp_path, "corpus.tsv"))
    np.savez(path, **arrays)
    again = Trainer.from_checkpoint(path)
    assert again.step == 2 and again.data_record is None
    os.remove(corpus)  # and, as before, it needs the corpus where the task says
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer.from_checkpoint(path)
