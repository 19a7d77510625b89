"""SQuAD reading, article split, windows, labels, window cache and post-processing (issue 12).

The fixture `squad_dev_sample.json` holds articles 19 (Packet_switching), 26 (Pharmacy) and 38
(Intergovernmental_Panel_on_Climate_Change) of dev-v1.1.json, unchanged: two from the training range and
one from the evaluation range; Packet_switching has a 733-token context (three windows at 384/128).
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict

import pytest
import torch
from conftest import FIXTURES

from data.errors import ConfigError, DataError
from data.squad import (CLS_POSITION, Question, best_answers, build_windows, columns_to_windows, read_qa_jsonl,
                        read_squad, split_by_article, windows_to_columns)
from data.tokenization import load_wordpiece, tokenizer_from_str

SAMPLE = FIXTURES / "squad_dev_sample.json"
SAMPLE_ARTICLES = (19, 26, 38)
SETTINGS = [(384, 128, 64), (128, 32, 64)]   # (max_length, doc_stride, max_query_length): real, and many windows


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import require_shared
    return load_wordpiece(require_shared("models", "all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def questions():
    return read_squad(SAMPLE)


def label_text(question: Question, window) -> str:
    """The characters between the window's labelled start and end tokens."""
    return question.context[window.offsets[window.start_position][0]:window.offsets[window.end_position][1]]


def context_tokens(tokenizer, context: str) -> list[tuple[int, int]]:
    return tokenizer.encode(context, add_special_tokens=False).offsets


# --------------------------------------------------------------------------- reading and splitting

def test_read_squad_fixture(questions):
    raw = json.loads(SAMPLE.read_text())["data"]
    assert len(questions) == sum(len(p["qas"]) for a in raw for p in a["paragraphs"]) == 339
    assert Counter(q.article for q in questions) == {0: 106, 1: 129, 2: 104}
    q = next(q for q in questions if q.id == "5726d8bd708984140094d35b")
    assert q.title == "Pharmacy" and q.article == 1 and not q.is_impossible
    assert q.question == "What word is the word pharmacy taken from?"
    assert q.answers == ["its root word pharma", "pharma", "pharma", "pharma"]
    assert q.answer_starts == [34, 48, 48, 48]
    for q in questions:
        for text, start in zip(q.answers, q.answer_starts):
            assert q.context[start:start + len(text)] == text


def test_fixture_is_unchanged_real_articles(shared_data):
    real = json.loads(shared_data("squad", "dev-v1.1.json").read_text())
    assert json.loads(SAMPLE.read_text())["data"] == [real["data"][i] for i in SAMPLE_ARTICLES]


def test_split_by_article_real_file(shared_data, tokenizer):
    questions = read_squad(shared_data("squad", "dev-v1.1.json"))
    assert len(questions) == 10570
    train, evaluation = split_by_article(questions)
    assert (len(train), len(evaluation)) == (8582, 1988)
    # no evaluation article reaches training: articles, ids and contexts are disjoint
    assert {q.article for q in train} == set(range(38)) and {q.article for q in evaluation} == set(range(38, 48))
    assert not {q.id for q in train} & {q.id for q in evaluation}
    assert not {q.context for q in train} & {q.context for q in evaluation}
    assert not {q.title for q in train} & {q.title for q in evaluation}
    assert evaluation[0].title == "Intergovernmental_Panel_on_Climate_Change" and train[-1].title == "Kenya"
    # windows at 384/128: every answer lies in at least one window
    for split, n_windows in ((train, 8792), (evaluation, 1992)):
        windows = build_windows(tokenizer, split)
        assert len(windows) == n_windows
        assert {w.question for w in windows if w.start_position != CLS_POSITION} == set(range(len(split)))


def test_split_by_article_refuses_overlap_and_missing_articles(questions):
    with pytest.raises(ConfigError, match=r"overlap \(articles 1-1\)"):
        split_by_article(questions, range(0, 2), range(1, 3))
    with pytest.raises(ConfigError, match="eval_articles range\\(2, 4\\): the file has articles 0-2"):
        split_by_article(questions, range(0, 2), range(2, 4))
    train, evaluation = split_by_article(questions, range(0, 2), range(2, 3))
    assert (len(train), len(evaluation)) == (235, 104)


