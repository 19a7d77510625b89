"""Extractive question answering data (SQuAD v1.1, optionally v2.0): reading, windows, post-processing.

Reading: `read_squad` checks an official SQuAD JSON file question by question; every problem is one
`DataError` line naming the file, the article (index and title) and the question (number within the
article and id). `read_qa_jsonl` reads `{"question", "context"[, "id"]}` lines for `predict`.
Only SQuAD v1.1 dev is available here, so `split_by_article` cuts one file into training and evaluation
articles (by default 0-37 and 38-47) and refuses ranges that overlap.

Windows (Devlin et al. 2019, section 4.2): a context longer than fits is cut into overlapping windows
`[CLS] question [SEP] context part [SEP]`, each at most `max_length` tokens. As in transformers' run_qa,
`doc_stride` is the number of context tokens two consecutive windows share, so window k starts at
k * (budget - doc_stride), budget = max_length - len(question) - 3; the last window ends at the context's
end. Every question and every distinct context is tokenised once (`encode_batch`, no special tokens), and
the windows are assembled here; for questions of at most `max_query_length` tokens this gives exactly the
encodings of `tokenizers`' `encode(question, context)` with truncation "only_second", `stride=doc_stride`
and its overflowing encodings (tested), and a longer question is cut to its first `max_query_length`
tokens, as BERT's run_squad does. Offsets are character spans into the context.

Labels: the answer's tokens are the context tokens that overlap its characters [s, e): the first token
ending after s and the last token starting before e. A window holds the answer when both are inside
its context part; otherwise (and for v2.0 questions without an answer) start and end point at [CLS] (0).
Training uses the first gold answer, as the official scripts do (`train_answers: all`: every distinct one).

Post-processing: `best_answers` scores every window's n-best start and end tokens and keeps the best
valid span of each question over all its windows, mapped back to the exact characters of the context.

`SquadDataModule` serves all this to a task: questions from SQuAD files (or one file split by article),
windows cut once the tokenizer is known and cached on disk, batches of windows, and `examples(split)`, the
questions and windows that evaluation and predict map logits back to.
"""
from __future__ import annotations

import bisect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from data.base import TaskDataModule
from data.batching import pad_collate
from data.cache import cached_columns, content_key
from data.errors import ConfigError, DataError
from data.hub import local_file
from data.readers import read_json_lines, read_text
from data.tokenization import load_tokenizer

log = logging.getLogger(__name__)

TRAIN_ARTICLES = range(0, 38)   # dev-v1.1.json articles used for training here (8,582 questions)
EVAL_ARTICLES = range(38, 48)   # dev-v1.1.json articles used for evaluation here (1,988 questions)
CLS_POSITION = 0


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[str]            # gold answer texts (SQuAD dev has up to several per question)
    answer_starts: list[int]      # character offset of each answer in the context
    article: int                  # index of the article in the file (-1 for JSON lines input)
    title: str
    is_impossible: bool = False   # v2.0: the context holds no answer


# --------------------------------------------------------------------------- reading


def _json_error_place(text: str, pos: int) -> str:
    """Where a JSON syntax error is in SQuAD terms (official files are one line): the last article title
    and question id before the error position."""
    titles = re.findall(r'"title"\s*:\s*"((?:[^"\\]|\\.)*)"', text[:pos])
    ids = re.findall(r'"id"\s*:\s*"((?:[^"\\]|\\.)*)"', text[:pos])
    place = f"in article {len(titles) - 1} ({titles[-1]!r})" if titles else "before the first article"
    return place + (f", after question id {ids[-1]!r}" if ids else "")


def read_squad(path: str | Path, version_2: bool = False, require_answers: bool = True) -> list[Question]:
    """The questions of an official SQuAD JSON file, checked one by one.

    version_2: SQuAD 2.0; a question may carry `is_impossible: true` and then has no answer
        (its `plausible_answers` are ignored). In v1.1 mode `is_impossible` is an error.
    require_answers: False for files to predict on, whose questions may come without answers.
    """
    path = Path(local_file(path, "squad"))
    return _questions(path, _load_json(path)[1], version_2, require_answers)


def _load_json(path: Path) -> tuple[str, dict]:
    """A SQuAD file's text and its parsed JSON, with a 'data' list at the top level."""
    text = read_text(path)
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}, column {e.colno} ({_json_error_place(text, e.pos)}): "
                        f"not valid JSON: {e.msg}") from None
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise DataError(f"{path}: no 'data' list at the top level (not a SQuAD file)")
    return text, root


