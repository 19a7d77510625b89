"""Corpus BLEU (Papineni et al. 2002) with sacreBLEU's semantics, from sufficient statistics summed over the corpus.

    BLEU = BP · exp( (1/N) Σ_{n=1..N} log p_n ) · 100,    N = 4
    p_n  = Σ_segments Σ_{n-grams g of the hypothesis} min(count_hyp(g), max_refs count_ref(g)) / Σ hypothesis n-grams
    BP   = 1 if c ≥ r else exp(1 − r / c),   c = Σ hypothesis lengths,
           r = Σ closest reference length (the shorter on a tie)

Smoothing "exp" (mteval-v13a, sacreBLEU's default): the k-th order without any match gets p_n = 1 / (2^k · total_n).
Hypotheses and references are lowercased (optionally), right-stripped and tokenised before counting:

- `tokenize="13a"` (default, sacreBLEU's default): mteval-v13a: every ASCII punctuation mark except ' - . , is split
  off; "." and "," are split off unless between digits; "-" after a digit is split off.
- `tokenize="intl"`: mteval-v14 "international": every Unicode punctuation mark (category P) is split off unless it
  stands between digits, and every symbol (category S) is split off.

`BLEU()` equals `sacrebleu.corpus_bleu(hyps, refs)`; `BLEU(lowercase=True, tokenize="intl")` — the literature's
Multi30k convention, see `MULTI30K_LITERATURE` — equals `sacrebleu.corpus_bleu(hyps, refs, lowercase=True,
tokenize="intl")` (both tested to 1e-9 with the exact counts). sacreBLEU is a test dependency only.

The statistics are torchmetrics states reduced by sum, so BLEU over batches and DDP processes is exactly the BLEU of
one pass over the corpus, never an average of per-batch scores.
"""
from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
from collections import Counter
from typing import Callable, Sequence

import torch
from torchmetrics import Metric

MAX_ORDER = 4
VERSION = "lightning-nlp-1"        # the signature's version field: this implementation, sacreBLEU 2.x semantics

# ------------------------------------------------------------------------------------------------ tokenizers
# mteval-v13a: ASCII punctuation except the apostrophe, hyphen, period and comma, which stay inside words
# (the next rules split period, comma and a hyphen after a number).
_13A_RULES = [
    (re.compile(r"""([!"#$%&()*+/:;<=>?@\[\\\]^_`{|}~])"""), r" \1 "),
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),        # period / comma not after a digit
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),        # period / comma not before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),            # hyphen after a digit
]
_13A_ENTITIES = {"&quot;": '"', "&amp;": "&", "&lt;": "<", "&gt;": ">"}


def tokenize_13a(line: str) -> str:
    """mteval-v13a tokenisation (WMT's, sacreBLEU's default), tokens joined by single spaces."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in _13A_ENTITIES.items():
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def _unicode_class(prefix: str) -> str:
    """A regular-expression character class body for the Unicode general category `prefix` ("P", "S", "N")."""
    ranges, start, last = [], None, None
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)).startswith(prefix):
            if start is None or code != last + 1:
                if start is not None:
                    ranges.append((start, last))
                start = code
            last = code
    ranges.append((start, last))
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@functools.cache
def _intl_rules() -> list[tuple[re.Pattern, str]]:
    punct, symbol, number = _unicode_class("P"), _unicode_class("S"), _unicode_class("N")
    return [
        (re.compile(f"([^{number}])([{punct}])"), r"\1 \2 "),    # punctuation after a non-digit
        (re.compile(f"([{punct}])([^{number}])"), r" \1 \2"),    # punctuation before a non-digit
        (re.compile(f"([{symbol}])"), r" \1 "),                  # every symbol
    ]


def tokenize_intl(line: str) -> str:
    """mteval-v14 international tokenisation (sacreBLEU's "intl"), tokens joined by single spaces."""
    for pattern, replacement in _intl_rules():
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


TOKENIZERS: dict[str, Callable[[str], str]] = {"13a": tokenize_13a, "intl": tokenize_intl}

# The literature's Multi30k BLEU (multi-bleu.perl on lowercased, Moses-tokenised text), as a sacreBLEU configuration:
# lowercase, then split off every punctuation mark and symbol ("intl"; Moses with -a also splits hyphens, "@-@").
# It differs from multi-bleu.perl only where Moses keeps a period (nonbreaking prefixes such as "Dr."), escapes
# characters (&apos;, on both sides alike) or splits differently around digits; and multi-bleu.perl has no smoothing,
# which matters only when some n-gram order has no match at all.
MULTI30K_LITERATURE = {"lowercase": True, "tokenize": "intl"}


# ------------------------------------------------------------------------------------------------ statistics
def ngrams(tokens: Sequence[str], max_order: int = MAX_ORDER) -> Counter:
    """Counts of every n-gram of `tokens`, 1 <= n <= max_order (tuples of tokens)."""
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def closest_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to the hypothesis length; the shorter one on a tie."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def segment_statistics(hyp_tokens: Sequence[str], refs_tokens: Sequence[Sequence[str]],
                       max_order: int = MAX_ORDER) -> tuple[list[int], list[int], int, int]:
    """(matches per order, hypothesis n-grams per order, hypothesis length, closest reference length) of one
    segment. A hypothesis n-gram matches at most as often as it occurs in any single reference."""
    ref_counts: Counter = Counter()
    for ref in refs_tokens:
        ref_counts |= ngrams(ref, max_order)                  # | keeps the max count over references
    matches, totals = [0] * max_order, [0] * max_order
    for gram, count in ngrams(hyp_tokens, max_order).items():
        totals[len(gram) - 1] += count
        matches[len(gram) - 1] += min(count, ref_counts[gram])
    return matches, totals, len(hyp_tokens), closest_length(len(hyp_tokens), [len(r) for r in refs_tokens])