def test_read_qa_jsonl(tmp_path, questions, tokenizer):
    path = tmp_path / "in.jsonl"
    rows = [{"question": q.question, "context": q.context} for q in questions[:3]]
    rows[1]["id"] = "mine"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    read = read_qa_jsonl(path)
    assert [q.id for q in read] == ["1", "mine", "3"]
    assert [(q.question, q.context) for q in read] == [(q.question, q.context) for q in questions[:3]]
    windows = build_windows(tokenizer, read, with_labels=False)
    assert all(w.start_position == w.end_position == CLS_POSITION for w in windows)


# --------------------------------------------------------------------------- windows and labels

@pytest.mark.parametrize("max_length,doc_stride,max_query_length", SETTINGS)
def test_windows_equal_tokenizers_overflowing_encodings(tokenizer, questions, max_length, doc_stride,
                                                        max_query_length):
    """Our windows are the encodings of `encode(question, context)`, truncation only_second, stride."""
    windows = build_windows(tokenizer, questions, max_length, doc_stride, max_query_length)
    by_question = defaultdict(list)
    for w in windows:
        by_question[w.question].append(w)
    reference = tokenizer_from_str(tokenizer.to_str())   # a copy: truncation stays off in the shared one
    reference.enable_truncation(max_length, stride=doc_stride, strategy="only_second")
    for qi, q in enumerate(questions):
        first = reference.encode(q.question, q.context)
        assert len(tokenizer.encode(q.question, add_special_tokens=False).ids) <= max_query_length   # not cut
        encodings = [first] + first.overflowing
        ours = by_question[qi]
        assert len(ours) == len(encodings)
        for w, e in zip(ours, encodings):
            assert w.input_ids == e.ids
            assert w.token_type_ids == e.type_ids
            assert w.offsets == [o if s == 1 and t != "[SEP]" else (-1, -1)
                                 for o, s, t in zip(e.offsets, e.sequence_ids, e.tokens)]


@pytest.mark.parametrize("max_length,doc_stride,max_query_length", SETTINGS)
def test_windows_overlap_by_stride_and_cover_every_context_token(tokenizer, questions, max_length, doc_stride,
                                                                 max_query_length):
    windows = build_windows(tokenizer, questions, max_length, doc_stride, max_query_length)
    by_question = defaultdict(list)
    for w in windows:
        by_question[w.question].append(w)
    counts = Counter(len(ws) for ws in by_question.values())
    expected = {384: {1: 330, 2: 5, 3: 4},    # the 733-token Packet_switching context: 4 questions, 3 windows
                128: {1: 68, 2: 214, 3: 35, 4: 13, 6: 4, 7: 1, 8: 1, 9: 3}}[max_length]
    assert counts == expected
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    for qi, ws in by_question.items():
        for w in ws:
            assert len(w.input_ids) <= max_length and w.input_ids[0] == cls and w.input_ids[-1] == sep
            assert all(o == (-1, -1) for o in w.offsets[:w.context_span[0]] + [w.offsets[-1]])
        context_part = [w.offsets[slice(*w.context_span)] for w in ws]
        for w, a, b in zip(ws, context_part, context_part[1:]):
            assert len(w.input_ids) == max_length             # only the last window is short
            assert a[-doc_stride:] == b[:doc_stride]          # consecutive windows share doc_stride tokens
            assert a[-doc_stride - 1] != b[0]                 # ... and no more
        covered = {o for part in context_part for o in part}
        assert covered == set(context_tokens(tokenizer, questions[qi].context))


def test_long_question_is_cut_to_max_query_length(tokenizer, questions):
    long = Question("x", " ".join([questions[0].question] * 20), questions[0].context, questions[0].answers,
                    questions[0].answer_starts, 0, "")
    (w,) = build_windows(tokenizer, [long], max_length=384, doc_stride=128, max_query_length=64)
    assert w.context_span[0] == 1 + 64 + 1
    assert w.input_ids[1:65] == tokenizer.encode(long.question, add_special_tokens=False).ids[:64]
    assert label_text(long, w) == long.answers[0]


