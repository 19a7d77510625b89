"""Rebuild data/samples/sst2: a small random sample of GLUE SST-2 and a WordPiece vocabulary trained on it.

    python data/samples/make_sst2_sample.py ../shared/data/glue/sst2

The sample is what `python run.py classify fit` (configs/classify/default.yaml) trains on, so the
embedded default works on a fresh clone without the shared data.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from tokenizers.implementations import BertWordPieceTokenizer
from tokenizers.processors import TemplateProcessing

HERE = Path(__file__).resolve().parent / "sst2"


def sample(src: Path, dst: Path, n: int, seed: int = 0, exclude: frozenset = frozenset()) -> list[str]:
    """`n` random rows of `src` (none of `exclude`) written to `dst` under its header; returns the rows."""
    lines = src.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [r for r in lines[1:] if r not in exclude]
    rows = random.Random(seed).sample(rows, min(n, len(rows)))
    dst.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return rows


def main(src_dir: str) -> None:
    src = Path(src_dir)
    HERE.mkdir(parents=True, exist_ok=True)
    texts = [row.split("\t")[0] for row in sample(src / "train.tsv", HERE / "train.tsv", 3000)]
    dev = sample(src / "dev.tsv", HERE / "dev.tsv", 300)
    # GLUE's test labels are hidden: the test sample is 300 other rows of dev, used neither to train nor to pick
    sample(src / "dev.tsv", HERE / "test.tsv", 300, seed=1, exclude=frozenset(dev))
    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(texts, vocab_size=2000, min_frequency=2)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = TemplateProcessing(  # BERT's: [CLS] A [SEP] (B [SEP]), segment ids 0 / 1
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer.save(str(HERE / "tokenizer.json"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/glue/sst2")
