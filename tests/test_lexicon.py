"""Known words (tasks/lexicon.py) on a small BPE vocabulary trained on real AESLC emails, so that many words are
several pieces: every training word can be written piece by piece and ended, pieces that begin no known word
cannot be glued on, a word may not end half-way, and a source's own words are allowed for that source only."""
from __future__ import annotations

import json

import torch
from conftest import FIXTURES

from data.seq2seq import BOS_ID, EOS_ID, PAD_ID, UNK_ID, train_tokenizer
from tasks.lexicon import Lexicon, Words, split_words

SPECIALS = {PAD_ID, BOS_ID, EOS_ID, UNK_ID}
ROWS = [json.loads(line) for line in (FIXTURES / "aeslc_dev_head.jsonl").read_text().splitlines()]
TEXTS = [r["email"] for r in ROWS[:40]] + [r["subject"] for r in ROWS[:40]]
TOKENIZER = train_tokenizer(TEXTS, vocab_size=400, lowercase=True)
LEXICON = Lexicon(TOKENIZER, SPECIALS, TEXTS)
NO_SOURCE = [Words()]


def pieces(word: str) -> tuple[int, ...]:
    return tuple(TOKENIZER.encode(word, add_special_tokens=False).ids)


def allowed_after(*ids: int, sources=NO_SOURCE) -> torch.Tensor:
    """(V,) what may follow <s> ids (one prompt, one row)."""
    return LEXICON.allowed(torch.tensor([[BOS_ID, *ids]]), sources)[0]


def test_split_words_at_word_start_pieces():
    starts = [False] * 10
    for i in (1, 4, 7):
        starts[i] = True
    assert list(split_words([2, 1, 3, 4, 7, 8, 9], starts)) == [(1, 3), (4,), (7, 8, 9)]   # 2: before any word


def test_every_training_word_can_be_written_piece_by_piece_and_ended():
    words = {pieces(w) for text in TEXTS for w in text.lower().split(" ") if w}
    multi = [w for w in words if len(w) > 1]
    assert len(multi) > 100                                   # the small vocabulary cuts many words
    for word in multi:
        for k in range(1, len(word)):
            assert allowed_after(*word[:k])[word[k]], (TOKENIZER.decode(list(word)), k)
        assert allowed_after(*word)[EOS_ID]


def test_pieces_that_begin_no_known_word_are_not_glued_on():
    start = pieces("meeting")[:1]                             # a word-start piece
    after = allowed_after(*start)
    known = LEXICON.words.next[start]                         # the pieces that continue it in some training word
    glued = [c for c in range(LEXICON.vocab_size) if not LEXICON.starts[c] and c not in known]
    assert known and glued
    assert after[sorted(known)].all() and not after[glued].any()


def test_a_word_may_not_end_half_way():
    half = next(w[:k] for w in sorted({pieces(w) for t in TEXTS for w in t.lower().split(" ") if w})
                for k in range(1, len(w)) if w[:k] not in LEXICON.words.complete)
    after = allowed_after(*half)
    starts = torch.tensor(LEXICON.starts)
    assert not after[EOS_ID] and not after[starts].any() and after.any()


def test_a_sources_own_words_are_allowed_for_that_source_only():
    new = pieces("thezq")                      # "▁the" "z" "q": a known word start, then new
    assert len(new) > 1 and new not in LEXICON.words.complete
    other = pieces("meeting")
    width = max(len(new), len(other)) + 1
    sources = torch.full((2, width), PAD_ID)
    sources[0, :len(new) + 1] = torch.tensor([*new, EOS_ID])
    sources[1, :len(other) + 1] = torch.tensor([*other, EOS_ID])
    rows = torch.tensor([[BOS_ID, new[0]]] * 2)               # one row per prompt, both after "▁the"
    mask = LEXICON.allowed(rows, LEXICON.source_words(sources, [False, False]))
    assert mask[0, new[1]] and not mask[1, new[1]]
    assert not LEXICON.allowed(rows, [Words(), Words()])[:, new[1]].any()
    # a source cut at the length limit may end inside a word: its last word is not taken
    assert not LEXICON.allowed(rows, LEXICON.source_words(sources, [True, False]))[0, new[1]]
