"""QATask and SquadDataModule through run.py (issue 12): fit on the fixture split by article, predict from the
checkpoint alone (contexts longer than one window), EM/F1 equal to the metric functions, DDP equal to one process,
no evaluation article in training, the window cache, bad input as one line."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
import yaml
from conftest import FIXTURES, ROOT

import run
from data.errors import ConfigError
from data.squad import SquadDataModule, best_answers, read_squad
from tasks.qa import QATask
from tasks.squad_metric import exact_match, f1

SAMPLE = FIXTURES / "squad_dev_sample.json"      # articles 19, 26, 38 of dev-v1.1.json (see test_qa_data.py)
VOCAB = FIXTURES / "qa_vocab.txt"
PREDICT = FIXTURES / "qa_predict.jsonl"          # 5 real questions; Packet_switching's context: 8 windows
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SETTINGS = dict(max_length=128, doc_stride=32, max_query_length=32)   # configs/qa/default.yaml's


pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The default config (2-layer BERT, articles 0-1 of the fixture) trained until it answers its training
    questions: its run directory."""
    run_dir = tmp_path_factory.mktemp("qa_fit")
    assert run.main(["qa", "fit", "--wandb", "false", "--trainer.max_epochs", "8", "--model.lr", "3e-3", "--run_dir", str(run_dir),
                     "--data.cache_dir", str(run_dir / "cache"), *QUIET]) == 0
    return run_dir


def checkpoint(run_dir) -> str:
    return str(run_dir / "checkpoints" / "last.ckpt")


def metrics(run_dir, sub: str) -> dict:
    return json.loads((run_dir / f"{sub}_metrics.json").read_text())["metrics"]


def one_article(tmp_path, article: int) -> str:
    """A SQuAD file holding one article of the fixture."""
    raw = json.loads(SAMPLE.read_text())
    raw["data"] = raw["data"][article:article + 1]
    path = tmp_path / f"article{article}.json"
    path.write_text(json.dumps(raw))
    return str(path)