def _questions(path: Path, root: dict, version_2: bool, require_answers: bool) -> list[Question]:
    """The questions of a parsed SQuAD file (see `read_squad`), checked one by one."""
    questions: list[Question] = []
    first_seen: dict[str, int] = {}   # id -> article
    for a, article in enumerate(root["data"]):
        title = article.get("title", "") if isinstance(article, dict) else ""
        here = f"{path}, article {a} ({title!r})"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{here}: no 'paragraphs' list")
        n = 0   # question number within the article, 1-based
        for p, paragraph in enumerate(article["paragraphs"]):
            qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(qas, list):
                raise DataError(f"{here}, paragraph {p}: no 'qas' list")
            context = paragraph.get("context")
            if not isinstance(context, str) or not context.strip():
                first = f", question {n + 1} (id {qas[0].get('id')!r})" if qas and isinstance(qas[0], dict) else ""
                raise DataError(f"{here}, paragraph {p}{first}: empty context")
            for qa in qas:
                n += 1
                questions.append(_read_question(qa, context, a, title, f"{here}, question {n}", version_2,
                                                require_answers))
                qid = questions[-1].id
                if qid in first_seen:
                    raise DataError(f"{here}, question {n} (id {qid!r}): duplicate id (first in article "
                                    f"{first_seen[qid]})")
                first_seen[qid] = a
    return questions


def read_contexts(path: str | Path, articles: Optional[range] = None) -> list[tuple[str, int, int]]:
    """The paragraphs (contexts) of a SQuAD file, once each in file order: (context, article, line of the file).
    `articles` keeps only those article indices: pre-training on the QA training articles reads no evaluation
    article. The file gets `read_squad`'s checks (v1.1 or v2.0; answers not required)."""
    path = Path(local_file(path, "squad"))
    text, root = _load_json(path)
    questions = _questions(path, root, version_2=True, require_answers=False)
    if articles is not None:
        check_articles(f"articles {articles} of {path}", articles, questions)
    lines, line, pos = [], 1, 0                        # the line of each '"context":' key, in file order
    for match in re.finditer(r'(?<!\\)"context"\s*:', text):
        line += text.count("\n", pos, match.start())
        pos = match.start()
        lines.append(line)
    paragraphs = [(p["context"], a) for a, article in enumerate(root["data"])
                  for p in article["paragraphs"]]
    if len(lines) != len(paragraphs):                 # an unusual layout: no line numbers rather than wrong ones
        lines = [0] * len(paragraphs)
    return [(context, a, n) for (context, a), n in zip(paragraphs, lines) if articles is None or a in articles]


def _read_question(qa, context: str, article: int, title: str, where: str, version_2: bool,
                   require_answers: bool) -> Question:
    """One checked `qas` entry; `where` names file, article and question number for messages."""
    if not isinstance(qa, dict) or "id" not in qa:
        raise DataError(f"{where} (no id): a question without 'id'")
    qid = str(qa["id"])
    where = f"{where} (id {qid!r})"
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: empty question")
    if "is_impossible" in qa and not version_2:
        raise DataError(f"{where}: 'is_impossible' is SQuAD 2.0 (read the file with version 2.0)")
    impossible = bool(qa.get("is_impossible", False))
    answers = qa.get("answers", [])
    if not isinstance(answers, list):
        raise DataError(f"{where}: 'answers' is not a list")
    if impossible and answers:
        raise DataError(f"{where}: is_impossible but {len(answers)} answers given")
    if not impossible and not answers and require_answers:
        raise DataError(f"{where}: no answers")
    texts, starts = [], []
    for k, answer in enumerate(answers, 1):
        answer_text = answer.get("text") if isinstance(answer, dict) else None
        start = answer.get("answer_start") if isinstance(answer, dict) else None
        if not isinstance(answer_text, str) or not answer_text:
            raise DataError(f"{where}, answer {k}: no answer text")
        if not isinstance(start, int) or isinstance(start, bool):
            raise DataError(f"{where}, answer {k}: answer_start {start!r} is not an integer")
        found = context[start:start + len(answer_text)] if start >= 0 else ""
        if found != answer_text:
            raise DataError(f"{where}, answer {k}: answer_start {start} gives {found!r}, not the answer text "
                            f"{answer_text!r}")
        texts.append(answer_text)
        starts.append(start)
    return Question(qid, question, context, texts, starts, article, title, impossible)