def every_gold_answer(questions: list[Question]) -> list[Question]:
    """One question per gold answer, that answer first (windows are labelled from the first answer)."""
    return [dataclasses.replace(q, answers=[text], answer_starts=[start])
            for q in questions for text, start in zip(q.answers, q.answer_starts)]


def holds(question: Question, window) -> bool:
    """Whether the window's context part covers the answer's characters (independent of the labels)."""
    first, end = window.context_span
    s = question.answer_starts[0]
    return window.offsets[first][0] <= s and s + len(question.answers[0]) <= window.offsets[end - 1][1]


@pytest.mark.parametrize("max_length,doc_stride,max_query_length,n_held,n_labelled,n_exact", [
    (384, 128, 64, 1017, 1020, 1019), (128, 32, 64, 1015, 1133, 1132)])
def test_every_answer_that_fits_is_recoverable_from_token_labels(tokenizer, questions, max_length, doc_stride,
                                                                 max_query_length, n_held, n_labelled, n_exact):
    """Over all 1,017 gold answers of the fixture. A window is labelled exactly when its context part covers
    the answer's characters [s, e), else it points at [CLS]. The labelled tokens are the minimal token cover
    of [s, e): the first starts at or before s and ends after it, the last starts before e and ends at or
    after it. Their text is exactly the gold answer when s is a token's start and e a token's end; otherwise
    WordPiece cut inside a word (gold "onomist" inside the token "economist") and the text contains it."""
    answers = every_gold_answer(questions)
    windows = build_windows(tokenizer, answers, max_length, doc_stride, max_query_length)
    labelled, exact = 0, 0
    for w in windows:
        q = answers[w.question]
        if not holds(q, w):
            assert w.start_position == w.end_position == CLS_POSITION
            continue
        s, e = q.answer_starts[0], q.answer_starts[0] + len(q.answers[0])
        (first_start, first_end), (last_start, last_end) = w.offsets[w.start_position], w.offsets[w.end_position]
        assert w.context_span[0] <= w.start_position <= w.end_position < w.context_span[1]
        assert first_start <= s < first_end and last_start < e <= last_end
        aligned = (first_start, last_end) == (s, e)
        assert (label_text(q, w) == q.answers[0]) == aligned
        assert q.answers[0] in label_text(q, w)
        labelled += 1
        exact += aligned
    assert len(answers) == 1017
    assert len({w.question for w in windows if holds(answers[w.question], w)}) == n_held   # 128: 2 answers > window
    assert (labelled, exact) == (n_labelled, n_exact)       # 99.9 % of the labelled windows decode exactly


@pytest.mark.parametrize("max_length,doc_stride", [(384, 128), (128, 32)])
def test_all_answers_labels_every_distinct_gold_answer_once_per_window(tokenizer, questions, max_length, doc_stride):
    """`all_answers`: each window position appears once per distinct gold answer (start, text) it holds, labelled
    with that answer's tokens (the same labels `build_windows` gives that answer alone), or once at [CLS] when it
    holds none (a window that holds another answer but not the first is not trained towards [CLS])."""
    first = build_windows(tokenizer, questions, max_length, doc_stride)
    every = build_windows(tokenizer, questions, max_length, doc_stride, all_answers=True)
    key = lambda w: (w.question, tuple(w.input_ids), w.start_position, w.end_position)   # noqa: E731
    assert not {key(w) for w in first if w.start_position != CLS_POSITION} - set(map(key, every))
    expected = Counter()
    for qi, q in enumerate(questions):
        alone = [dataclasses.replace(q, answers=[text], answer_starts=[s])
                 for s, text in dict.fromkeys(zip(q.answer_starts, q.answers))]
        per_answer = [build_windows(tokenizer, [a], max_length, doc_stride) for a in alone]
        for position in range(len(per_answer[0])):
            labels = {(ws[position].start_position, ws[position].end_position) for ws in per_answer}
            held = labels - {(CLS_POSITION, CLS_POSITION)}
            for start, end in held or labels:
                expected[(qi, tuple(per_answer[0][position].input_ids), start, end)] += 1
    assert Counter(map(key, every)) == expected
    assert len(every) > len(first)