def fixture_vocab() -> list[str]:
    """How tests/fixtures/qa_vocab.txt was made: the specials, every character of the fixture's words (alone and
    as ##continuation), then every word of its contexts and questions, commonest first, as BERT's uncased
    normaliser and pre-tokenizer split them."""
    from tokenizers import normalizers, pre_tokenizers
    normalize, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    questions = read_squad(SAMPLE)
    texts = list(dict.fromkeys(q.context for q in questions)) + [q.question for q in questions]
    words = Counter(w for text in texts for w, _ in split.pre_tokenize_str(normalize.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    return (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
            + [w for w in sorted(words, key=lambda w: (-words[w], w)) if len(w) > 1])


def test_vocab_fixture_is_the_squad_fixtures_words():
    assert VOCAB.read_text().splitlines() == fixture_vocab()


# --------------------------------------------------------------------------- data module

def data_module(tmp_path=None, **kwargs) -> SquadDataModule:
    settings = dict(tokenizer=str(VOCAB), split_file=str(SAMPLE), train_articles=(0, 2), eval_articles=(2, 3),
                    cache_dir=str(tmp_path / "cache") if tmp_path else None, batch_size=16, **SETTINGS)
    return SquadDataModule(**{**settings, **kwargs})


def test_no_evaluation_article_reaches_training():
    """Every window of every training batch comes from a training article; evaluation windows are all in the
    validation loader, once; no evaluation window (token for token) is among the training windows."""
    data = data_module()
    data.setup("fit")
    train_questions, train_windows = data.examples("train")
    val_questions, val_windows = data.examples("val")
    assert {q.article for q in train_questions} == {0, 1} and {q.article for q in val_questions} == {2}
    assert (len(train_questions), len(val_questions)) == (235, 104)
    trained_on = [i for batch in data.train_dataloader() for i in batch["index"].tolist()]
    assert sorted(trained_on) == list(range(len(train_windows)))           # each training window once an epoch
    assert {train_questions[train_windows[i].question].article for i in trained_on} == {0, 1}
    assert not {tuple(w.input_ids) for w in train_windows} & {tuple(w.input_ids) for w in val_windows}
    assert not {q.context for q in train_questions} & {q.context for q in val_questions}
    evaluated = [i for batch in data.val_dataloader() for i in batch["index"].tolist()]
    assert sorted(evaluated) == list(range(len(val_windows)))
    assert data.examples("test")[0] == val_questions          # test: the held-out articles too (no test_file)


def test_split_of_the_real_file(shared_data):
    data = SquadDataModule(split_file=str(shared_data("squad", "dev-v1.1.json")))    # articles 0-37 / 38-47
    data.setup("fit")
    train, evaluation = data.questions["train"], data.questions["val"]
    assert (len(train), len(evaluation)) == (8582, 1988)
    assert {q.article for q in train} == set(range(38)) and {q.article for q in evaluation} == set(range(38, 48))
    assert not {q.context for q in train} & {q.context for q in evaluation}


def test_windows_are_cached_by_content_tokenizer_and_settings(tmp_path, monkeypatch):
    first = data_module(tmp_path)
    first.setup("fit")
    questions, windows = first.examples("val")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    import data.squad

    def no_cutting(*args, **kwargs):
        raise AssertionError("a cache hit must not cut windows again")
    monkeypatch.setattr(data.squad, "build_windows", no_cutting)
    again = data_module(tmp_path)
    again.setup("fit")
    assert again.examples("val") == (questions, windows)
    other = data_module(tmp_path, doc_stride=16)          # other settings: other windows
    other.setup("fit")
    with pytest.raises(AssertionError, match="cache hit"):
        other.examples("val")


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"^data.max_length 64: must exceed"):
        data_module(max_length=64, doc_stride=32)
    with pytest.raises(ConfigError, match=r"^data.split_file gives both"):
        data_module(train_file=str(SAMPLE))
    with pytest.raises(ConfigError, match=r"^data.eval_articles \[3, 3\]"):
        data_module(eval_articles=(3, 3))
    overlapping = data_module(eval_articles=(1, 3))
    with pytest.raises(ConfigError, match=r"data.train_articles range\(0, 2\) and eval_articles range\(1, 3\) "
                                          r"overlap"):
        overlapping.setup("fit")


# --------------------------------------------------------------------------- the task

def test_fit_writes_a_checkpoint_that_answers_its_training_questions(trained, tmp_path):
    fit = metrics(trained, "fit")
    assert fit["val/questions"] == 104 and 0 <= fit["val/exact_match"] <= fit["val/f1"] <= 100
    assert fit["train/loss"] < 1.0
    ckpt = torch.load(checkpoint(trained), map_location="cpu", weights_only=True)
    assert ckpt["task"]["task"] == "qa" and ckpt["task"]["settings"] == {"version_2": False}
    assert ckpt["task"]["tokenizer"] and ckpt["task"]["model_config"]["num_layers"] == 2
    assert ckpt["state_dict"]["span.weight"].shape == (2, 64)
    # evaluated on an article it was trained on, the tiny model answers many questions exactly
    assert run.main(["qa", "validate", "--ckpt_path", checkpoint(trained), "--data.split_file", "null",
                     "--data.val_file", one_article(tmp_path, 0), "--run_dir", str(tmp_path / "val"), *QUIET]) == 0
    assert metrics(tmp_path / "val", "validate")["val/exact_match"] > 20


def test_all_together_trains_each_window_once(tmp_path):
    """train_answers all_together: an epoch has one example per window, fewer than `all`'s copies, and trains."""
    steps = {}
    for answers in ("all", "all_together"):
        run_dir = tmp_path / answers
        assert run.main(["qa", "fit", "--wandb", "false", "--trainer.max_epochs", "1", "--data.train_answers", answers,
                         "--data.batch_size", "4", "--run_dir", str(run_dir), "--data.cache_dir",
                         str(tmp_path / "cache"), *QUIET]) == 0
        steps[answers] = json.loads((run_dir / "fit_metrics.json").read_text())["global_step"]
        assert math.isfinite(metrics(run_dir, "fit")["train/loss"])
    assert 0 < steps["all_together"] < steps["all"]


def test_padding_is_masked_out_of_the_span_scores(trained):
    task = QATask.load_from_checkpoint(checkpoint(trained), map_location="cpu").eval()
    data = data_module()
    data.adopt(task.blueprint)
    data.setup("validate")
    _, windows = data.examples("val")
    by_length = sorted(windows, key=lambda w: len(w.input_ids))
    short, long = by_length[0], by_length[-1]
    n, pad = len(short.input_ids), [0] * (len(long.input_ids) - len(short.input_ids))
    batch = {"input_ids": torch.tensor([long.input_ids, short.input_ids + pad]),
             "token_type_ids": torch.tensor([long.token_type_ids, short.token_type_ids + pad]),
             "attention_mask": torch.tensor([[1] * len(long.input_ids), [1] * n + pad])}
    with torch.no_grad():
        padded = task(**batch)
        alone = task(torch.tensor([short.input_ids]), torch.tensor([short.token_type_ids]), torch.ones(1, n).long())
    for in_batch, by_itself in zip(padded, alone):
        torch.testing.assert_close(in_batch[1, :n], by_itself[0], atol=1e-5, rtol=1e-5)
        assert torch.isneginf(in_batch[1, n:]).all()


def direct_answers(run_dir, path) -> list:
    """Every question's best answer over all its windows, from the model's logits of each window alone."""
    task = QATask.load_from_checkpoint(checkpoint(run_dir), map_location="cpu").eval()
    data = data_module(predict_file=str(path))
    data.adopt(task.blueprint)
    data.setup("predict")
    questions, windows = data.examples("predict")
    with torch.no_grad():
        logits = [task(torch.tensor([w.input_ids]), torch.tensor([w.token_type_ids]),
                       torch.ones(1, len(w.input_ids)).long()) for w in windows]
    start, end = ([row[k][0] for row in logits] for k in (0, 1))
    return best_answers(questions, windows, start, end)


def test_predict_from_the_checkpoint_alone_over_contexts_longer_than_a_window(trained, tmp_path):
    out = tmp_path / "answers.jsonl"
    # nothing but the checkpoint: no tokenizer, no training data; batches of 2 windows, so a question's windows
    # arrive over several batches before its answer is written
    assert run.main(["qa", "predict", "--ckpt_path", checkpoint(trained), "--data.tokenizer", "null",
                     "--data.split_file", "null", "--data.predict_file", str(PREDICT), "--data.eval_batch_size", "2",
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "run"), *QUIET]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    inputs = [json.loads(line) for line in PREDICT.read_text().splitlines()]
    assert [r["question"] for r in rows] == [x["question"] for x in inputs]           # one per line, in order
    assert [r["id"] for r in rows] == [x.get("id", str(n)) for n, x in enumerate(inputs, 1)]
    for r, x in zip(rows, inputs):
        assert r["answer"] and x["context"][r["start"]:r["end"]] == r["answer"]
    expected = direct_answers(trained, PREDICT)
    assert [(r["answer"], r["start"]) for r in rows] == [(a.text, a.start) for a in expected]
    assert [r["score"] for r in rows] == pytest.approx([a.score for a in expected], abs=1e-3)
    # the first question's context is cut into 8 windows; its answer, beyond the first, is found over all
    data = data_module(predict_file=str(PREDICT))
    data.setup("predict")
    questions, windows = data.examples("predict")
    first = [w for w in windows if w.question == 0]
    assert len(first) == 8 and rows[0]["start"] > first[0].offsets[first[0].context_span[1] - 1][1]
    gold = {q.id: q.answers for q in read_squad(SAMPLE)}
    assert rows[0]["answer"] in gold[rows[0]["id"]]


def test_decoding_settings_of_the_predict_command_apply_not_the_training_runs(trained, tmp_path):
    """The checkpoint was trained with max_answer_length 30; `--model.max_answer_length 1` on predict takes answers
    of one token (no space inside; none where no start among the 3 best pairs with an end), and its n_best and answer
    length are what the run's config.yaml records."""
    out = tmp_path / "answers.jsonl"
    assert run.main(["qa", "predict", "--ckpt_path", checkpoint(trained), "--data.predict_file", str(PREDICT),
                     "--model.max_answer_length", "1", "--model.n_best", "3", "--predict_output", str(out),
                     "--run_dir", str(tmp_path / "run"), *QUIET]) == 0
    answers = [json.loads(line)["answer"] for line in out.read_text().splitlines()]
    assert any(answers) and all(" " not in a for a in answers), answers
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (config["max_answer_length"], config["n_best"]) == (1, 3)


def test_task_scores_equal_the_metric_functions_on_its_predictions(trained, tmp_path):
    """validate's EM / F1 on an article = the mean of exact_match / f1 over predict's answers to its questions."""
    article = one_article(tmp_path, 0)
    common = ["--ckpt_path", checkpoint(trained), "--data.split_file", "null", "--data.eval_batch_size", "1", *QUIET]
    assert run.main(["qa", "validate", "--data.val_file", article, "--run_dir", str(tmp_path / "val"), *common]) == 0
    out = tmp_path / "answers.jsonl"
    assert run.main(["qa", "predict", "--data.predict_file", article, "--predict_output", str(out),
                     "--run_dir", str(tmp_path / "pred"), *common]) == 0
    answers = [json.loads(line)["answer"] for line in out.read_text().splitlines()]
    golds = [q.answers for q in read_squad(article)]
    assert len(answers) == len(golds) == 106
    scores = metrics(tmp_path / "val", "validate")
    assert scores["val/exact_match"] == pytest.approx(100 * sum(map(exact_match, answers, golds)) / 106, abs=1e-4)
    assert scores["val/f1"] == pytest.approx(100 * sum(map(f1, answers, golds)) / 106, abs=1e-4)
    assert 0 < scores["val/exact_match"] < scores["val/f1"] < 100


def test_squad_2_questions_without_answer(tmp_path):
    """Two evaluation questions made impossible (SQuAD 2.0), and a null threshold that every [CLS] score beats:
    every answer is empty, so exactly those two questions score, EM = F1 = 2/104."""
    raw = json.loads(SAMPLE.read_text())
    for qa in raw["data"][2]["paragraphs"][0]["qas"][:2]:
        qa["is_impossible"], qa["answers"] = True, []
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(raw))
    run_dir = tmp_path / "run"
    assert run.main(["qa", "fit", "--data.split_file", str(path), "--data.version_2", "true",
                     "--model.null_threshold=-1e9", "--trainer.max_epochs", "1", "--data.cache_dir", "null",
                     "--run_dir", str(run_dir), "--wandb", "false", *QUIET]) == 0
    scores = metrics(run_dir, "fit")
    assert scores["val/questions"] == 104
    assert scores["val/exact_match"] == scores["val/f1"] == pytest.approx(100 * 2 / 104)
    assert torch.load(checkpoint(run_dir), weights_only=True)["task"]["settings"] == {"version_2": True}


