"""PretrainTask through run.py on the fixture corpus (issue 15): fit, predict from the checkpoint alone, the metrics
against a hand computation, exact mid-epoch resume, DDP validation equal to one process, the hand-off to classify,
Hugging Face export parity, continuing a checkpoint (new heads named), and bad input as one line."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES, ROOT, require_shared

import run
from data.pretrain import IGNORE_INDEX, PretrainDataModule
from modeling.hf import save_bert
from tasks.encoders import load_encoder
from tasks.pretrain import PretrainTask, pretraining_logits, pretraining_loss, weights_report

CORPUS = [str(FIXTURES / "pretrain_wikitext.txt"), str(FIXTURES / "tinyshakespeare_head.txt"),
          {"path": str(FIXTURES / "pretrain_aeslc.jsonl"), "text_key": "email"}]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--wandb", "false"]


def fit_args(run_dir, *extra) -> list[str]:
    """The embedded default (tiny BERT, fixture corpus), its vocabulary cached beside the run."""
    return ["pretrain", "fit", "--run_dir", str(run_dir), "--data.cache_dir", str(run_dir.parent / "cache"),
            *QUIET, *extra]


def summary(run_dir, sub="fit") -> dict:
    return json.loads((run_dir / f"{sub}_metrics.json").read_text())


def data_module(cache_dir, **kwargs) -> PretrainDataModule:
    """The default config's data settings."""
    settings = dict(files=CORPUS, heldout=0.1, vocab_size=1000, max_length=64, batch_size=16, eval_batch_size=64,
                    cache_dir=str(cache_dir))
    return PretrainDataModule(**{**settings, **kwargs})


pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The default config fit (2 epochs of about 40 steps): its run directory."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "fit"
    assert run.main(fit_args(run_dir)) == 0
    return run_dir


def restored(run_dir) -> tuple[PretrainTask, PretrainDataModule]:
    """The model of a run's last.ckpt and the default data read with its tokenizer."""
    model = PretrainTask.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    data = data_module(run_dir.parent / "cache")
    data.adopt(model.blueprint)
    data.setup("validate")
    return model, data


