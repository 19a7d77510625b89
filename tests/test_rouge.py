"""tasks/rouge.py equals Google's rouge-score (`RougeScorer(..., use_stemmer=True)`) on real AESLC outputs, and its
Porter stemmer equals NLTK's on every word of AESLC train + dev. rouge-score (with nltk) is a test dependency only."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import FIXTURES
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer

from tasks.rouge import ROUGE, ROUGE_TYPES, lead_baseline, porter_stem, rouge_scores, rouge_scores_multi

SCORER = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
DEV = [json.loads(line) for line in (FIXTURES / "aeslc_dev_head.jsonl").read_text(encoding="utf-8").splitlines()]
SUBJECT_WORDS = 4                   # mean AESLC training subject: 3.98 words


def words_of(texts) -> set[str]:
    return {w for text in texts for w in re.findall(r"[a-z0-9]+", text.lower())}


def aeslc_texts(rows) -> list[str]:
    return [t for r in rows for t in (r["email"], r["subject"], *r.get("annotations", []))]


def stemmer_mismatches(words: set[str]) -> list[tuple[str, str, str]]:
    nltk = PorterStemmer()
    return [(w, porter_stem(w), nltk.stem(w)) for w in sorted(words) if porter_stem(w) != nltk.stem(w)]


# ------------------------------------------------------------------------------------------------ stemmer
def test_porter_stemmer_equals_nltk_on_the_fixture_vocabulary():
    english = (FIXTURES / "multi30k_train_head.en").read_text(encoding="utf-8").split("\n")
    train = [json.loads(line) for line in (FIXTURES / "aeslc_train_head.jsonl").read_text().splitlines()]
    words = words_of(aeslc_texts(DEV + train) + english)
    assert len(words) > 5000
    assert stemmer_mismatches(words) == []
    # the paper's examples and NLTK's extensions
    cases = {"caresses": "caress", "ponies": "poni", "ties": "tie", "agreed": "agre", "feed": "feed",
             "plastered": "plaster", "motoring": "motor", "hopping": "hop", "filing": "file", "happy": "happi",
             "relational": "relat", "generalization": "gener", "triplicate": "triplic", "adoption": "adopt",
             "controlling": "control", "dying": "die", "skies": "sky", "spied": "spi", "geology": "geolog"}
    assert {w: porter_stem(w) for w in cases} == cases == {w: PorterStemmer().stem(w) for w in cases}


def test_porter_stemmer_equals_nltk_on_every_aeslc_train_and_dev_word(shared_data):
    rows = []
    for split in ("train", "dev"):
        text = (shared_data("aeslc") / f"{split}.jsonl").read_text(encoding="utf-8")
        rows += [json.loads(line) for line in text.splitlines()]
    words = words_of(aeslc_texts(rows))
    print(f"Porter stemmer compared with NLTK on {len(words):,} distinct AESLC train + dev words")
    assert len(words) > 40_000
    assert stemmer_mismatches(words) == []


# ------------------------------------------------------------------------------------------------ scores
def assert_equal_scores(ours: dict[str, float], theirs: dict) -> None:
    assert {t: ours[t] for t in ROUGE_TYPES} == pytest.approx({t: theirs[t].fmeasure for t in ROUGE_TYPES},
                                                             abs=1e-12)


def real_prediction_pairs() -> list[tuple[str, str]]:
    """(prediction, reference) pairs of real text: the lead baseline, a human annotation and the whole email
    (several lines: ROUGE-Lsum differs from ROUGE-L) against the subject; an empty prediction."""
    pairs = []
    for r in DEV:
        pairs += [(lead_baseline(r["email"], SUBJECT_WORDS), r["subject"]), (r["annotations"][0], r["subject"]),
                  (r["email"], r["subject"] + "\n" + r["annotations"][1]), (r["subject"], r["email"])]
    return pairs + [("", DEV[0]["subject"]), (DEV[0]["subject"], "")]


def test_rouge_equals_rouge_score_per_example_single_reference():
    pairs = real_prediction_pairs()
    for prediction, reference in pairs:
        assert_equal_scores(rouge_scores(prediction, reference), SCORER.score(reference, prediction))
    lsum_differs = [p for p, r in pairs if rouge_scores(p, r)["rougeLsum"] != rouge_scores(p, r)["rougeL"]]
    assert len(lsum_differs) > 20                     # multi-line texts: Lsum is its own score, not ROUGE-L


def test_rouge_equals_rouge_score_multi_reference():
    for r in DEV:
        references = [r["subject"], *r["annotations"]]
        for prediction in (lead_baseline(r["email"], SUBJECT_WORDS), r["annotations"][2], r["email"]):
            assert_equal_scores(rouge_scores_multi(prediction, references), SCORER.score_multi(references, prediction))


def test_metric_is_the_mean_over_examples_and_aggregates_across_batches_and_processes():
    predictions = [lead_baseline(r["email"], SUBJECT_WORDS) for r in DEV] + [r["annotations"][0] for r in DEV]
    single_refs = [r["subject"] for r in DEV] * 2
    multi_refs = [[r["subject"], *r["annotations"]] for r in DEV] * 2
    for refs, score in ((single_refs, SCORER.score), (multi_refs, SCORER.score_multi)):
        expected = {t: 100 * np.mean([score(ref, p)[t].fmeasure for p, ref in zip(predictions, refs)])
                    for t in ROUGE_TYPES}
        one_pass = ROUGE()
        one_pass.update(predictions, refs)
        assert one_pass.compute() == pytest.approx(expected, abs=1e-9)
        rank0, rank1 = ROUGE(), ROUGE()               # two DDP ranks, alternate batches of 9
        for k, start in enumerate(range(0, len(predictions), 9)):
            (rank0 if k % 2 == 0 else rank1).update(predictions[start:start + 9], refs[start:start + 9])
        rank0.merge_state(rank1)                      # the sum reduction DDP applies
        assert int(rank0.count) == len(predictions)
        assert rank0.compute() == pytest.approx(one_pass.compute(), abs=1e-9)
    multi, single = ROUGE(), ROUGE()
    multi.update(predictions, multi_refs)
    single.update(predictions, single_refs)
    assert multi.compute()["rouge1"] > single.compute()["rouge1"]         # the best reference counts


def test_lead_baseline_on_aeslc_test_equals_rouge_score(shared_data):
    train = [json.loads(line) for line in (shared_data("aeslc") / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (shared_data("aeslc") / "test.jsonl").read_text().splitlines()]
    assert round(np.mean([len(r["subject"].split()) for r in train])) == SUBJECT_WORDS
    predictions = [lead_baseline(r["email"], SUBJECT_WORDS) for r in test]
    metric = ROUGE()
    metric.update(predictions, [r["subject"] for r in test])
    expected = {t: 100 * np.mean([SCORER.score(r["subject"], p)[t].fmeasure for p, r in zip(predictions, test)])
                for t in ROUGE_TYPES}
    print("AESLC test, lead baseline (first sentence, 4 words), single reference:", metric.compute())
    assert len(test) == 1906 and metric.compute() == pytest.approx(expected, abs=1e-9)


def test_lead_baseline_takes_the_first_sentence_cut_to_num_words():
    assert lead_baseline(DEV[0]["email"], 4) == "Hi Phillip, This message"
    assert lead_baseline("Please review.  The rest follows.", 10) == "Please review."
    assert lead_baseline("  Gas prices\nfor June are attached.", 10) == "Gas prices"
    assert lead_baseline("Version 2.5 is out! Try it", 10) == "Version 2.5 is out!"


def test_bad_input_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 reference"):
        ROUGE().update(["a", "b"], ["a"])
