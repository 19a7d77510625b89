"""Small self-contained tokenizer and BERT for the ner tests (no shared data needed)."""
from __future__ import annotations

from pathlib import Path

from conftest import FIXTURES

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab(whole_words: bool = True) -> list[str]:
    """A WordPiece vocabulary from the fixture's characters (so every word splits into known pieces), plus
    the fixture's 300 commonest lower-cased words when `whole_words`."""
    from collections import Counter
    words = Counter()
    for name in ("conll_train.txt", "conll_valid.txt", "conll_test.txt"):
        for line in (FIXTURES / name).read_text().splitlines():
            if line.strip() and not line.startswith("-DOCSTART-"):
                words[line.split()[0].lower()] += 1
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-"))
    vocab = SPECIALS + chars + ["##" + c for c in chars]
    if whole_words:
        vocab += [w for w, _ in words.most_common(300) if w not in vocab and len(w) > 1]
    return vocab


def tiny_wordpiece(tmp_path: Path, whole_words: bool = True):
    from data.tokenization import load_wordpiece
    path = Path(tmp_path) / "vocab.txt"
    path.write_text("\n".join(tiny_vocab(whole_words)) + "\n")
    return load_wordpiece(path)


def tiny_bert_dir(tmp_path: Path, seed: int = 0, num_layers: int = 2) -> Path:
    """A randomly initialised small BERT in Hugging Face format with the tiny vocabulary beside it."""
    import torch

    from modeling import BERT, BertConfig
    from modeling.hf import save_bert
    vocab = tiny_vocab()
    directory = Path(tmp_path) / "tiny-bert"
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_layers=num_layers, num_heads=2, ffn_size=64,
                        max_positions=128)
    save_bert(BERT(config, pooler=False), directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return directory