def test_ddp_validation_equals_one_process(tmp_path):
    """Two processes train and validate: each predicts part of the windows (a question's windows may be split
    between them), gathers all logits, and scores a disjoint half of the questions; the summed EM / F1 equal what
    one process computes from the same checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "run.py", "qa", "fit", "--trainer.max_epochs", "2", "--model.lr", "3e-3",
                           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                           "--data.cache_dir", str(tmp_path / "cache"), "--run_dir", str(tmp_path / "ddp"), *QUIET],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.main(["qa", "validate", "--ckpt_path", checkpoint(tmp_path / "ddp"), "--run_dir", str(tmp_path / "one"),
                     "--data.cache_dir", "null", *QUIET]) == 0
    ddp, one = metrics(tmp_path / "ddp", "fit"), metrics(tmp_path / "one", "validate")
    assert one["val/questions"] == 104 and one["val/f1"] > 0
    for key in ("val/exact_match", "val/f1", "val/questions"):
        assert ddp[key] == pytest.approx(one[key], abs=1e-9), key


# --------------------------------------------------------------------------- bad input

def pharmacy_changed(tmp_path, change) -> str:
    """The fixture with its Pharmacy article's third paragraph changed."""
    raw = json.loads(SAMPLE.read_text())
    change(raw["data"][1]["paragraphs"][2])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