def read_qa_jsonl(path: str | Path) -> list[Question]:
    """Questions to answer from JSON lines `{"question": ..., "context": ...}` with an optional "id" (default: the
    line number); texts are kept exactly as given (answers are character offsets into them). Every problem names the
    line; an empty line is one (it would shift the output against the input)."""
    questions, seen = [], {}
    for line_no, row in read_json_lines(path):
        where = f"{path}, line {line_no}"
        for key in ("question", "context"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(f"{where}: no {key!r} text")
        qid = str(row.get("id", line_no))
        if qid in seen:
            raise DataError(f"{where}: duplicate id {qid!r} (first on line {seen[qid]})")
        seen[qid] = line_no
        questions.append(Question(qid, row["question"], row["context"], [], [], -1, ""))
    if not questions:
        raise DataError(f"{path}: no questions in this file")
    return questions


def check_articles(label: str, articles: range, questions: list[Question]) -> None:
    """A ConfigError, `label` first, unless `articles` is a non-empty range of the file's article indices."""
    n_articles = max((q.article for q in questions), default=-1) + 1
    if len(articles) == 0 or articles.start < 0 or articles[-1] >= n_articles:
        raise ConfigError(f"{label}: the file has articles 0-{n_articles - 1}")


def split_by_article(questions: list[Question], train_articles: range = TRAIN_ARTICLES,
                     eval_articles: range = EVAL_ARTICLES) -> tuple[list[Question], list[Question]]:
    """(training, evaluation) questions by article index; the two ranges may not share an article."""
    shared = set(train_articles) & set(eval_articles)
    if shared:
        raise ConfigError(f"train_articles {train_articles} and eval_articles {eval_articles} overlap "
                          f"(articles {min(shared)}-{max(shared)}): no evaluation article may reach training")
    for name, articles in (("train_articles", train_articles), ("eval_articles", eval_articles)):
        check_articles(f"{name} {articles}", articles, questions)
    train = [q for q in questions if q.article in train_articles]
    evaluation = [q for q in questions if q.article in eval_articles]
    return train, evaluation


# --------------------------------------------------------------------------- windows


@dataclass
class Window:
    """One model input: `[CLS] question [SEP] context part [SEP]`."""
    question: int                     # index of its question in the list given to build_windows
    input_ids: list[int]
    token_type_ids: list[int]         # 0 for [CLS] question [SEP], 1 for context part [SEP]
    offsets: list[tuple[int, int]]    # (start, end) characters in the context; (-1, -1) outside the context part
    start_position: int = CLS_POSITION   # answer's first / last token here; 0 ([CLS]) when the window
    end_position: int = CLS_POSITION     # does not hold the whole answer (or without labels)

    @property
    def context_span(self) -> tuple[int, int]:
        """Positions [first, end) of the context tokens (the final [SEP] excluded)."""
        return self.token_type_ids.index(1), len(self.input_ids) - 1


def window_starts(n_tokens: int, budget: int, doc_stride: int) -> list[int]:
    """First context token of each window: every `budget - doc_stride` tokens until one reaches the end."""
    starts = [0]
    while starts[-1] + budget < n_tokens:
        starts.append(starts[-1] + budget - doc_stride)
    return starts


def answer_tokens(starts: list[int], ends: list[int], s: int, e: int) -> tuple[int, int]:
    """(first, last) context token overlapping characters [s, e), from the tokens' sorted start and end
    offsets; first > last when no token overlaps."""
    return bisect.bisect_right(ends, s), bisect.bisect_left(starts, e) - 1


def check_window_settings(max_length: int, doc_stride: int, max_query_length: int) -> None:
    if max_query_length < 1:
        raise ConfigError(f"max_query_length {max_query_length}: must be > 0")
    if doc_stride < 0:
        raise ConfigError(f"doc_stride {doc_stride}: must be >= 0")
    if max_length - max_query_length - 3 <= doc_stride:
        raise ConfigError(f"max_length {max_length}: must exceed max_query_length + 3 + doc_stride "
                          f"({max_query_length} + 3 + {doc_stride}), else windows cannot advance")


def build_windows(tokenizer: Tokenizer, questions: list[Question], max_length: int = 384, doc_stride: int = 128,
                  max_query_length: int = 64, with_labels: bool = True, all_answers: bool = False) -> list[Window]:
    """All windows of all questions, in question order (see the module docstring for the rules).

    with_labels: set start/end positions from each question's first answer (else they stay 0).
    all_answers: label from every distinct gold answer instead: a window that holds k of them appears k times,
        once labelled with each (a window that holds none, once, at [CLS]).
    """
    check_window_settings(max_length, doc_stride, max_query_length)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    contexts = list(dict.fromkeys(q.context for q in questions))
    context_index = {c: i for i, c in enumerate(contexts)}
    context_enc = tokenizer.encode_batch(contexts, add_special_tokens=False)
    context_ids = [e.ids for e in context_enc]
    context_offsets = [e.offsets for e in context_enc]
    offset_starts = [[o[0] for o in offs] for offs in context_offsets]
    offset_ends = [[o[1] for o in offs] for offs in context_offsets]
    question_ids = [e.ids[:max_query_length]
                    for e in tokenizer.encode_batch([q.question for q in questions], add_special_tokens=False)]

    windows = []
    for qi, (q, q_ids) in enumerate(zip(questions, question_ids)):
        c = context_index[q.context]
        ids, offsets = context_ids[c], context_offsets[c]
        head = [cls] + q_ids + [sep]                      # [CLS] question [SEP]
        budget = max_length - len(head) - 1               # context tokens per window
        spans = []                                        # answers as (first, last) context tokens
        if with_labels and q.answers and not q.is_impossible:
            gold = dict.fromkeys(zip(q.answer_starts, q.answers))         # distinct, in file order
            spans = [answer_tokens(offset_starts[c], offset_ends[c], s, s + len(text))
                     for s, text in (list(gold) if all_answers else list(gold)[:1])]
        for start in window_starts(len(ids), budget, doc_stride):
            stop = min(start + budget, len(ids))
            labels = list(dict.fromkeys((len(head) + first - start, len(head) + last - start)
                                        for first, last in spans if start <= first <= last < stop))
            for start_position, end_position in labels or [(CLS_POSITION, CLS_POSITION)]:
                windows.append(Window(
                    question=qi,
                    input_ids=head + ids[start:stop] + [sep],
                    token_type_ids=[0] * len(head) + [1] * (stop - start + 1),
                    offsets=[(-1, -1)] * len(head) + offsets[start:stop] + [(-1, -1)],
                    start_position=start_position,
                    end_position=end_position,
                ))
    return windows


WINDOW_COLUMNS = ("question", "input_ids", "token_type_ids", "offset_start", "offset_end", "start_position",
                  "end_position")


def windows_to_columns(windows: list[Window]) -> dict[str, list]:
    """Flat column lists for a `datasets.Dataset.from_dict` cache (offsets as two int lists per window)."""
    columns = {name: [getattr(w, name) for w in windows] for name in ("question", "input_ids", "token_type_ids",
                                                                      "start_position", "end_position")}
    columns["offset_start"], columns["offset_end"] = [], []
    for w in windows:
        starts, ends = zip(*w.offsets)
        columns["offset_start"].append(list(starts))
        columns["offset_end"].append(list(ends))
    return {name: columns[name] for name in WINDOW_COLUMNS}


def columns_to_windows(columns: dict[str, list]) -> list[Window]:
    """The inverse of `windows_to_columns`. From a cached `datasets.Dataset` pass plain lists,
    `{name: ds.data.column(name).to_pylist()}` (2 s for 10,784 windows; `ds[name]` converts row by row)."""
    return [Window(question, input_ids, token_type_ids, list(zip(starts, ends)), start, end)
            for question, input_ids, token_type_ids, starts, ends, start, end
            in zip(*(columns[name] for name in WINDOW_COLUMNS))]


# --------------------------------------------------------------------------- post-processing


@dataclass
class Answer:
    id: str
    text: str       # context[start:end] ("" for a v2.0 no-answer)
    start: int      # character offsets in the context
    end: int
    score: float    # start logit + end logit (the null score for a no-answer)


def _as_matrix(logits, width: int) -> torch.Tensor:
    """(W, T) float logits from a (W, T) tensor/array or one 1-D row per window (padded with -inf)."""
    if isinstance(logits, torch.Tensor) and logits.dim() == 2:
        matrix = logits.float()
    else:
        rows = [torch.as_tensor(row, dtype=torch.float32) for row in logits]
        matrix = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=float("-inf"))
    if matrix.shape[1] < width:
        raise ValueError(f"logits hold {matrix.shape[1]} positions but a window has {width} tokens")
    return matrix


