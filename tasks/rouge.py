"""ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measure (Lin 2004) with Porter stemming, equal to Google's `rouge-score`
package (`RougeScorer(types, use_stemmer=True)`), which is a test dependency only.

    tokens:     lowercase, every run of characters outside [a-z0-9] is a separator, words longer than 3 letters stemmed
    ROUGE-N:    P = |n-grams(pred) ∩ n-grams(ref)| / |n-grams(pred)|,  R = … / |n-grams(ref)|  (∩ of multisets)
    ROUGE-L:    P = LCS(pred, ref) / |pred|,  R = LCS(pred, ref) / |ref|
    ROUGE-Lsum: summary-level LCS: texts split into sentences on "\\n"; for each reference sentence the union of its
                LCS with every predicted sentence, each token counted at most as often as it occurs on both sides
    F = 2PR / (P + R)

A prediction with several references scores, per ROUGE type, the reference with the highest F (`score_multi`). The
set's score is the mean of the per-example F-measures, in percent; the metric's states are the F sums and the
example count, reduced by sum, so batches and DDP processes aggregate exactly. ROUGE-Lsum equals ROUGE-L on text
without newlines: join predicted sentences with "\\n" to get the summary-level score.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Sequence

import torch
from torchmetrics import Metric

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


# ------------------------------------------------------------------------------------------------ Porter stemmer
# Porter, "An algorithm for suffix stripping" (1980), with the extensions of NLTK's default mode (NLTK_EXTENSIONS),
# the stemmer rouge-score uses. Notation of the paper: a word is [C](VC){m}[V]; m is its measure; *v* = the stem
# holds a vowel; *d = it ends in a double consonant; *o = it ends consonant-vowel-consonant, the last not w, x, y.

IRREGULAR_FORMS = {"sky": "sky", "skies": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
                   "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
                   "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
                   "exceed": "exceed", "succeed": "succeed"}


def _consonant_flags(word: str) -> list[bool]:
    """A letter is a consonant unless it is a, e, i, o, u, or a y that follows a consonant."""
    flags: list[bool] = []
    for i, ch in enumerate(word):
        flags.append(ch not in "aeiou" and not (ch == "y" and i > 0 and flags[i - 1]))
    return flags


def measure(stem: str) -> int:
    """m in [C](VC){m}[V]: the number of vowel-consonant transitions."""
    flags = _consonant_flags(stem)
    return sum(1 for a, b in zip(flags, flags[1:]) if not a and b)


def has_vowel(stem: str) -> bool:
    return not all(_consonant_flags(stem))


def ends_double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _consonant_flags(word)[-1]


def ends_cvc(word: str) -> bool:
    """*o; NLTK also counts a two-letter vowel-consonant word."""
    flags = _consonant_flags(word)
    if len(word) >= 3:
        return flags[-3] and not flags[-2] and flags[-1] and word[-1] not in "wxy"
    return len(word) == 2 and not flags[0] and flags[1]


def _m_above(k: int):
    return lambda stem: measure(stem) > k


def _apply_first(word: str, rules) -> str:
    """The first rule whose suffix ends the word decides: its replacement if the stem meets the condition, else the
    word unchanged (Porter's longest-match rule; longer suffixes come first where one ends another)."""
    for suffix, replacement, condition in rules:
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + replacement if condition(stem) else word
    return word


def _step1a(word: str) -> str:
    if word.endswith("ies") and len(word) == 4:                     # NLTK: "dies" -> "die", "flies" -> "fli"
        return word[:-1]
    always = lambda stem: True  # noqa: E731
    return _apply_first(word, [("sses", "ss", always), ("ies", "i", always), ("ss", "ss", always), ("s", "", always)])


def _step1b(word: str) -> str:
    if word.endswith("ied"):                                        # NLTK: "died" -> "die", "spied" -> "spi"
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        return word[:-1] if measure(word[:-3]) > 0 else word        # (m>0) EED -> EE
    for suffix in ("ed", "ing"):                                    # (*v*) ED ->, (*v*) ING ->
        if word.endswith(suffix) and has_vowel(word[:-len(suffix)]):
            return _step1b_tidy(word[:-len(suffix)])
    return word


def _step1b_tidy(stem: str) -> str:
    """After removing -ed/-ing: AT -> ATE, BL -> BLE, IZ -> IZE; (*d and not *l, *s, *z) -> single letter;
    (m=1 and *o) -> E."""
    if stem.endswith(("at", "bl", "iz")):
        return stem + "e"
    if ends_double_consonant(stem):
        return stem if stem[-1] in "lsz" else stem[:-1]
    return stem + "e" if measure(stem) == 1 and ends_cvc(stem) else stem


def _step1c(word: str) -> str:
    """NLTK: Y -> I after a consonant that is not the whole stem ("happy" -> "happi", "enjoy", "sky" stay)."""
    if word.endswith("y") and len(word) > 2 and _consonant_flags(word)[-2]:
        return word[:-1] + "i"
    return word


_STEP2 = [("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
          ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"), ("ization", "ize"),
          ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"),
          ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful")]
_STEP3 = [("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", "")]
_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "ion", "ou", "ism", "ate",
          "iti", "ous", "ive", "ize"]


def _step2(word: str) -> str:
    if word.endswith("alli") and measure(word[:-4]) > 0:            # NLTK: ALLI -> AL first, then step 2 again
        return _step2(word[:-2])
    rules = [(suffix, replacement, _m_above(0)) for suffix, replacement in _STEP2]
    rules.append(("logi", "log", lambda stem: measure(stem + "l") > 0))    # NLTK: "geologi" -> "geolog"
    return _apply_first(word, rules)


def _step3(word: str) -> str:
    return _apply_first(word, [(suffix, replacement, _m_above(0)) for suffix, replacement in _STEP3])


def _step4(word: str) -> str:
    rules = [(suffix, "", _m_above(1)) for suffix in _STEP4]
    rules[_STEP4.index("ion")] = ("ion", "", lambda stem: measure(stem) > 1 and stem[-1:] in ("s", "t"))
    return _apply_first(word, rules)


def _step5(word: str) -> str:
    """(m>1) E ->; (m=1 and not *o) E ->; (m>1 and *d and *L) -> single letter."""
    if word.endswith("e"):
        m = measure(word[:-1])
        if m > 1 or (m == 1 and not ends_cvc(word[:-1])):
            word = word[:-1]
    if word.endswith("ll") and measure(word[:-1]) > 1:
        word = word[:-1]
    return word


@functools.lru_cache(maxsize=1 << 16)
def porter_stem(word: str) -> str:
    """The Porter stem of a lowercase word (NLTK's default mode, as rouge-score uses it)."""
    if word in IRREGULAR_FORMS:
        return IRREGULAR_FORMS[word]
    if len(word) <= 2:
        return word
    for step in (_step1a, _step1b, _step1c, _step2, _step3, _step4, _step5):
        word = step(word)
    return word


# ------------------------------------------------------------------------------------------------ scores
_WORD = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Lowercased alphanumeric runs; words longer than 3 characters stemmed (rouge-score's tokenizer)."""
    return [porter_stem(w) if len(w) > 3 else w for w in _WORD.findall(text.lower())]


def f_measure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n(pred: Sequence[str], ref: Sequence[str], n: int) -> float:
    pred_grams = Counter(tuple(pred[i:i + n]) for i in range(len(pred) - n + 1))
    ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    overlap = sum((pred_grams & ref_grams).values())
    return f_measure(overlap / max(sum(pred_grams.values()), 1), overlap / max(sum(ref_grams.values()), 1))


def lcs_table(ref: Sequence[str], pred: Sequence[str]) -> list[list[int]]:
    """table[i][j] = length of the longest common subsequence of ref[:i] and pred[:j]."""
    table = [[0] * (len(pred) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, start=1):
        for j, p in enumerate(pred, start=1):
            table[i][j] = table[i - 1][j - 1] + 1 if r == p else max(table[i - 1][j], table[i][j - 1])
    return table


def lcs_positions(ref: Sequence[str], pred: Sequence[str]) -> list[int]:
    """Positions in `ref` of one longest common subsequence: read back from the end of the table, going left in
    `pred` only when that keeps a strictly longer LCS (ROUGE-1.5.5's choice among equally long ones)."""
    table = lcs_table(ref, pred)
    i, j, positions = len(ref), len(pred), []
    while i > 0 and j > 0:
        if ref[i - 1] == pred[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions[::-1]


def rouge_l(pred: Sequence[str], ref: Sequence[str]) -> float:
    if not pred or not ref:
        return 0.0
    lcs = lcs_table(ref, pred)[-1][-1]
    return f_measure(lcs / len(pred), lcs / len(ref))


def rouge_lsum(pred_sentences: list[list[str]], ref_sentences: list[list[str]]) -> float:
    """Summary-level LCS (Lin 2004, section 3.2), each token credited at most as often as both sides hold it."""
    pred_len, ref_len = sum(map(len, pred_sentences)), sum(map(len, ref_sentences))
    if pred_len == 0 or ref_len == 0:
        return 0.0
    pred_left = Counter(t for s in pred_sentences for t in s)
    ref_left = Counter(t for s in ref_sentences for t in s)
    hits = 0
    for ref in ref_sentences:
        union = sorted(set().union(*(lcs_positions(ref, pred) for pred in pred_sentences)))
        for token in (ref[i] for i in union):
            if pred_left[token] > 0 and ref_left[token] > 0:
                hits += 1
                pred_left[token] -= 1
                ref_left[token] -= 1
    return f_measure(hits / pred_len, hits / ref_len)


def sentences(text: str) -> list[list[str]]:
    """ROUGE-Lsum's sentences: the non-empty lines of `text`, tokenised."""
    return [rouge_tokens(line) for line in text.split("\n") if line]


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """F-measure (0-1) of each ROUGE type for one prediction and one reference."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return {"rouge1": rouge_n(pred, ref, 1), "rouge2": rouge_n(pred, ref, 2), "rougeL": rouge_l(pred, ref),
            "rougeLsum": rouge_lsum(sentences(prediction), sentences(reference))}


def rouge_scores_multi(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """Per ROUGE type, the best F-measure over the references."""
    per_reference = [rouge_scores(prediction, ref) for ref in references]
    return {t: max(s[t] for s in per_reference) for t in ROUGE_TYPES}


class ROUGE(Metric):
    """Mean per-example ROUGE F-measures (percent) over `update(predictions, references)` calls; `references[i]`
    is one string or the list of references of prediction i (the best one counts)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("f_sum", default=torch.zeros(len(ROUGE_TYPES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} reference entries")
        for pred, refs in zip(predictions, references):
            scores = rouge_scores_multi(pred, [refs] if isinstance(refs, str) else refs)
            self.f_sum += torch.tensor([scores[t] for t in ROUGE_TYPES], dtype=torch.float64,
                                       device=self.f_sum.device)
        self.count += len(predictions)

    def compute(self) -> dict[str, float]:
        mean = (self.f_sum / self.count.clamp(min=1)).tolist()
        return {t: 100 * f for t, f in zip(ROUGE_TYPES, mean)}


# ------------------------------------------------------------------------------------------------ baseline
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def lead_baseline(email: str, num_words: int) -> str:
    """The lead baseline for subject lines: the email's first sentence (up to ". ", "! ", "? " or a line break),
    cut to its first `num_words` words (AESLC: the mean subject length)."""
    first_sentence = _SENTENCE_END.split(email.strip(), maxsplit=1)[0]
    return " ".join(first_sentence.split()[:num_words])
