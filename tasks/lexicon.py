"""Known words: a decoding constraint that keeps a subword model from gluing pieces into words that do not exist.

A model that copies from its source piece by piece can copy "▁kevin" from one word and "ween" from another and
write "kevinween". With a SentencePiece-style vocabulary (Metaspace: a piece that starts a word begins with "▁") a
word is a word-start piece and the continuation pieces after it. The lexicon holds the piece sequences of every
word of the training texts; each source adds its own words. While decoding, a continuation piece may follow only
when the word so far plus that piece begins a known word, and a word may end (the next piece starts a word, or
</s>) only when it is a known word. Every word of the output is then a word of the training texts or of its
source, as tokenised there (but for a hypothesis cut by `max_new_tokens`, which may stop inside a word).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer
from torch import Tensor

WORD_START = "▁"

Word = tuple[int, ...]          # the piece ids of one word, its word-start piece first


class Words:
    """A set of words: their first pieces, prefix -> the continuation pieces that extend it, the complete words."""

    def __init__(self) -> None:
        self.first: set[int] = set()
        self.next: dict[Word, set[int]] = {}
        self.complete: set[Word] = set()

    def add(self, word: Word) -> None:
        if word in self.complete:
            return
        self.complete.add(word)
        self.first.add(word[0])
        for k in range(1, len(word)):
            self.next.setdefault(word[:k], set()).add(word[k])


def split_words(ids: Sequence[int], starts: Sequence[bool]) -> Iterable[Word]:
    """Piece ids -> the words they form; `starts[i]` is True for a piece that starts a word (or is special,
    which ends one). Pieces before the first word-start piece form no word."""
    word: list[int] = []
    for i in ids:
        if starts[i]:
            if word:
                yield tuple(word)
            word = [i]
        elif word:
            word.append(i)
    if word:
        yield tuple(word)


class Lexicon:
    """The known words of a vocabulary: those of the training texts, and per decoded batch those of its sources."""

    def __init__(self, tokenizer: Tokenizer, special_ids: Iterable[int], texts: Iterable[str]):
        vocab = tokenizer.get_vocab()
        self.vocab_size = tokenizer.get_vocab_size()
        self.special = set(special_ids)
        # a special piece (</s>, padding) ends a word as a word-start piece does, and belongs to no word
        self.starts = [False] * self.vocab_size
        for piece, i in vocab.items():
            self.starts[i] = piece.startswith(WORD_START) or i in self.special
        self.words = Words()
        for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
            for word in split_words(encoding.ids, self.starts):
                self.words.add(word)
        # between words: a special piece (</s>) or the first piece of a training word
        self.may_start = torch.zeros(self.vocab_size, dtype=torch.bool)              # (V,)
        self.may_start[sorted(self.special | self.words.first)] = True

    def source_words(self, source_ids: Tensor, cut: Sequence[bool]) -> list[Words]:
        """(B, S) source ids -> each source's own words. A source that was `cut` to the length limit may end
        inside a word ("▁Qu" of "Quarterly"): its last word is left out."""
        out = []
        for ids, was_cut in zip(source_ids.tolist(), cut):
            words = Words()
            found = list(split_words([i for i in ids if i not in self.special], self.starts))
            for word in found[:-1] if was_cut else found:
                words.add(word)
            out.append(words)
        return out

    def allowed(self, ids: Tensor, sources: list[Words]) -> Tensor:
        """(R, t) sequences, the rows of prompt b being rows b*R/B .. (b+1)*R/B - 1 of B = len(sources)
        -> (R, V) True where a piece may come next: between words the first piece of a known word or a special
        piece (</s>); inside a word a piece that extends it towards a known word, or, if it is one, what may
        come between words. A row left with nothing (none seen so far) is left free."""
        R = ids.size(0)
        per_prompt = R // len(sources)
        mask = self.may_start.expand(R, -1).clone()                                  # (R, V)
        rows: list[int] = []
        pieces: list[int] = []
        for r, seq in enumerate(ids.tolist()):
            own = sources[r // per_prompt]
            k = len(seq)
            while k > 0 and not self.starts[seq[k - 1]]:
                k -= 1
            word = () if k == 0 or seq[k - 1] in self.special else tuple(seq[k - 1:])  # () between words
            nxt = self.words.next.get(word, set()) | own.next.get(word, set()) if word else set()
            if not word or word in self.words.complete or word in own.complete:
                nxt |= own.first                                                     # a new word may start
            else:
                mask[r] = False                                                      # the word must go on
            rows.extend([r] * len(nxt))
            pieces.extend(nxt)
        if rows:
            mask[torch.tensor(rows), torch.tensor(pieces)] = True
        stuck = ~mask.any(dim=-1)
        mask[stuck] = True
        return mask.to(ids.device)