def bleu_from_statistics(matches: Sequence[int], totals: Sequence[int], hyp_len: int,
                         ref_len: int) -> dict[str, float]:
    """BLEU (0-100) with "exp" smoothing from corpus totals; also the brevity penalty and n-gram precisions."""
    order = len(matches)
    bp = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0)
    precisions = [0.0] * order
    if any(matches):
        unmatched_orders = 0
        for n in range(order):
            if totals[n] == 0:                  # no hypothesis this long: this and the higher orders stay 0
                break
            if matches[n] == 0:
                unmatched_orders += 1
                precisions[n] = 100.0 / (2 ** unmatched_orders * totals[n])
            else:
                precisions[n] = 100.0 * matches[n] / totals[n]
        log_precisions = [math.log(p) if p > 0 else -9999999999 for p in precisions]
        score = bp * math.exp(sum(log_precisions) / order)
    else:
        score = 0.0
    out = {"bleu": score, "bp": bp, "ratio": hyp_len / ref_len if ref_len else 0.0,
           "hyp_len": float(hyp_len), "ref_len": float(ref_len)}
    out.update({f"precision_{n + 1}": p for n, p in enumerate(precisions)})
    return out


class BLEU(Metric):
    """Corpus BLEU over `update(hypotheses, references)` calls; `references[i]` is one string or a list of the
    references of hypothesis i. States: matches and totals per n-gram order, hypothesis and reference length
    (summed across batches and processes); the fewest and most references per segment (for the signature)."""

    full_state_update = False

    def __init__(self, lowercase: bool = False, tokenize: str = "13a", max_order: int = MAX_ORDER, **kwargs):
        super().__init__(**kwargs)
        if tokenize not in TOKENIZERS:
            raise ValueError(f"unknown BLEU tokenizer {tokenize!r}: expected one of {sorted(TOKENIZERS)}")
        self.lowercase, self.tokenize, self.max_order = lowercase, tokenize, max_order
        zeros = torch.zeros(max_order, dtype=torch.long)
        self.add_state("matches", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("totals", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("hyp_len", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("ref_len", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("min_refs", default=torch.tensor(torch.iinfo(torch.long).max), dist_reduce_fx="min")
        self.add_state("max_refs", default=torch.tensor(0), dist_reduce_fx="max")

    def tokens(self, text: str) -> list[str]:
        """What BLEU counts: the text lowercased (optionally), right-stripped, tokenised, split on whitespace."""
        if self.lowercase:
            text = text.lower()
        return TOKENIZERS[self.tokenize](text.rstrip()).split()

    def update(self, hypotheses: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference entries")
        matches, totals = [0] * self.max_order, [0] * self.max_order
        hyp_len = ref_len = 0
        num_refs = []
        for hyp, refs in zip(hypotheses, references):
            refs = [refs] if isinstance(refs, str) else list(refs)
            if not refs:
                raise ValueError(f"hypothesis {hyp!r} has no reference")
            m, t, h, r = segment_statistics(self.tokens(hyp), [self.tokens(x) for x in refs], self.max_order)
            matches = [a + b for a, b in zip(matches, m)]
            totals = [a + b for a, b in zip(totals, t)]
            hyp_len, ref_len = hyp_len + h, ref_len + r
            num_refs.append(len(refs))
        if num_refs:
            self.min_refs = torch.clamp(self.min_refs, max=min(num_refs))
            self.max_refs = torch.clamp(self.max_refs, min=max(num_refs))
        self.matches += torch.tensor(matches, device=self.matches.device)
        self.totals += torch.tensor(totals, device=self.totals.device)
        self.hyp_len += hyp_len
        self.ref_len += ref_len

    def compute(self) -> dict[str, float]:
        """{"bleu", "bp", "ratio", "hyp_len", "ref_len", "precision_1".."precision_4"}, as sacreBLEU's BLEUScore."""
        return bleu_from_statistics(self.matches.tolist(), self.totals.tolist(), int(self.hyp_len),
                                    int(self.ref_len))

    def signature(self) -> str:
        """sacreBLEU's reproducibility signature for this configuration and the references seen so far."""
        nrefs = int(self.max_refs) if int(self.min_refs) == int(self.max_refs) else "var"
        case = "lc" if self.lowercase else "mixed"
        return f"nrefs:{nrefs}|case:{case}|eff:no|tok:{self.tokenize}|smooth:exp|version:{VERSION}"