def test_all_together_holds_every_window_once_with_all_its_answers(tokenizer, questions):
    """`together` (train_answers all_together): one example per distinct window, whose targets are exactly the labels
    its copies carry under `all`, and the padded batch of them gives the loss of the copies."""
    from data.batching import pad_collate
    from data.squad import IGNORE_TARGET, together, window_example
    from tasks.qa import span_loss
    every = build_windows(tokenizer, questions, 128, 32, all_answers=True)
    merged = together(every)
    copies = Counter((w.question, tuple(w.input_ids)) for w in every)
    assert len(merged) == len(copies) < len(every)
    labels = Counter((tuple(every[e["index"]].input_ids), s, t) for e in merged
                     for s, t in zip(e["start_positions"], e["end_positions"]))
    assert labels == Counter((tuple(w.input_ids), w.start_position, w.end_position) for w in every)
    assert max(len(e["start_positions"]) for e in merged) > 1

    # the loss over a batch of merged windows equals the mean loss over their copies
    batch = [e for e in merged if len(e["start_positions"]) > 1][:3] + merged[:5]
    pad = {"input_ids": 0, "token_type_ids": 0}
    joint = pad_collate(pad | {"start_positions": IGNORE_TARGET, "end_positions": IGNORE_TARGET})(batch)
    repeated = pad_collate(pad)([{**e, "start_positions": s, "end_positions": t} for e in batch
                                 for s, t in zip(e["start_positions"], e["end_positions"])])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(batch), joint["input_ids"].shape[1], generator=generator)                   # (B, T)
    rows = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(e["start_positions"]) for e in batch]))
    for key in ("start_positions", "end_positions"):
        torch.testing.assert_close(span_loss(logits, joint[key]), span_loss(logits[rows], repeated[key]))


def test_window_cache_round_trip(tmp_path, tokenizer, questions):
    import datasets
    windows = build_windows(tokenizer, questions, max_length=128, doc_stride=32)
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(windows_to_columns(windows)).save_to_disk(str(tmp_path / "cache"))
    loaded = datasets.load_from_disk(str(tmp_path / "cache"))
    assert columns_to_windows({name: loaded.data.column(name).to_pylist() for name in loaded.column_names}) == windows


def test_bad_window_settings():
    with pytest.raises(ConfigError, match="max_length 128: must exceed"):
        build_windows(None, [], max_length=128, doc_stride=64, max_query_length=64)


# --------------------------------------------------------------------------- post-processing