# --- fit and predict -------------------------------------------------------------------------------------
def test_fit_learns_and_the_checkpoint_carries_the_trained_vocabulary(trained):
    # The WordPiece vocabulary differs a little from process to process (tokenizers breaks ties between equal merges
    # by hash-map order), so the numbers do too: over 8 hash seeds the epochs ended at 6.44-6.48 and 6.31-6.34.
    metrics = summary(trained)["metrics"]
    assert metrics["val/mlm_loss"] < math.log(1000) - 0.4            # well below a uniform guess over 1,000 pieces
    logged = [row for row in csv.DictReader(next(trained.rglob("metrics.csv")).open()) if row.get("val/mlm_loss")]
    per_epoch = [float(row["val/mlm_loss"]) for row in logged]
    assert len(per_epoch) == 2 and per_epoch[1] < per_epoch[0] - 0.05     # and the second epoch still learns
    assert metrics["val/mlm_ppl"] == pytest.approx(torch.exp(torch.tensor(metrics["val/mlm_loss"])).item(), rel=1e-5)
    for key in ("val/mlm_acc", "val/nsp_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["task"]["task"] == "pretrain" and ckpt["task"]["model_config"]["vocab_size"] == 1000
    cached = list((trained.parent / "cache").glob("wordpiece-*.json"))
    assert len(cached) == 1 and cached[0].read_text() == ckpt["task"]["tokenizer"]
    assert {"bert.mlm_head.dense.weight", "bert.nsp_head.weight", "bert.pooler.weight"} <= set(ckpt["state_dict"])


def test_predict_fills_every_mask_from_the_checkpoint_alone(trained, tmp_path):
    out = tmp_path / "pred.jsonl"
    assert run.main(["pretrain", "predict", "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                     "--data.top_k", "3", "--predict_output", str(out), "--run_dir", str(tmp_path / "p"),
                     "--trainer.enable_progress_bar", "false"]) == 0
    lines = (FIXTURES / "pretrain_predict.txt").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == lines and [r["line"] for r in rows] == list(range(1, len(lines) + 1))
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for line, row in zip(lines, rows):
        assert len(row["masks"]) == line.count("[MASK]")
        for mask in row["masks"]:
            ps = [f["p"] for f in mask["fillers"]]
            assert len(ps) == 3 and ps == sorted(ps, reverse=True) and 0 < sum(ps) <= 1
            assert not specials & {f["token"] for f in mask["fillers"]}
        assert "[MASK]" not in row["filled"] and row["filled"].count("\t") == line.count("\t")
        assert ("is_next" in row) == ("\t" in line)
    assert rows[2] == {"line": 3, "text": "", "masks": [], "filled": ""}            # the empty line
    assert 0.0 <= rows[3]["is_next"] <= 1.0


# --- metrics ---------------------------------------------------------------------------------------------
def test_validation_metrics_equal_a_hand_computation(trained, tmp_path):
    """`pretrain validate` against full-vocabulary logits at every position, scored by hand at the chosen ones."""
    assert run.main(["pretrain", "validate", "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                     "--data.cache_dir", str(trained.parent / "cache"), "--run_dir", str(tmp_path / "v"),
                     "--trainer.enable_progress_bar", "false"]) == 0
    logged = summary(tmp_path / "v", "validate")["metrics"]
    model, data = restored(trained)
    nll, hits, tokens, nsp_hits, pairs = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            out = model.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            logits = model.bert.mlm_head(out.last_hidden_state)                       # (B, T, V)
            chosen = batch["mlm_labels"] != IGNORE_INDEX
            targets = batch["mlm_labels"][chosen]
            nll -= logits.log_softmax(-1)[chosen].gather(1, targets[:, None]).sum().item()
            hits += (logits.argmax(-1)[chosen] == targets).sum().item()
            tokens += chosen.sum().item()
            nsp_hits += (model.bert.nsp_head(out.pooled).argmax(-1) == batch["nsp_labels"]).sum().item()
            pairs += len(batch["nsp_labels"])
    assert tokens > 200 and pairs == len(data.examples("val"))
    assert logged["val/mlm_acc"] == pytest.approx(hits / tokens, abs=1e-6)
    assert logged["val/mlm_loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert logged["val/nsp_acc"] == pytest.approx(nsp_hits / pairs, abs=1e-6)


def test_masks_depend_only_on_seed_epoch_and_example(tmp_path):
    data = data_module(tmp_path)
    data.setup("fit")
    data.default_tokenizer(None, None)
    first, again, later = data.examples("train", 0), data.examples("train", 0), data.examples("train", 1)
    assert all(torch.equal(first[i]["mlm_labels"], again[i]["mlm_labels"]) for i in range(len(first)))
    assert [e["input_ids"] for e in first.examples] != [e["input_ids"] for e in later.examples]   # new pairs
    # in whatever batch or worker an example lands, its mask is the same
    by_index = {i: first[i]["input_ids"] for i in range(len(first))}
    loader = torch.utils.data.DataLoader(first, batch_size=None, sampler=range(len(first) - 1, -1, -1), num_workers=2)
    assert all(torch.equal(row["input_ids"], by_index[i]) for i, row in zip(range(len(first) - 1, -1, -1), loader))


def test_the_vocabulary_is_trained_once_and_cached(tmp_path, monkeypatch):
    data = data_module(tmp_path)
    data.setup("fit")
    data.default_tokenizer(None, None)
    monkeypatch.setattr("data.pretrain.train_wordpiece", lambda *a, **k: pytest.fail("trained again"))
    again = data_module(tmp_path)
    again.default_tokenizer(None, None)
    assert again.tokenizer_json() == data.tokenizer_json()
    with pytest.raises(pytest.fail.Exception, match="trained again"):        # other settings: another vocabulary
        data_module(tmp_path, vocab_size=900).default_tokenizer(None, None)


# --- resume and DDP ----------------------------------------------------------------------------------------
def test_resume_mid_epoch_ends_like_an_uninterrupted_run(tmp_path):
    """Stopped at step 55 of 2 epochs (about 40 steps each), inside epoch 1 with its new pairs, and resumed from
    last.ckpt: the same final weights and metrics as one uninterrupted run (masks and pairs depend on (seed, epoch)
    only)."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run.main(fit_args(full, "--model.decay_steps", "100")) == 0
    assert run.main(fit_args(resumed, "--model.decay_steps", "100", "--trainer.max_steps", "55")) == 0
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 55
    assert run.main(fit_args(resumed, "--model.decay_steps", "100", "--ckpt_path", "last")) == 0
    a, b = summary(full), summary(resumed)
    assert a["global_step"] == b["global_step"] > 60
    for key in ("val/mlm_loss", "val/mlm_acc", "val/nsp_acc"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), key
    weights_a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    weights_b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.allclose(weights_a[k], weights_b[k], atol=1e-6) for k in weights_a)


def test_ddp_two_processes_give_the_same_validation_metrics_as_one(tmp_path):
    """About 53 held-out pairs: an odd number would show a repeated or dropped example. The vocabulary is trained
    by process 0 and sent to process 1 (no cache yet)."""
    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "run.py"), *fit_args(ddp_dir, "--trainer.max_epochs", "1", "--trainer.strategy",
           "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single_dir = tmp_path / "single"
    assert run.main(["pretrain", "validate", "--ckpt_path", str(ddp_dir / "checkpoints" / "last.ckpt"),
                     "--data.cache_dir", str(tmp_path / "other_cache"), "--run_dir", str(single_dir),
                     "--trainer.enable_progress_bar", "false"]) == 0
    ddp, single = summary(ddp_dir)["metrics"], summary(single_dir, "validate")["metrics"]
    for key in ("val/mlm_acc", "val/nsp_acc"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    for key in ("val/mlm_loss", "val/nsp_loss"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5), key
    _, data = restored(ddp_dir)
    pairs = len(data.examples("val"))
    k = ddp["val/nsp_acc"] * pairs                          # k of the pairs right: each counted exactly once
    assert abs(k - round(k)) < 1e-4


# --- hand-off ----------------------------------------------------------------------------------------------
def test_the_encoder_starts_a_classify_run(trained, tmp_path):
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    bert, tokenizer_json = load_encoder(str(trained / "checkpoints" / "last.ckpt"), pooler=True)
    assert tokenizer_json == ckpt["task"]["tokenizer"] and bert.mlm_head is None
    for key, value in bert.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"]["bert." + key]), key
    tokenizer = tmp_path / "tokenizer.json"                   # classify reads the vocabulary from data.tokenizer
    tokenizer.write_text(tokenizer_json)
    run_dir = tmp_path / "classify"
    assert run.main(["classify", "fit", "--model.pretrained", str(trained / "checkpoints" / "last.ckpt"),
                     "--model.config", "null", "--model.lr", "1e-9", "--trainer.max_steps", "1",
                     "--data.tokenizer", str(tokenizer), "--data.max_length", "64", "--data.cache_dir", "null",
                     "--data.train_file", str(FIXTURES / "sst2_train.tsv"), "--data.val_file",
                     str(FIXTURES / "sst2_dev.tsv"), "--run_dir", str(run_dir), *QUIET]) == 0
    tuned = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    key = "bert.layers.1.ffn.up.weight"                        # one step at lr 1e-9: still the pretrained weights
    assert torch.allclose(tuned[key], ckpt["state_dict"][key], atol=1e-6)


def test_export_gives_bert_for_pretraining_the_same_outputs(trained, tmp_path):
    from transformers import BertForPreTraining
    model, data = restored(trained)
    bert, _ = load_encoder(str(trained / "checkpoints" / "last.ckpt"), pooler=True, pretraining_heads=True)
    hf = BertForPreTraining.from_pretrained(save_bert(bert.eval(), tmp_path / "hf")).eval()
    batch = next(iter(data.val_dataloader()))
    with torch.no_grad():
        ours = model.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        theirs = hf(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                    attention_mask=batch["attention_mask"], labels=batch["mlm_labels"],
                    next_sentence_label=batch["nsp_labels"])
        real = batch["attention_mask"].bool()
        assert torch.allclose(model.bert.mlm_logits(ours.last_hidden_state)[real], theirs.prediction_logits[real],
                              atol=1e-4)
        assert torch.allclose(model.bert.nsp_logits(ours.pooled), theirs.seq_relationship_logits, atol=1e-4)
        assert pretraining_loss(model.bert, batch).item() == pytest.approx(theirs.loss.item(), abs=1e-4)


# --- continuing ---------------------------------------------------------------------------------------------
def test_continuing_minilm_creates_the_heads_and_names_them(tmp_path):
    minilm = require_shared("models", "all-MiniLM-L6-v2")
    data = data_module(tmp_path)
    data.setup("fit")
    task = PretrainTask(pretrained=str(minilm))
    task.blueprint = task.create(data)
    assert data.tokenizer.get_vocab_size() == 30522                       # the checkpoint's own vocabulary
    assert task.bert.embeddings.token.weight is task.bert.mlm_head.word_embeddings.weight
    report = weights_report(task.bert, str(minilm))
    new = report.split("new (initialised): ")[1].split(";")[0].split(", ")
    assert sorted(new) == ["mlm_head.bias", "mlm_head.dense.bias", "mlm_head.dense.weight", "mlm_head.norm.bias",
                           "mlm_head.norm.weight", "nsp_head.bias", "nsp_head.weight"]
    assert "loaded 79 tensors: embeddings (5), layers.* (72), pooler (2)" in report


def test_continuing_our_checkpoint_loads_every_weight_and_freezing_trains_only_the_heads(trained, tmp_path):
    ckpt_path = trained / "checkpoints" / "last.ckpt"
    bert, _ = load_encoder(str(ckpt_path), pooler=True, pretraining_heads=True)
    assert "new (initialised): none" in weights_report(bert, str(ckpt_path))
    run_dir = tmp_path / "frozen"
    assert run.main(fit_args(run_dir, "--model.pretrained", str(ckpt_path), "--model.config", "null",
                             "--model.freeze_depth", "3", "--trainer.max_steps", "3")) == 0
    before = torch.load(ckpt_path, weights_only=True)["state_dict"]
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("bert.pooler.", "bert.mlm_head.", "bert.nsp_head.")) for k in changed)
    assert "bert.mlm_head.dense.weight" in changed and "bert.embeddings.token.weight" not in changed


# --- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, content, message", [
    ("empty corpus", "\n  \n", "corpus.txt: no text (the file is empty or blank)"),
    ("single document", "The first sentence. The second one.\nA third line.\n",
     "corpus.txt, line 1: the only document in the corpus; next-sentence prediction needs at least two"),
    ("short documents", "One line.\n\nAnother line.\n\nA third.\n",
     "corpus.txt, line 1, ...): no document has two sentences, so no IsNext pair exists"),
])
def test_bad_input_corpus_is_one_line_and_leaves_nothing(tmp_path, capsys, case, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(content)
    run_dir = tmp_path / "run"
    assert run.main(fit_args(run_dir, "--data.files", json.dumps([str(corpus)]))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run.py pretrain: error:")]
    assert len(err) == 1 and message in err[0], err
    assert not run_dir.exists()


def test_documents_shorter_than_two_sentences_are_partners_only(tmp_path):
    """The documented rule: a one-sentence document is never segment A but stays a NotNext partner."""
    short = tmp_path / "short.txt"
    short.write_text("Thou art a lobster.\n\nA lone line.\n")
    data = data_module(tmp_path, files=[*CORPUS, str(short)], heldout=0.1)
    data.setup("fit")
    data.default_tokenizer(None, None)
    tokenized = data.tokenized("train")
    lone = [i for i, doc in enumerate(tokenized) if doc.source.startswith(str(short))]
    examples = data.examples("train").examples
    assert len(lone) == 2 and all(len(tokenized[i].sentences) == 1 for i in lone)
    assert not any(e["doc_a"] in lone for e in examples)
    assert sum(e["nsp_label"] == 0 for e in examples) / len(examples) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("args, message", [
    (["--data.heldout", "1.5"], "data.heldout 1.5: must be a fraction in (0, 1) or a whole number of documents"),
    (["--data.mlm_probability", "0"], "data.mlm_probability 0.0: must be in (0, 1)"),
    (["--data.files", '[{"path": "x.txt", "key": "text"}]'], "data.files[0]: unknown key 'key'"),
    (["--data.max_length", "128"], "data.max_length 128 is longer than the model's 64 positions"),
    (["--model.head_lr", "1e-3"], "model.head_lr 0.001: every parameter of the pretrain model is in its encoder"),
    (["--model.config", "null"], "set model.pretrained (a BERT directory, hub name or one of our checkpoints) or model.config"),
])
def test_bad_input_settings_name_the_key(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    assert run.main(fit_args(run_dir, *args)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run.py pretrain: error:")]
    assert len(err) == 1 and message in err[0], err
    assert not run_dir.exists()