def best_answers(questions: list[Question], windows: list[Window], start_logits, end_logits, n_best: int = 20,
                 max_answer_length: int = 30, null_threshold: float | None = None) -> list[Answer]:
    """The best answer of every question that has windows, in question order.

    In each window the `n_best` highest start and end logits among its context tokens are paired; a pair
    (i, j) is a valid span when i <= j and j - i + 1 <= max_answer_length, scored start[i] + end[j]. A
    question's answer is its best valid span over all its windows, as the characters
    context[offsets[i].start : offsets[j].end]. With `null_threshold` (SQuAD 2.0) the question gets no
    answer ("") when null - best > null_threshold, where null is the lowest [CLS] score start[0] + end[0]
    over its windows (as in BERT's run_squad). A question whose windows have no valid pair among their
    n-best gets "" with score -inf.

    start_logits, end_logits: a (W, T) tensor or array, or one 1-D row per window, at least as long as it.
    """
    width = max(len(w.input_ids) for w in windows)
    start = _as_matrix(start_logits, width)                              # (W, T)
    end = _as_matrix(end_logits, width)                                  # (W, T)
    spans = torch.tensor([w.context_span for w in windows])              # (W, 2)
    position = torch.arange(start.shape[1])                              # (T,)
    inside = (position >= spans[:, :1]) & (position < spans[:, 1:])      # (W, T) context tokens
    k = min(n_best, start.shape[1])
    top_start, i = start.masked_fill(~inside, float("-inf")).topk(k)    # (W, k)
    top_end, j = end.masked_fill(~inside, float("-inf")).topk(k)        # (W, k)
    score = top_start[:, :, None] + top_end[:, None, :]                  # (W, k, k): pair (i_a, j_b)
    length = j[:, None, :] - i[:, :, None] + 1                           # (W, k, k) tokens in the span
    score = score.masked_fill((length < 1) | (length > max_answer_length), float("-inf"))
    best_score, best = score.flatten(1).max(dim=1)                       # (W,)
    best_i = i.gather(1, (best // k)[:, None]).squeeze(1)                # (W,)
    best_j = j.gather(1, (best % k)[:, None]).squeeze(1)                 # (W,)
    null_score = start[:, CLS_POSITION] + end[:, CLS_POSITION]           # (W,)

    best_of: dict[int, tuple[float, int, int, int]] = {}   # question -> (score, window, i, j)
    null_of: dict[int, float] = {}
    for w, (window, s, a, b, null) in enumerate(zip(windows, best_score.tolist(), best_i.tolist(),
                                                    best_j.tolist(), null_score.tolist())):
        q = window.question
        if q not in best_of or s > best_of[q][0]:
            best_of[q] = (s, w, a, b)
        null_of[q] = min(null, null_of.get(q, float("inf")))

    answers = []
    for q in sorted(best_of):
        s, w, a, b = best_of[q]
        question = questions[q]
        if null_threshold is not None and null_of[q] - s > null_threshold:
            answers.append(Answer(question.id, "", 0, 0, null_of[q]))
            continue
        if s == float("-inf"):   # every n-best end lies before every n-best start: no valid span
            answers.append(Answer(question.id, "", 0, 0, s))
            continue
        char_start, char_end = windows[w].offsets[a][0], windows[w].offsets[b][1]
        answers.append(Answer(question.id, question.context[char_start:char_end], char_start, char_end, s))
    return answers


IGNORE_TARGET = -100      # pads a window's list of answer positions (F.cross_entropy's ignore_index)


def together(windows: list[Window]) -> list[dict]:
    """The examples of `windows` (as window_example), consecutive copies of one window (the same question and
    tokens, one per answer it holds: build_windows with all_answers) merged into one whose start_positions /
    end_positions list all its answers."""
    examples: list[dict] = []
    for i, w in enumerate(windows):
        if i and w.question == windows[i - 1].question and w.input_ids == windows[i - 1].input_ids:
            examples[-1]["start_positions"].append(w.start_position)
            examples[-1]["end_positions"].append(w.end_position)
        else:
            examples.append({**window_example(i, w), "start_positions": [w.start_position],
                             "end_positions": [w.end_position]})
    return examples


# --------------------------------------------------------------------------- data module


def window_example(index: int, w: Window) -> dict:
    """A window as the dict the padding collate takes; `index` (its position in the split) maps logits back."""
    return {"input_ids": w.input_ids, "token_type_ids": w.token_type_ids, "start_positions": w.start_position,
            "end_positions": w.end_position, "index": index}


class SquadDataModule(TaskDataModule):
    """SQuAD questions cut into windows of `[CLS] question [SEP] context part [SEP]`.

    Questions come from SQuAD JSON files (`train_file`, `val_file`, `test_file`), or from one file split by
    article (`split_file`): training from the articles [start, stop) of `train_articles`, evaluation (val, and test
    unless `test_file` is given) from `eval_articles`; the two ranges may not overlap. `predict_file` is JSON lines
    `{"question", "context"[, "id"]}`, or a SQuAD JSON file (`.json`) whose answers, if any, are ignored.

    For evaluation and predict a task reads `examples(split)`: the questions and the windows cut from them (each
    window's `question` indexes the questions); every batch carries its windows' `index` into that list.
    """

    def __init__(self, tokenizer: Optional[str] = None, train_file: Optional[str] = None,
                 val_file: Optional[str] = None, test_file: Optional[str] = None, split_file: Optional[str] = None,
                 train_articles: tuple[int, int] = (TRAIN_ARTICLES.start, TRAIN_ARTICLES.stop),
                 eval_articles: tuple[int, int] = (EVAL_ARTICLES.start, EVAL_ARTICLES.stop),
                 predict_file: Optional[str] = None, version_2: bool = False, max_length: int = 384,
                 doc_stride: int = 128, max_query_length: int = 64, train_answers: str = "first",
                 group_by_length: bool = True, cache_dir: Optional[str] = ".cache/tokenized", **kwargs):
        """
        Args:
            tokenizer: model directory, tokenizer.json or vocab.txt (default: model.pretrained's, or the checkpoint's).
            train_file, val_file, test_file: SQuAD JSON files.
            split_file: one SQuAD JSON file that gives training and evaluation questions by article (instead of
                train_file and val_file): only SQuAD v1.1 dev is available here.
            train_articles, eval_articles: [start, stop) article indices of split_file for training and evaluation.
            predict_file: questions to answer: JSON lines {"question", "context"[, "id"]} or a SQuAD .json file.
            version_2: SQuAD 2.0 files (questions may be `is_impossible`: their windows point at [CLS]).
            max_length: tokens per window, [CLS] and both [SEP] included.
            doc_stride: context tokens shared by consecutive windows of one context.
            max_query_length: questions longer than this many tokens are cut.
            train_answers: "first": training labels from each question's first gold answer (the official scripts);
                "all": from each distinct gold answer, a window holding k of them trained on k times, once with
                each (SQuAD dev gives up to three answers per question); "all_together": the same labels and the
                same loss, but a window is computed once, with its k answers as k targets (batches of windows,
                so an epoch takes fewer steps). Evaluation is unchanged.
            group_by_length: training batches of windows of similar length.
            cache_dir: where windows are cached, keyed by questions, tokenizer and settings (None: no cache).
        """
        super().__init__(**kwargs)
        try:
            check_window_settings(max_length, doc_stride, max_query_length)
        except ConfigError as e:
            raise ConfigError(f"data.{e}") from None
        if train_answers not in ("first", "all", "all_together"):
            raise ConfigError(f"data.train_answers {train_answers!r}: must be 'first', 'all' or 'all_together'")
        if split_file and (train_file or val_file):
            raise ConfigError("data.split_file gives both training and evaluation questions: leave data.train_file "
                              "and data.val_file unset (null)")
        for key, (start, stop) in (("train_articles", train_articles), ("eval_articles", eval_articles)):
            if not 0 <= start < stop:
                raise ConfigError(f"data.{key} [{start}, {stop}]: must be [start, stop) with 0 <= start < stop")
        if train_file and train_file == val_file:
            log.warning("data.train_file and data.val_file are the same file: every evaluation question is trained "
                        "on (data.split_file splits one file by article)")
        self.save_hyperparameters()
        self.max_length, self.version_2 = max_length, version_2
        self.questions: dict[str, list[Question]] = {}
        self._windows: dict[str, list[Window]] = {}
        self._by_article: Optional[tuple[list[Question], list[Question]]] = None

    def adopt(self, blueprint) -> None:
        super().adopt(blueprint)
        self._windows.clear()                 # cut again with the checkpoint's tokenizer

    # ---- reading ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Reads and checks this stage's files (windows are cut later, once the tokenizer is known)."""
        if self.tokenizer is None and self.hparams.tokenizer:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer)
        for split in {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}[stage]:
            if split not in self.questions:
                self.questions[split] = self._read(split)

    def _read(self, split: str) -> list[Question]:
        h = self.hparams
        if split == "predict":
            if not h.predict_file:
                raise DataError('qa predict: give data.predict_file (JSON lines {"question", "context"} or a SQuAD '
                                '.json file)')
            path = local_file(h.predict_file, "squad")            # a hub split becomes a SQuAD .json file
            if Path(path).suffix == ".json":
                return read_squad(path, h.version_2, require_answers=False)
            return read_qa_jsonl(path)
        path = {"train": h.train_file, "val": h.val_file, "test": h.test_file}[split]
        if path:
            return read_squad(path, h.version_2)
        if h.split_file:
            train, evaluation = self._split()
            return train if split == "train" else evaluation
        raise DataError(f"qa: data.{split}_file (or data.split_file) is required for this stage")

    def _split(self) -> tuple[list[Question], list[Question]]:
        """(training, evaluation) questions of `split_file` by article, read once."""
        h = self.hparams
        if self._by_article is None:
            try:
                self._by_article = split_by_article(read_squad(h.split_file, h.version_2),
                                                    range(*h.train_articles), range(*h.eval_articles))
            except ConfigError as e:
                raise ConfigError(f"data.split_file {h.split_file}: data.{e}") from None
        return self._by_article

    # ---- windows ----------------------------------------------------------------------------------------------
    def examples(self, split: str) -> tuple[list[Question], list[Window]]:
        """The questions of a split and their windows, in question order (cut once, and cached on disk)."""
        if split not in self._windows:
            if self.tokenizer is None:
                raise DataError("qa: no tokenizer: give data.tokenizer (a model directory or vocab.txt), "
                                "model.pretrained, or a checkpoint (--ckpt_path) that carries one")
            if split not in self.questions:
                self.questions[split] = self._read(split)
            write = self.trainer is None or self.trainer.global_rank == 0     # DDP: rank 0 stores the cache
            columns = cached_columns(self.hparams.cache_dir or None, self._cache_key(split),
                                     lambda: self._cut(split), write)
            self._windows[split] = columns_to_windows(columns)
        return self.questions[split], self._windows[split]

    def _window_settings(self) -> tuple[int, int, int]:
        h = self.hparams
        return h.max_length, h.doc_stride, h.max_query_length

    def _cut(self, split: str) -> dict[str, list]:
        """The split's windows as cache columns."""
        return windows_to_columns(build_windows(self.tokenizer, self.questions[split], *self._window_settings(),
                                                all_answers=self._all_answers(split)))

    def _all_answers(self, split: str) -> bool:
        return split == "train" and self.hparams.train_answers in ("all", "all_together")

    def _cache_key(self, split: str) -> str:
        """Everything the windows depend on: tokenizer, window settings, and each question's text, context and
        the answers labels are made from."""
        n = None if self._all_answers(split) else 1
        content = [[q.question, q.context, q.answers[:n], q.answer_starts[:n], q.is_impossible]
                   for q in self.questions[split]]
        return content_key(self.tokenizer.to_str(), json.dumps([*self._window_settings(), n]), json.dumps(content))

    # ---- loaders ----------------------------------------------------------------------------------------------
    def split_loader(self, split: str, train: bool, keep_order: bool) -> DataLoader:
        """Predict keeps file order: the task writes each question's answer once all its windows are predicted."""
        _, windows = self.examples(split)
        pad = {"input_ids": self.tokenizer.token_to_id("[PAD]") or 0, "token_type_ids": 0}
        if split == "train" and self.hparams.train_answers == "all_together":
            examples = together(windows)
            pad |= {"start_positions": IGNORE_TARGET, "end_positions": IGNORE_TARGET}
        else:
            examples = [window_example(i, w) for i, w in enumerate(windows)]
        return self.loader(examples, [len(e["input_ids"]) for e in examples], pad_collate(pad),
                           train=train, keep_order=keep_order, group_by_length=self.hparams.group_by_length or not train)