def gold_logits(windows, value: float = 10.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A large logit at each window's labelled start / end token, zeros elsewhere."""
    start = [torch.zeros(len(w.input_ids)) for w in windows]
    end = [torch.zeros(len(w.input_ids)) for w in windows]
    for s, e, w in zip(start, end, windows):
        s[w.start_position] = value
        e[w.end_position] = value
    return start, end


@pytest.mark.parametrize("max_length,doc_stride,max_query_length,n_too_long", [
    (384, 128, 64, 8), (128, 32, 64, 8)])
def test_best_answers_return_gold_text_for_gold_logits(tokenizer, questions, max_length, doc_stride,
                                                       max_query_length, n_too_long):
    """Every gold answer that fits (in a window, and in max_answer_length = 30 tokens) comes back as the
    characters of its labelled tokens: the gold text itself, or the tokens containing it (see above)."""
    answers = every_gold_answer(questions)
    windows = build_windows(tokenizer, answers, max_length, doc_stride, max_query_length)
    start, end = gold_logits(windows)
    predicted = best_answers(answers, windows, start, end, max_answer_length=30)
    assert [a.id for a in predicted] == [q.id for q in answers]
    fits = {w.question: w for w in windows if w.start_position != CLS_POSITION
            and w.end_position - w.start_position + 1 <= 30}
    assert len(answers) - len(fits) == n_too_long
    for qi, (q, a) in enumerate(zip(answers, predicted)):
        assert a.text == q.context[a.start:a.end]
        if qi in fits:
            assert a.text == label_text(q, fits[qi]) and a.score == 20.0
            assert a.text == q.answers[0] or q.answers[0] == "onomist"
        else:
            assert a.text != q.answers[0] and a.score < 20.0
    # a padded (W, T) matrix gives the same answers as one row per window
    padded = [torch.nn.utils.rnn.pad_sequence(x, batch_first=True) for x in (start, end)]
    assert best_answers(answers, windows, *padded) == predicted


def test_best_answers_equal_brute_force_over_all_valid_spans(tokenizer, questions):
    """With n_best covering every token the answer is the argmax over every valid span; with n_best 20
    it is a valid span whose score is at most that."""
    windows = build_windows(tokenizer, questions[:60], max_length=128, doc_stride=32)
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(len(w.input_ids), generator=generator) for w in windows]
    end = [torch.randn(len(w.input_ids), generator=generator) for w in windows]
    best: dict[int, tuple[float, int, int]] = {}
    for w, s, e in zip(windows, start, end):
        first, stop = w.context_span
        for i in range(first, stop):
            for j in range(i, min(i + 30, stop)):
                score = float(s[i] + e[j])
                if w.question not in best or score > best[w.question][0]:
                    best[w.question] = (score, w.offsets[i][0], w.offsets[j][1])
    exhaustive = best_answers(questions, windows, start, end, n_best=128, max_answer_length=30)
    assert [(a.start, a.end) for a in exhaustive] == [best[q][1:] for q in sorted(best)]
    assert [a.score for a in exhaustive] == pytest.approx([best[q][0] for q in sorted(best)])
    short = best_answers(questions, windows, start, end, n_best=20, max_answer_length=5)
    for q, a, e in zip(questions, short, exhaustive):
        assert a.score <= e.score + 1e-6 and a.text == q.context[a.start:a.end]
        assert 1 <= sum(a.start <= s and t <= a.end for s, t in context_tokens(tokenizer, q.context)) <= 5
    assert sum(a.score < e.score for a, e in zip(short, exhaustive)) > 10


def test_squad_2_no_answer(tmp_path, tokenizer):
    raw = json.loads(SAMPLE.read_text())
    qas = raw["data"][0]["paragraphs"][0]["qas"]
    for qa in qas[:2]:
        qa["is_impossible"], qa["plausible_answers"], qa["answers"] = True, qa["answers"], []
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="is_impossible"):
        read_squad(path)
    questions = read_squad(path, version_2=True)
    assert [q.is_impossible for q in questions[:3]] == [True, True, False]
    assert questions[0].answers == [] and questions[2].answers
    windows = build_windows(tokenizer, questions)
    assert all(w.start_position == CLS_POSITION for w in windows if w.question < 2)
    start, end = gold_logits(windows)    # impossible questions: the large logits sit at [CLS]
    answers = best_answers(questions, windows, start, end, null_threshold=0.0)
    assert [a.text for a in answers[:2]] == ["", ""] and answers[0].score == 20.0
    assert answers[2].text == questions[2].answers[0]
    assert [a.text for a in best_answers(questions, windows, start, end)[:2]] != ["", ""]   # v1.1: always a span


# --------------------------------------------------------------------------- bad input

def write_modified(tmp_path, change) -> str:
    raw = json.loads(SAMPLE.read_text())
    change(raw["data"][1]["paragraphs"][2])     # Pharmacy, third paragraph
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return path