def malformed(tmp_path) -> str:
    text = SAMPLE.read_text()
    cut = text.index('"5726db5add62a815002e92d6"')    # a Pharmacy question's id loses its opening quote
    path = tmp_path / "bad.json"
    path.write_text(text[:cut] + text[cut + 1:])
    return str(path)


def shift_answer(paragraph) -> None:
    paragraph["qas"][0]["answers"][1]["answer_start"] += 1


@pytest.mark.parametrize("make_bad,expected", [
    (malformed, "not valid JSON: "),
    (lambda tmp: pharmacy_changed(tmp, lambda p: p["qas"][1].pop("id")), "(no id): a question without 'id'"),
    (lambda tmp: pharmacy_changed(tmp, shift_answer), "answer 2: answer_start"),
    (lambda tmp: pharmacy_changed(tmp, lambda p: p.update(context="  ")), "empty context"),
], ids=["malformed_json", "question_without_id", "answer_start_mismatch", "empty_context"])
def test_bad_input_is_one_line_naming_article_and_question(tmp_path, capsys, make_bad, expected):
    bad = make_bad(tmp_path)
    run_dir = tmp_path / "run"
    assert run.main(["qa", "fit", "--data.split_file", bad, "--run_dir", str(run_dir), "--wandb", "false",
                     *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"run.py qa: error: {bad}"), err
    assert "article 1 ('Pharmacy')" in err[0] and expected in err[0]
    assert "question" in err[0]
    assert not run_dir.exists() and not list(tmp_path.rglob("*.ckpt"))


def test_bad_input_predict_file_writes_nothing(trained, tmp_path, capsys):
    bad = tmp_path / "questions.jsonl"
    bad.write_text(PREDICT.read_text().splitlines()[0] + "\n" + '{"question": "Who?", "context": ""}\n')
    out = tmp_path / "answers.jsonl"
    assert run.main(["qa", "predict", "--ckpt_path", checkpoint(trained), "--data.predict_file", str(bad),
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "run"), *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"run.py qa: error: {bad}, line 2: no 'context' text"]
    assert not out.exists() and not (tmp_path / "run").exists()
