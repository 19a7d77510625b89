"""Classification end to end through run.py, with a tiny random BERT on fixtures: bad inputs stop the run
before any checkpoint, a mid-epoch resume ends where an uninterrupted run ends, DDP on 2 CPU processes gives
the same validation metric as 1 process, predict writes one JSON line per input."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import run
from conftest import FIXTURES, ROOT

TOKENIZER = str(ROOT / "data" / "samples" / "sst2" / "tokenizer.json")
TINY_BERT = ('{"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_size": 64, "max_positions": 128, '
             '"dropout": 0.0, "attention_dropout": 0.0}')


def tiny_args(run_dir, *extra, train=FIXTURES / "sst2_train.tsv", val=FIXTURES / "sst2_dev.tsv"):
    return ["classify", "fit", "--config", str(ROOT / "configs" / "classify" / "default.yaml"),
            "--data.train_file", str(train), "--data.val_file", str(val), "--data.tokenizer", TOKENIZER,
            "--data.batch_size", "8", "--data.eval_batch_size", "8", "--data.cache_dir", str(run_dir.parent / "cache"),
            "--model.config", TINY_BERT, "--model.classifier_dropout", "0", "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--wandb", "false", "--run_dir", str(run_dir), *extra]


def summary(run_dir, sub="fit"):
    return json.loads((run_dir / f"{sub}_metrics.json").read_text())


@pytest.mark.parametrize("case, content, message", [
    ("missing file", None, "file not found"),
    ("empty file", "", "file is empty"),
    ("missing column", "text\tlabel\ngood\t1\n", "no column 'sentence'"),
    ("label outside set", "sentence\tlabel\ngood\t1\nbad\t0\nodd\t7\n", "line 4: label '7' is not in the label set"),
    ("malformed row", "sentence\tlabel\ngood\t1\nbad\t0\textra\n", "line 3: expected 2 tab-separated fields"),
])
def test_bad_input_one_clear_error_and_no_checkpoint(tmp_path, capsys, case, content, message):
    bad = tmp_path / "train.tsv"
    if content is not None:
        bad.write_text(content)
    run_dir = tmp_path / "run"
    code = run.main(tiny_args(run_dir, "--data.labels", '["0", "1"]', train=bad))    # a closed set: 7 is outside
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run.py classify: error:")]
    assert code != 0
    assert len(err) == 1 and str(bad) in err[0] and message in err[0], err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resume_mid_epoch_ends_like_an_uninterrupted_run(tmp_path):
    """A run stopped by max_steps mid-epoch resumes from last.ckpt to the uninterrupted run's step and metrics.
    (max_steps also sets the learning-rate schedule's length unless model.decay_steps pins it: both runs pin it.)"""
    schedule = ("--model.decay_steps", "12")
    full = tmp_path / "full"  # 48 examples / 8 = 6 steps an epoch, 2 epochs
    assert run.main(tiny_args(full, *schedule)) == 0
    resumed = tmp_path / "resumed"
    assert run.main(tiny_args(resumed, *schedule, "--trainer.max_steps", "4")) == 0
    mid = resumed / "checkpoints" / "last.ckpt"
    start = torch.load(mid, weights_only=True)
    assert start["global_step"] == 4
    assert run.main(tiny_args(resumed, *schedule, "--ckpt_path", "last")) == 0
    a, b = summary(full), summary(resumed)
    assert a["global_step"] == b["global_step"] == 12
    for key in ("val/accuracy", "val/loss", "val/f1", "val/mcc"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6), key
    # the resumed run did train: its weights moved from the step-4 checkpoint to the same final weights
    final_a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    final_b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert final_a["global_step"] == final_b["global_step"] == 12          # last.ckpt holds the final step
    key = "head.weight"
    assert torch.allclose(final_a["state_dict"][key], final_b["state_dict"][key], atol=1e-6)
    assert not torch.allclose(start["state_dict"][key], final_b["state_dict"][key])

    # `--ckpt_path last` continues the latest run of that name: nothing left to do after 2 epochs but 1 more
    again = tiny_args(full, "--ckpt_path", "last", "--trainer.max_epochs", "3")
    assert run.main(again) == 0
    assert summary(full)["global_step"] == 18


def test_predict_writes_one_json_line_per_input(tmp_path, monkeypatch):
    monkeypatch.setenv("NLP_ALLOW_EMULATED_BF16", "1")          # the bf16 path, also on CPUs that emulate bf16
    fit_dir = tmp_path / "fit"  # trained with bf16 autocast, gradient clipping and fused AdamW, as the SST-2 config
    assert run.main(tiny_args(fit_dir, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed",
                              "--trainer.gradient_clip_val", "1.0")) == 0
    ckpt = fit_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "pred.jsonl"
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"sentence": "a great movie"}\n{"sentence": "dull , dull , dull"}\n{"sentence": "ok"}\n')
    # no --config: only the checkpoint and the input file
    code = run.main(["classify", "predict", "--ckpt_path", str(ckpt), "--data.predict_file", str(inputs),
                     "--data.cache_dir", "null", "--predict_output", str(out), "--run_dir", str(tmp_path / "p"),
                     "--trainer.enable_progress_bar", "false"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["sentence"] for r in rows] == ["a great movie", "dull , dull , dull", "ok"]
    for r in rows:
        assert r["label"] in ("0", "1") and set(r["probabilities"]) == {"0", "1"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


def test_ddp_two_processes_give_the_same_validation_metric_as_one(tmp_path):
    """33 validation sentences: not divisible by 2 processes, so a DistributedSampler would repeat one. The
    evaluation sampler shards without repeating, and torchmetrics sums counts across processes: exact."""
    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "run.py"), *tiny_args(ddp_dir, "--trainer.max_epochs", "1",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = summary(ddp_dir)
    single_dir = tmp_path / "single"
    assert run.main(["classify", "validate", "--ckpt_path", str(ddp_dir / "checkpoints" / "last.ckpt"),
                     "--data.val_file", str(FIXTURES / "sst2_dev.tsv"), "--data.cache_dir", "null",
                     "--run_dir", str(single_dir), "--trainer.enable_progress_bar", "false"]) == 0
    single = summary(single_dir, "validate")
    for key in ("val/accuracy", "val/f1", "val/mcc"):
        assert ddp["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-6), key
    # 33 examples: accuracy is k/33 for an integer k (a repeated example would break that)
    k = ddp["metrics"]["val/accuracy"] * 33
    assert abs(k - round(k)) < 1e-4


def test_regression_on_sentence_pairs(tmp_path):
    """STS-B style: float targets, MSE loss, Pearson / Spearman; JSON-lines input with a pair column."""
    rows = [("a man is playing a guitar", "a man plays the guitar", 4.8), ("a dog runs", "a cat sleeps", 0.4),
            ("the film was great", "the movie was very good", 4.1), ("rain today", "sunny all week", 0.9),
            ("kids play football", "children are playing soccer", 4.4), ("he cooks", "she drives a car", 0.2)] * 4
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps({"s1": a, "s2": b, "score": y}) + "\n" for a, b, y in rows))
    run_dir = tmp_path / "run"
    args = tiny_args(run_dir, "--data.text_column", "s1", "--data.text_pair_column", "s2", "--data.label_column",
                     "score", "--data.regression", "true", "--data.labels", "null", "--model.metric", "spearman",
                     "--trainer.max_epochs", "1", train=path, val=path)
    assert run.main(args) == 0
    metrics = summary(run_dir)["metrics"]
    assert -1.0 <= metrics["val/pearson"] <= 1.0 and -1.0 <= metrics["val/spearman"] <= 1.0
    assert "val/accuracy" not in metrics
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["task"]["settings"]["regression"] is True


def test_pair_pooling_compares_the_two_segments(tmp_path, capsys):
    """pooling pair: [u, v, |u - v|, u * v] of the two segments' means after joint encoding (head 4x wide)."""
    from tasks.classify import masked_mean
    h = torch.arange(24, dtype=torch.float32).view(1, 4, 6)
    assert torch.equal(masked_mean(h, torch.tensor([[1, 1, 0, 0]])), h[0, :2].mean(0, keepdim=True))
    run_dir = tmp_path / "pair"
    rte = FIXTURES / "rte_dev.tsv"
    args = tiny_args(run_dir, "--data.text_column", "sentence1", "--data.text_pair_column", "sentence2",
                     "--model.pooling", "pair", "--trainer.max_epochs", "1", train=rte, val=rte)
    assert run.main(args) == 0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["head.weight"].shape == (2, 4 * 32)
    assert 0.0 <= summary(run_dir)["metrics"]["val/accuracy"] <= 1.0
    single = tiny_args(tmp_path / "single", "--model.pooling", "pair")
    assert run.main(single) == 2
    assert "data.text_pair_column" in capsys.readouterr().err
    assert not list((tmp_path / "single").rglob("*.ckpt"))


def test_layer_decay_gives_lower_layers_smaller_learning_rates(tmp_path):
    run_dir = tmp_path / "run"
    assert run.main(tiny_args(run_dir, "--model.layer_decay", "0.5", "--model.lr", "1e-3", "--model.warmup_ratio",
                              "0", "--model.schedule", "constant", "--trainer.max_epochs", "1")) == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    lrs = {g["name"]: g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert lrs["head"] == lrs["layer0"] == pytest.approx(1e-3)      # one layer: the top trains at lr
    assert lrs["embeddings"] == pytest.approx(5e-4)                 # the embeddings one step below
    assert lrs["head.no_decay"] == lrs["head"] and lrs["embeddings.no_decay"] == lrs["embeddings"]
    code = run.main(tiny_args(tmp_path / "bad", "--model.layer_decay", "1.5"))
    assert code == 2 and not list((tmp_path / "bad").rglob("*.ckpt"))


def test_freeze_depth_holds_the_bottom_of_the_encoder_at_its_initial_weights(tmp_path):
    """The same seed builds the same initial weights, so a frozen level ends every run equal to the other runs'
    frozen copy and unlike the run that trained it; the optimizer never sees it."""
    def fit(depth):
        run_dir = tmp_path / f"depth{depth}"
        assert run.main(tiny_args(run_dir, "--model.freeze_depth", str(depth), "--model.lr", "1e-3",
                                  "--trainer.max_epochs", "1")) == 0
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        return ckpt["state_dict"], {g["name"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    (trained, groups0), (frozen1, groups1), (frozen2, groups2) = fit(0), fit(1), fit(2)
    embedding, layer = "bert.embeddings.token.weight", "bert.layers.0.self_attn.qkv_proj.weight"
    assert embedding in trained and layer in trained
    assert torch.equal(frozen1[embedding], frozen2[embedding]) and not torch.equal(trained[embedding], frozen1[embedding])
    assert not torch.equal(trained[layer], frozen1[layer]) and not torch.equal(frozen1[layer], frozen2[layer])
    assert {"embeddings", "layer0"} <= groups0 and "embeddings" not in groups1 and "layer0" in groups1
    assert not {"embeddings", "layer0"} & groups2 and "head" in groups2
    code = run.main(tiny_args(tmp_path / "bad", "--model.freeze_depth", "3"))     # embeddings + 1 layer: 2 levels
    assert code == 2 and not list((tmp_path / "bad").rglob("*.ckpt"))


def test_last_checkpoint_is_the_final_model_and_predict_reproduces_its_dev_accuracy(tmp_path):
    """After a multi-epoch fit, last.ckpt holds the final step, and predicting the dev file from it gives exactly the
    dev accuracy the fit reported for its final model (a stale last.ckpt would not)."""
    run_dir = tmp_path / "fit"
    assert run.main(tiny_args(run_dir, "--trainer.max_epochs", "3")) == 0
    fit = summary(run_dir)
    assert fit["global_step"] == 18
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 18
    out = tmp_path / "pred.jsonl"
    assert run.main(["classify", "predict", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                     "--data.predict_file", str(FIXTURES / "sst2_dev.tsv"), "--data.cache_dir", "null",
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "p"),
                     "--trainer.enable_progress_bar", "false"]) == 0
    gold = [line.split("\t")[1] for line in (FIXTURES / "sst2_dev.tsv").read_text().splitlines()[1:]]
    predicted = [json.loads(line)["label"] for line in out.read_text().splitlines()]
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(gold)
    assert len(predicted) == len(gold) and accuracy == pytest.approx(fit["metrics"]["val/accuracy"], abs=1e-6)


def test_own_data_as_the_readme_says_trains_and_predicts_from_the_checkpoint_alone(tmp_path):
    """README "Your own data": other columns, star ratings as labels. The embedded default config fixes no label set,
    so the classes are the training file's, and `predict` takes them from the checkpoint."""
    rows = [("a great film", 5), ("dull and long", 1), ("fine", 4), ("not bad", 4), ("awful", 2), ("superb", 5)]
    (tmp_path / "my.tsv").write_text("review\tstars\n" + "".join(f"{t}\t{s}\n" for t, s in rows))
    (tmp_path / "todo.jsonl").write_text('{"review": "great"}\n{"review": "awful film"}\n')
    run_dir = str(tmp_path / "run")
    common = ["--data.tokenizer", TOKENIZER, "--model.config", TINY_BERT, "--wandb", "false", "--run_dir", run_dir,
              "--trainer.enable_progress_bar", "false"]
    assert run.main(["classify", "fit", "--data.train_file", str(tmp_path / "my.tsv"), "--data.val_file",
                     str(tmp_path / "my.tsv"), "--data.text_column", "review", "--data.label_column", "stars",
                     "--trainer.max_steps", "2", *common]) == 0
    assert torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=True)["task"]["labels"] == \
        ["1", "2", "4", "5"]
    assert run.main(["classify", "predict", "--ckpt_path", "last", "--data.predict_file", str(tmp_path / "todo.jsonl"),
                     "--data.text_column", "review", *common]) == 0
    predictions = [json.loads(line) for line in (Path(run_dir) / "predictions.jsonl").read_text().splitlines()]
    assert [p["review"] for p in predictions] == ["great", "awful film"]
    assert all(p["label"] in ("1", "2", "4", "5") and set(p["probabilities"]) == {"1", "2", "4", "5"}
               for p in predictions)


def test_a_pair_model_refuses_single_sentences_and_a_single_sentence_model_pairs(tmp_path, capsys):
    """Scoring a sentence-pair model on its first sentences alone (or the reverse) would print numbers for inputs
    the model never saw: each is one line naming data.text_pair_column."""
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a\tb\tlabel\n" + "".join(f"first {i}\tsecond {i}\t{i % 2}\n" for i in range(16)))
    for name, extra in (("pair", ["--data.text_pair_column", "b"]), ("single", [])):
        assert run.main(tiny_args(tmp_path / name, "--data.text_column", "a", *extra, "--trainer.max_steps", "1",
                                  train=pairs, val=pairs)) == 0
    for name, extra, message in (
            ("pair", [], "the model was trained on sentence pairs: set data.text_pair_column"),
            ("single", ["--data.text_pair_column", "b"],
             "trained on single sentences: remove data.text_pair_column b")):
        capsys.readouterr()
        assert run.main(["classify", "predict", "--ckpt_path", str(tmp_path / name / "checkpoints" / "last.ckpt"),
                         "--data.predict_file", str(pairs), "--data.text_column", "a", *extra, "--wandb", "false",
                         "--run_dir", str(tmp_path / f"{name}_predict")]) == 2
        assert message in capsys.readouterr().err