def assert_one_line(error, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_bad_input_malformed_json(tmp_path):
    text = SAMPLE.read_text()
    cut = text.index('"5726db5add62a815002e92d6"')    # a Pharmacy question
    path = tmp_path / "bad.json"
    path.write_text(text[:cut] + text[cut + 1:])
    with pytest.raises(DataError) as error:
        read_squad(path)
    assert_one_line(error, str(path), "line 1, column", "not valid JSON", "article 1 ('Pharmacy')",
                    "after question id")


def test_bad_input_question_without_id(tmp_path):
    path = write_modified(tmp_path, lambda p: p["qas"][1].pop("id"))
    with pytest.raises(DataError) as error:
        read_squad(path)
    qnumber = 1 + 1 + sum(len(p["qas"]) for p in json.loads(SAMPLE.read_text())["data"][1]["paragraphs"][:2])
    assert_one_line(error, str(path), "article 1 ('Pharmacy')", f"question {qnumber} (no id)")


def test_bad_input_answer_start_mismatch(tmp_path):
    def shift(p):
        p["qas"][0]["answers"][1]["answer_start"] += 1
    path = write_modified(tmp_path, shift)
    with pytest.raises(DataError) as error:
        read_squad(path)
    qa = json.loads(SAMPLE.read_text())["data"][1]["paragraphs"][2]["qas"][0]
    assert_one_line(error, "article 1 ('Pharmacy')", f"(id {qa['id']!r}), answer 2: answer_start",
                    f"not the answer text {qa['answers'][1]['text']!r}")


def test_bad_input_empty_context(tmp_path):
    path = write_modified(tmp_path, lambda p: p.update(context=" \n"))
    with pytest.raises(DataError) as error:
        read_squad(path)
    qa = json.loads(SAMPLE.read_text())["data"][1]["paragraphs"][2]["qas"][0]
    assert_one_line(error, "article 1 ('Pharmacy'), paragraph 2", f"(id {qa['id']!r}): empty context")


@pytest.mark.parametrize("change,expected", [
    (lambda p: p["qas"][1].update(id=p["qas"][0]["id"]), "duplicate id (first in article 1)"),
    (lambda p: p["qas"][0].update(question="  "), "empty question"),
    (lambda p: p["qas"][0].update(answers=[]), "no answers"),
    (lambda p: p["qas"][0].update(is_impossible=False), "'is_impossible' is SQuAD 2.0"),
    (lambda p: p["qas"][0]["answers"][0].update(answer_start="12"), "answer 1: answer_start '12' is not an integer"),
])
def test_bad_input_questions(tmp_path, change, expected):
    path = write_modified(tmp_path, change)
    with pytest.raises(DataError) as error:
        read_squad(path)
    assert_one_line(error, "article 1 ('Pharmacy'), question", expected)


def test_questions_without_answers_for_predict(tmp_path):
    path = write_modified(tmp_path, lambda p: [qa.pop("answers") for qa in p["qas"]])
    with pytest.raises(DataError, match="no answers"):
        read_squad(path)
    questions = read_squad(path, require_answers=False)
    assert len(questions) == 339 and sum(not q.answers for q in questions) == 5


def test_bad_input_not_squad(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"version": "1.1"}))
    with pytest.raises(DataError) as error:
        read_squad(path)
    assert_one_line(error, str(path), "no 'data' list")


@pytest.mark.parametrize("line,expected", [
    ('{"question": "Why?"', "not valid JSON"),
    ('{"question": "Why?", "context": ""}', "no 'context' text"),
    ('["Why?", "Because."]', "expected a JSON object"),
    ('', "empty line"),
    ('{"id": "1", "question": "Why?", "context": "Because."}', "duplicate id '1' (first on line 1)"),
])
def test_bad_input_jsonl(tmp_path, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Who?", "context": "Me."}\n' + line + "\n")
    with pytest.raises(DataError) as error:
        read_qa_jsonl(path)
    assert_one_line(error, f"{path}, line 2: {expected}")


def test_bad_train_answers_setting():
    from data.squad import SquadDataModule
    with pytest.raises(ConfigError, match=r"^data.train_answers 'every': must be 'first', 'all' or 'all_together'$"):
        SquadDataModule(split_file=str(FIXTURES / "squad_dev_sample.json"), train_answers="every")
