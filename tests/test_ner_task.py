"""NERTask through run.py: fit on the fixture, checkpoint contents, predict on plain text, errors (issue 4)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, ROOT
from ner_helpers import tiny_bert_dir

import run
from data.conll import CASING, CoNLLDataModule
from tasks.ner import NERTask


def built(pretrained, labels=("O", "B-PER", "I-PER"), **kwargs) -> NERTask:
    """A NERTask built for a new run, as `configure_model` does, on the fixture's training file."""
    data = CoNLLDataModule(train_file=str(FIXTURES / "conll_train.txt"), labels=list(labels))
    data.setup("fit")
    task = NERTask(pretrained=str(pretrained), **kwargs)
    task.blueprint = task.create(data)
    return task


pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The default config (2-layer BERT over the fixture vocabulary) trained long enough to tag entities."""
    run_dir = tmp_path_factory.mktemp("ner_fit")
    code = run.main(["ner", "fit", "--wandb", "false", "--trainer.max_epochs", "10", "--model.lr", "3e-3", "--run_dir", str(run_dir),
                     "--trainer.enable_progress_bar", "false"])
    assert code == 0
    return run_dir


def test_fit_writes_checkpoint_with_labels_and_tokenizer(trained):
    summary = json.loads((trained / "fit_metrics.json").read_text())
    assert summary["metrics"]["train/loss"] < 0.5
    assert 0.0 < summary["metrics"]["val/f1"] <= 1.0         # learnt something on 110 sentences
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["task"]["task"] == "ner"
    assert ckpt["task"]["labels"] == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert "[CLS]" in ckpt["task"]["tokenizer"]
    assert ckpt["task"]["model_config"]["num_layers"] == 2


def test_predict_plain_text_writes_entities_json(trained, tmp_path):
    text = tmp_path / "in.txt"
    lines = ["EU rejects German call to boycott British lamb.", "Peter Blackburn", "", "BRUSSELS 1996-08-22",
             "Germany's representative to the European Union's veterinary committee Werner Zwingmann said on "
             "Wednesday consumers should buy sheepmeat from countries other than Britain until the scientific "
             "advice was clearer."]
    text.write_text("\n".join(lines) + "\n")
    out = tmp_path / "entities.jsonl"
    # only the checkpoint: the config's tokenizer is not even needed, the checkpoint carries its own
    code = run.main(["ner", "predict", "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                     "--data.predict_file", str(text), "--data.tokenizer", "null", "--data.train_file", "null",
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "pred")])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == lines                  # one row per input line, in order
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5] and rows[2]["entities"] == []   # the blank line: empty
    found = [e for r in rows for e in r["entities"]]
    assert found, "the trained model tags entities on sentences it was trained on"
    for r in rows:
        for e in r["entities"]:
            assert r["text"][e["start"]:e["end"]] == e["text"]
            assert e["type"] in {"PER", "ORG", "LOC", "MISC"}
    first = {e["text"] for e in rows[0]["entities"]}
    assert {"German", "British"} <= first                              # MISC in the training data


def test_test_subcommand_scores_with_checkpoint(trained, tmp_path):
    code = run.main(["ner", "test", "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                     "--run_dir", str(tmp_path / "test")])
    assert code == 0
    metrics = json.loads((tmp_path / "test" / "test_metrics.json").read_text())["metrics"]
    assert {"test/f1", "test/precision", "test/recall", "test/f1_PER", "test/truncated_words"} <= set(metrics)


def test_malformed_file_is_one_line_error_and_no_checkpoint(tmp_path):
    bad = tmp_path / "bad.txt"
    lines = (FIXTURES / "conll_train.txt").read_text().splitlines()
    lines[5] = "rejects VBZ B-VP"                                   # 3 columns where the file has 4
    bad.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "run.py", "ner", "fit", "--data.train_file", str(bad),
                           "--run_dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                          env={"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    err = [line for line in proc.stderr.splitlines() if "error" in line]
    assert err == [f"run.py ner: error: {bad}, line 6: expected 4 columns like the file's first line, "
                   f"got 3: 'rejects VBZ B-VP'"]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_casing_segments_start_as_the_pretrained_model(tmp_path):
    directory = tiny_bert_dir(tmp_path)
    plain = built(directory).eval()
    cased = built(directory, casing=True).eval()
    cased.head.load_state_dict(plain.head.state_dict())
    assert cased.bert.embeddings.segment.num_embeddings == len(CASING)
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    casing = torch.randint(0, len(CASING), (2, 7))
    torch.testing.assert_close(cased(ids, mask, casing), plain(ids, mask, casing))


@pytest.mark.parametrize("layers", ["embeddings", "last", "concat_last_four"])
def test_feature_mode_freezes_the_encoder(tmp_path, layers):
    directory = tiny_bert_dir(tmp_path, num_layers=4)
    task = built(directory, mode="features", layers=layers, tagger="bilstm", lstm_hidden=8)
    task.train()
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    logits = task(ids, mask)
    assert logits.shape == (2, 7, 3)
    logits.sum().backward()
    assert all(p.grad is None for p in task.bert.parameters())
    assert all(p.grad is not None for p in task.head.parameters())
    want = 4 * 32 if layers == "concat_last_four" else 32
    assert task.head.lstm.input_size == want


def test_fine_tune_from_our_own_checkpoint(trained, tmp_path):
    """model.pretrained may be one of our .ckpt files: its encoder weights and tokenizer are reused."""
    ckpt = trained / "checkpoints" / "last.ckpt"
    task = built(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.testing.assert_close(task.bert.embeddings.token.weight, saved["state_dict"]["bert.embeddings.token.weight"])
    assert task.blueprint.tokenizer == saved["task"]["tokenizer"]        # the data reads text as the encoder learnt it


def test_ddp_fit_validation_equals_one_process(tmp_path):
    """Two processes train (Lightning shards the windows) and validate: each predicts part of the windows,
    all-gathers them, scores a disjoint part of the sentences; EntityF1's summed counts then equal what one
    process computes from the same checkpoint."""
    import os
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "run.py", "ner", "fit", "--trainer.max_epochs", "8", "--model.lr", "3e-3",
                           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                           "--run_dir", str(tmp_path / "ddp"), "--trainer.enable_progress_bar", "false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.main(["ner", "validate", "--ckpt_path", str(tmp_path / "ddp" / "checkpoints" / "last.ckpt"),
                     "--run_dir", str(tmp_path / "one"), "--trainer.enable_progress_bar", "false"]) == 0
    ddp = json.loads((tmp_path / "ddp" / "fit_metrics.json").read_text())["metrics"]
    one = json.loads((tmp_path / "one" / "validate_metrics.json").read_text())["metrics"]
    assert one["val/f1"] > 0
    for key, value in one.items():
        assert ddp[key] == pytest.approx(value, abs=1e-9), key


def test_entity_f1_equals_seqeval_on_the_tiny_models_predictions(trained):
    """Real predictions of a trained model (the tiny one) for the fixture's dev sentences, in both modes."""
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    from data.conll import read_conll
    from tasks.ner import tag_conll_file
    from tasks.seqeval_metric import EntityF1
    gold = [s.tags for s in read_conll(FIXTURES / "conll_valid.txt")]
    pred = tag_conll_file(trained / "checkpoints" / "last.ckpt", FIXTURES / "conll_valid.txt")
    assert [len(p) for p in pred] == [len(g) for g in gold] and pred != gold
    assert any(t != "O" for p in pred for t in p)
    for strict, kwargs in ((False, {}), (True, {"mode": "strict", "scheme": IOB2})):
        metric = EntityF1(["LOC", "MISC", "ORG", "PER"], strict=strict)
        metric.update(pred, gold)
        assert metric.compute()["f1"] == pytest.approx(f1_score(gold, pred, **kwargs), abs=1e-12)
