"""`run.py translate` and `run.py summarize` (tasks/seq2seq.py + data/seq2seq.py's Seq2SeqDataModule) end to end on
Multi30k and AESLC fixtures with tiny models: fit, predict from the checkpoint alone, BLEU / ROUGE of the task's own
test output equal to sacrebleu / rouge-score, beam 1 equal to greedy, 2-process DDP validation equal to 1 process,
bad input stopping before anything is written; and the modeling pieces the task relies on (the cross-attention
keys and values projected once per batch, the label-smoothed loss that never holds all logits)."""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from conftest import FIXTURES, ROOT
from rouge_score import rouge_scorer

import data.seq2seq as seq2seq_data
import run
from data.seq2seq import Seq2SeqDataModule, read_parallel
from data.tokenization import tokenizer_from_str
from modeling import Transformer, TransformerConfig
from modeling.generation import beam_search, generate
from tasks.base import TRACE_SAMPLES_ENV
from tasks.rouge import ROUGE_TYPES
from tasks.seq2seq import TranslationTask

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
TRAIN = [str(FIXTURES / "multi30k_train_head.en"), str(FIXTURES / "multi30k_train_head.de")]
VAL = [str(FIXTURES / "multi30k_val_head.en"), str(FIXTURES / "multi30k_val_head.de")]
TEST = [str(FIXTURES / "multi30k_test_head.en"), str(FIXTURES / "multi30k_test_head.de")]
AESLC_DEV = FIXTURES / "aeslc_dev_head.jsonl"
# a little wider than the embedded default, trained a little longer: outputs with some right words
SMALL = '{hidden_size: 64, num_encoder_layers: 1, num_decoder_layers: 1, num_heads: 2, ffn_size: 128, max_positions: 128}'


def fit(task: str, run_dir: Path, *extra: str) -> int:
    return run.main([task, "fit", "--run_dir", str(run_dir), "--wandb", "false",
                     "--data.cache_dir", str(run_dir.parent / "cache"), *QUIET, *extra])


def scores(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / f"{stage}_scores.json").read_text())


def metrics(run_dir: Path, sub: str) -> dict:
    return json.loads((run_dir / f"{sub}_metrics.json").read_text())["metrics"]


def lines(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory) -> Path:
    """The translate default, wider and 4 epochs (100 steps), keeping 3 snapshots 20 steps apart."""
    run_dir = tmp_path_factory.mktemp("translate") / "run"
    assert fit("translate", run_dir, "--trainer.max_epochs", "4", "--model.lr", "3e-3", "--model.config", SMALL,
               "--model.snapshot_every_n_steps", "20", "--model.keep_snapshots", "3") == 0
    return run_dir


@pytest.fixture(scope="module")
def summarize_run(tmp_path_factory) -> Path:
    """Trained on the 60 dev emails themselves for 25 epochs: 40 training emails teach a tiny model nothing, while
    learning these by heart gives outputs with real words (ROUGE-1 about 20) to score."""
    run_dir = tmp_path_factory.mktemp("summarize") / "run"
    assert fit("summarize", run_dir, "--trainer.max_epochs", "25", "--trainer.check_val_every_n_epoch", "25",
               "--model.lr", "3e-3", "--data.train_file", str(AESLC_DEV), "--data.max_source_length", "64",
               "--model.config", SMALL.replace("128}", "128, dropout: 0.0}")) == 0
    return run_dir


# ------------------------------------------------------------------------------------------------ fit, predict
def test_fit_keeps_the_best_validation_bleu_and_the_vocabulary_in_the_checkpoint(translate_run):
    ckpt = torch.load(translate_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    bp = ckpt["task"]
    assert bp["task"] == "translate" and bp["model_kind"] == "transformer"
    assert bp["model_config"]["hidden_size"] == 64 and bp["model_config"]["share_embeddings"]
    assert bp["model_config"]["src_vocab_size"] == 1000 == tokenizer_from_str(bp["tokenizer"]).get_vocab_size()
    assert not set(ckpt["hyper_parameters"]) & {"beam_size", "max_new_tokens", "length_penalty"}  # each run's own
    assert ckpt["hyper_parameters"]["label_smoothing"] == 0.1
    assert ckpt["global_step"] == 100
    best = list((translate_run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    val = metrics(translate_run, "fit")
    assert val["val/bleu"] > 0 and val["val/bleu_lowercase_intl"] >= val["val/bleu"] * 0.9


def test_every_epoch_by_token_budget_trains_on_every_pair_once_and_validates_at_its_end(tmp_path, monkeypatch):
    """Each epoch's shuffle cuts the token budget into another number of batches. Lightning reads a loader's length
    once and holds every epoch to it: a longer epoch was cut short (pairs never trained on), a shorter one skipped
    its validation. The loader is now rebuilt and measured every epoch."""
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_SAMPLES_ENV, str(trace))
    run_dir = tmp_path / "run"
    assert fit("translate", run_dir, "--trainer.max_epochs", "3", "--data.max_tokens", "300") == 0
    steps = [json.loads(line)["index"] for line in trace.read_text().splitlines()]
    seen = Counter(i for step in steps for i in step)
    assert sorted(seen) == list(range(1000)) and set(seen.values()) == {3}          # every pair, once an epoch
    with open(run_dir / "metrics.csv") as f:                     # validation rows carry the step count minus 1
        epoch_ends = [int(row["step"]) + 1 for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(epoch_ends) == 3 and epoch_ends[-1] == len(steps)
    per_epoch = [b - a for a, b in zip([0] + epoch_ends, epoch_ends)]
    assert len(set(per_epoch)) == 3, f"batches per epoch {per_epoch}: the fixture should give three counts"


def test_predict_from_the_checkpoint_alone_text_and_jsonl(translate_run, tmp_path):
    ckpt = str(translate_run / "checkpoints" / "last.ckpt")
    out = tmp_path / "pred.jsonl"
    assert run.main(["translate", "predict", "--ckpt_path", ckpt, "--data.predict_file", TEST[0],
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "p1"), "--model.beam_size", "3",
                     *QUIET]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["source"] for r in rows] == lines(TEST[0]) and [r["line"] for r in rows] == list(range(1, 201))
    assert all(isinstance(r["translation"], str) for r in rows) and len({r["translation"] for r in rows}) > 10
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "en": s}) + "\n" for i, s in enumerate(lines(TEST[0])[:5])))
    out2 = tmp_path / "pred2.jsonl"
    assert run.main(["translate", "predict", "--ckpt_path", ckpt, "--data.predict_file", str(jsonl),
                     "--data.source_column", "en", "--predict_output", str(out2), "--run_dir", str(tmp_path / "p2"),
                     "--model.beam_size", "3", *QUIET]) == 0
    rows2 = [json.loads(line) for line in out2.read_text(encoding="utf-8").splitlines()]
    assert rows2 == rows[:5]                              # the same sentences, the same translations


def test_summarize_fits_and_predicts_subjects_from_jsonl(summarize_run, tmp_path):
    ckpt = torch.load(summarize_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["task"]["task"] == "summarize"
    out = tmp_path / "pred.jsonl"
    assert run.main(["summarize", "predict", "--ckpt_path", str(summarize_run / "checkpoints" / "last.ckpt"),
                     "--predict_output", str(out), "--run_dir", str(tmp_path / "p"), *QUIET]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    emails = [json.loads(line)["email"].strip() for line in AESLC_DEV.read_text().splitlines()]
    assert [r["source"] for r in rows] == emails
    assert all(1 <= len(r["summary"].split()) <= 16 for r in rows)


# ------------------------------------------------------------------------------------------------ metrics
def test_bleu_of_the_task_equals_sacrebleu_on_its_own_test_output(translate_run, tmp_path):
    test_dir = tmp_path / "test"
    assert run.main(["translate", "test", "--ckpt_path", str(translate_run / "checkpoints" / "last.ckpt"),
                     "--data.test_file", json.dumps(TEST), "--run_dir", str(test_dir), *QUIET]) == 0
    hypotheses = lines(test_dir / "test_hypotheses.txt")
    references = lines(TEST[1])
    assert len(hypotheses) == 200 and len(set(hypotheses)) > 10
    result = scores(test_dir, "test")
    cased = sacrebleu.corpus_bleu(hypotheses, [references])
    literature = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True, tokenize="intl")
    assert result["scores"]["bleu"] == pytest.approx(cased.score, abs=1e-9) and cased.score > 0.1
    assert result["scores"]["bleu_lowercase_intl"] == pytest.approx(literature.score, abs=1e-9)
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert result["bleu_lowercase_intl_signature"].startswith("nrefs:1|case:lc|eff:no|tok:intl|smooth:exp")
    assert result["decoding"]["beam_size"] == 5
    assert metrics(test_dir, "test")["test/bleu"] == pytest.approx(cased.score, abs=1e-5)


def test_rouge_of_the_task_equals_rouge_score_single_and_multi_reference(summarize_run, tmp_path):
    test_dir = tmp_path / "test"
    assert run.main(["summarize", "test", "--ckpt_path", str(summarize_run / "checkpoints" / "last.ckpt"),
                     "--data.test_file", str(AESLC_DEV), "--run_dir", str(test_dir), *QUIET]) == 0
    hypotheses = lines(test_dir / "test_hypotheses.txt")
    rows = [json.loads(line) for line in AESLC_DEV.read_text().splitlines()]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    single = {t: 0.0 for t in ROUGE_TYPES}
    multi = {t: 0.0 for t in ROUGE_TYPES}
    for hyp, row in zip(hypotheses, rows):
        per_ref = [scorer.score(ref.strip(), hyp) for ref in [row["subject"], *row["annotations"]]]
        for t in ROUGE_TYPES:
            single[t] += 100 * per_ref[0][t].fmeasure / len(rows)
            multi[t] += 100 * max(s[t].fmeasure for s in per_ref) / len(rows)
    result = scores(test_dir, "test")["scores"]
    assert len(hypotheses) == len(rows) == 60 and single["rouge1"] > 5 and single["rouge2"] > 1
    for t in ROUGE_TYPES:
        assert result[t] == pytest.approx(single[t], abs=1e-9), t
        assert result[f"{t}_multi_ref"] == pytest.approx(multi[t], abs=1e-9), t
    assert all(multi[t] >= single[t] for t in ROUGE_TYPES) and multi["rouge1"] > single["rouge1"]


# ------------------------------------------------------------------------------------------------ decoding
def test_known_words_writes_only_words_of_the_training_texts(summarize_run, tmp_path):
    """With `known_words` every word of every test output is a word of the training texts (here the 60 dev emails
    and subjects, which also hold each test email), as the checkpoint's tokenizer normalises and splits them. With
    room to finish (100 new tokens): a hypothesis cut at `max_new_tokens` may stop inside a word."""
    ckpt = summarize_run / "checkpoints" / "last.ckpt"
    tokenizer = tokenizer_from_str(torch.load(ckpt, map_location="cpu", weights_only=True)["task"]["tokenizer"])
    rows = [json.loads(line) for line in AESLC_DEV.read_text().splitlines()]
    normalise = tokenizer.normalizer.normalize_str if tokenizer.normalizer else str
    known = {w for r in rows for text in (r["email"], r["subject"]) for w in normalise(text).split(" ") if w}
    outputs = {}
    for on in ("false", "true"):
        assert run.main(["summarize", "test", "--ckpt_path", str(ckpt), "--data.test_file", str(AESLC_DEV),
                         "--data.train_file", str(AESLC_DEV), "--model.known_words", on,
                         "--model.max_new_tokens", "100",
                         "--run_dir", str(tmp_path / on), *QUIET]) == 0
        outputs[on] = lines(tmp_path / on / "test_hypotheses.txt")
    words = [w for hyp in outputs["true"] for w in hyp.split(" ") if w]
    assert len(words) > 60 and set(words) <= known
    assert outputs["true"] != outputs["false"]                # the constraint changed something


def test_beam_one_equals_greedy_through_the_task(translate_run, tmp_path):
    ckpt = translate_run / "checkpoints" / "last.ckpt"
    task = TranslationTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    data = Seq2SeqDataModule(val_file=VAL, eval_batch_size=7, cache_dir=None)
    data.adopt(task.blueprint)
    data.setup("validate")
    task.hparams.max_new_tokens = 40                                   # as the embedded default decodes
    greedy, beam1 = {}, {}
    for batch in data.val_dataloader():
        index = batch["index"].tolist()
        greedy.update(zip(index, task.texts(task.generate_ids(batch["source_ids"], batch["source_mask"], None))))
        beam1.update(zip(index, task.texts(task.generate_ids(batch["source_ids"], batch["source_mask"], 1))))
    assert greedy == beam1 and len({len(h.split()) for h in greedy.values()}) > 3    # ended at many lengths
    # the same through run.py: validation is greedy, a test with --model.beam_size 1 is beam search
    assert run.main(["translate", "validate", "--ckpt_path", str(ckpt), "--data.val_file", json.dumps(VAL),
                     "--run_dir", str(tmp_path / "v"), *QUIET]) == 0
    assert run.main(["translate", "test", "--ckpt_path", str(ckpt), "--data.test_file", json.dumps(VAL),
                     "--model.beam_size", "1", "--run_dir", str(tmp_path / "t"), *QUIET]) == 0
    assert metrics(tmp_path / "v", "validate")["val/bleu"] == metrics(tmp_path / "t", "test")["test/bleu"]
    assert lines(tmp_path / "t" / "test_hypotheses.txt") == [greedy[i] for i in range(len(greedy))]


def unprojected_decoder(model: Transformer, memory: torch.Tensor, mask: torch.Tensor):
    """The decoder as it was before the memory was projected once: every step passes the raw memory, and every
    cross-attention layer projects it again (repeated per beam)."""

    class Decoder:
        def __init__(self):
            self.memory, self.mask = memory, mask

        def new_cache(self, batch_size, max_len):
            repeat = batch_size // self.memory.size(0)
            self.memory, self.mask = self.memory.repeat_interleave(repeat, 0), self.mask.repeat_interleave(repeat, 0)
            return model.new_cache(batch_size, max_len)

        def __call__(self, ids, cache=None):
            return model.decode(ids, self.memory, self.mask, cache)

    return Decoder()


def test_cross_attention_memory_projected_once_gives_identical_outputs():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=40, tgt_vocab_size=40, hidden_size=32, num_encoder_layers=2,
                                          num_decoder_layers=3, num_heads=4, ffn_size=64, max_positions=64)).eval()
    src = torch.randint(4, 40, (5, 11))
    mask = torch.ones_like(src)
    mask[1, 6:] = mask[3, 2:] = 0                                     # padded sources
    calls = []
    for layer in model.decoder:
        layer.cross_attn.kv_proj.register_forward_hook(lambda m, i, o: calls.append(o.size(0)))
    with torch.no_grad():
        memory = model.encode(src, mask)
        start = torch.full((5, 1), 1)
        for kwargs in ({"beam_size": 4, "no_repeat_ngram_size": 2}, {"beam_size": 1}, {"beam_size": 3,
                                                                                       "min_new_tokens": 9}):
            calls.clear()
            once = beam_search(model.decoder_for(memory, mask), start, 12, eos_token_id=2, pad_token_id=0, **kwargs)
            assert calls == [5, 5, 5]                                  # once per layer, for the 5 sources
            calls.clear()
            every_step = beam_search(unprojected_decoder(model, memory, mask), start, 12, eos_token_id=2,
                                     pad_token_id=0, **kwargs)
            assert len(calls) == 3 * 12 and calls[-1] == 5 * kwargs["beam_size"]
            assert torch.equal(once, every_step)
        assert torch.equal(generate(model.decoder_for(memory, mask), start, 12, eos_token_id=2),
                           generate(unprojected_decoder(model, memory, mask), start, 12, eos_token_id=2))
        # step by step, the logits agree as well
        cache_a, cache_b = model.new_cache(5, 8), model.new_cache(5, 8)
        bound, raw = model.decoder_for(memory, mask), unprojected_decoder(model, memory, mask)
        tokens = torch.randint(4, 40, (5, 8))
        for t in range(8):
            torch.testing.assert_close(bound(tokens[:, t:t + 1], cache_a), raw(tokens[:, t:t + 1], cache_b),
                                       atol=1e-6, rtol=1e-6)


def test_label_smoothed_loss_without_the_logits_equals_cross_entropy():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=300, tgt_vocab_size=300, hidden_size=32,
                                          num_encoder_layers=1, num_decoder_layers=2, num_heads=4, ffn_size=64,
                                          max_positions=64, dropout=0.0))
    src, tgt = torch.randint(4, 300, (4, 9)), torch.randint(4, 300, (4, 8))
    tgt[1, 5:] = tgt[3, 2:] = 0                                       # padded targets are not scored
    src_mask = torch.ones_like(src)
    for eps in (0.0, 0.1):
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:], src_mask, label_smoothing=eps)
        ours = torch.autograd.grad(loss, list(model.parameters()))
        logits = model(src, tgt[:, :-1], src_mask)
        reference = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=0, label_smoothing=eps)
        expected = torch.autograd.grad(reference, list(model.parameters()))
        torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
        for a, b in zip(ours, expected):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ data
def test_joint_vocabulary_round_trips_the_fixture_and_is_cached(tmp_path, monkeypatch):
    data = Seq2SeqDataModule(train_file=TRAIN, val_file=VAL, vocab_size=1000, cache_dir=str(tmp_path))
    data.setup("fit")
    tokenizer = data.ensure_tokenizer()
    test = read_parallel(*TEST)
    encoded = seq2seq_data.encode_pairs(tokenizer, test.sources, test.targets)
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded.source_ids + encoded.target_ids]
    seen = set("".join(data.examples("train").sources + data.examples("train").targets))
    # every line comes back exactly, except those with a character the 1,000 training pairs never show (<unk>)
    for line, back in zip(test.sources + test.targets, decoded):
        assert (back == line) == (set(line) <= seen), (line, back)
    assert sum(back == line for line, back in zip(test.sources + test.targets, decoded)) > 390
    assert len(list(tmp_path.glob("vocabulary-*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the vocabulary was trained again")

    monkeypatch.setattr(seq2seq_data, "train_tokenizer", no_training)
    again = Seq2SeqDataModule(train_file=TRAIN, vocab_size=1000, cache_dir=str(tmp_path))
    again.setup("fit")
    assert again.ensure_tokenizer().to_str() == tokenizer.to_str()          # read back, not retrained
    other = Seq2SeqDataModule(train_file=TRAIN, vocab_size=900, cache_dir=str(tmp_path))
    other.setup("fit")
    with pytest.raises(AssertionError, match="trained again"):             # other settings: another vocabulary
        other.ensure_tokenizer()
    lowercased = Seq2SeqDataModule(train_file=TRAIN, vocab_size=1000, lowercase=True, cache_dir=str(tmp_path))
    lowercased.setup("fit")
    with pytest.raises(AssertionError, match="trained again"):             # lowercasing is part of the key
        lowercased.ensure_tokenizer()


def test_length_filter_logs_what_it_removed_and_batches_fit_the_token_budget(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(logging.getLogger("pytorch_lightning"), "propagate", True)
    data = Seq2SeqDataModule(train_file=TRAIN, vocab_size=1000, cache_dir=None, min_length=8, max_length=30,
                             max_ratio=1.8, max_tokens=400, max_source_length=24, max_target_length=24)
    data.setup("fit")
    with caplog.at_level(logging.INFO):
        encoded = data.encoded("train")
        batches = list(data.train_dataloader())
    tokenizer = data.tokenizer
    train = read_parallel(*TRAIN)
    full = seq2seq_data.encode_pairs(tokenizer, train.sources, train.targets)
    report = seq2seq_data.filter_by_length(full.source_tokens, full.target_tokens, 8, 30, 1.8)
    assert report.removed > 0 and len(encoded) == len(report.kept)
    assert any(report.summary() in r.getMessage() for r in caplog.records)
    assert any("truncated" in r.getMessage() for r in caplog.records)
    assert max(len(ids) for ids in encoded.source_ids) <= 24
    seen = sorted(i for b in batches for i in b["index"].tolist())
    assert seen == list(range(len(encoded)))                              # every kept pair once per epoch
    for b in batches:
        padded = max(b["source_ids"].size(1), b["target_ids"].size(1) - 1)
        assert padded * b["source_ids"].size(0) <= 400
        assert torch.equal(b["source_mask"], (b["source_ids"] != 0).long())


# ------------------------------------------------------------------------------------------------ DDP
@pytest.mark.parametrize("task", ["translate", "summarize"])
def test_ddp_two_processes_validate_like_one(task, tmp_path):
    """33 validation examples (odd, so a DistributedSampler would repeat one): the evaluation sampler shards without
    repeating, BLEU's and ROUGE's statistics are summed over the processes: the same scores as one process."""
    if task == "translate":
        val = [tmp_path / "val.en", tmp_path / "val.de"]
        for path, source in zip(val, VAL):
            path.write_text("\n".join(lines(source)[:33]) + "\n", encoding="utf-8")
        val_arg = json.dumps([str(p) for p in val])
    else:
        val = tmp_path / "val.jsonl"
        val.write_text("\n".join(AESLC_DEV.read_text().splitlines()[:33]) + "\n")
        val_arg = str(val)
    ddp_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "run.py"), task, "fit", "--run_dir", str(ddp_dir), "--wandb", "false",
           "--data.cache_dir", str(tmp_path / "cache"), "--data.val_file", val_arg, "--trainer.max_epochs", "1",
           "--trainer.limit_train_batches", "3",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
           "--trainer.num_sanity_val_steps", "0", "--model.val_beam_size", "2", *QUIET]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = metrics(ddp_dir, "fit")
    single_dir = tmp_path / "single"
    assert run.main([task, "validate", "--ckpt_path", str(ddp_dir / "checkpoints" / "last.ckpt"),
                     "--data.val_file", val_arg, "--model.val_beam_size", "2", "--run_dir", str(single_dir),
                     *QUIET]) == 0
    single = metrics(single_dir, "validate")
    keys = [k for k in single if k.startswith("val/") and k != "val/loss"]
    assert len(keys) == (2 if task == "translate" else 8)
    for key in keys:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], abs=1e-5)


# ------------------------------------------------------------------------------------------------ bad input
def write_parallel(tmp_path: Path, en: list[str], de: list[str]) -> list[str]:
    paths = [tmp_path / "train.en", tmp_path / "train.de"]
    for path, text in zip(paths, (en, de)):
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return [str(p) for p in paths]


def aeslc_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "aeslc_train_head.jsonl").read_text().splitlines()[:n]]


def bad_case(case: str, tmp_path: Path) -> tuple[str, list[str], str]:
    """(task, extra command-line arguments, the message expected) for a bad input file."""
    en, de = lines(TRAIN[0])[:20], lines(TRAIN[1])[:20]
    if case == "misaligned":
        files = write_parallel(tmp_path, en, de[:19])
        return "translate", ["--data.train_file", json.dumps(files)], \
            f"{files[0]} has 20 lines but {files[1]} has 19"
    if case == "empty line":
        en[11] = "  "
        files = write_parallel(tmp_path, en, de)
        return "translate", ["--data.train_file", json.dumps(files)], f"{files[0]}, line 12: empty line"
    rows = aeslc_rows(6)
    if case == "no target key":
        del rows[3]["subject"]
        message = "line 4: missing or empty key 'subject'"
    elif case == "empty email":
        rows[1]["email"] = " \n "
        message = "line 2: missing or empty key 'email'"
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "summarize", ["--data.train_file", str(path)], f"{path}, {message}"


def test_summarize_metric_picks_the_checkpoint_monitor(tmp_path, capsys):
    """`model.metric rouge2` makes val/rouge2 the best checkpoint's monitor; an unknown metric is one line, exit 2."""
    run_dir = tmp_path / "run"
    assert fit("summarize", run_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
               "--trainer.limit_val_batches", "1", "--model.config", SMALL, "--data.max_source_length", "64",
               "--model.metric", "rouge2") == 0
    ckpt = torch.load(run_dir / "checkpoints" / "best-epoch=0-step=2.ckpt", map_location="cpu", weights_only=True)
    monitors = [state["monitor"] for key, state in ckpt["callbacks"].items() if key.startswith("ModelCheckpoint")]
    assert monitors == ["val/rouge2"], ckpt["callbacks"].keys()
    capsys.readouterr()
    code = fit("summarize", tmp_path / "bad", "--trainer.max_steps", "2", "--model.metric", "bleu")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.metric 'bleu': choose from rouge1, rouge2" in err[0], err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("case", ["misaligned", "empty line", "no target key", "empty email"])
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    task, args, message = bad_case(case, tmp_path)
    run_dir = tmp_path / "run"
    code = run.main([task, "fit", "--run_dir", str(run_dir), "--wandb", "false", "--data.cache_dir",
                     str(tmp_path / "cache"), *QUIET, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"run.py {task}: error: ") and message in err[0], err
    assert not run_dir.exists() and not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "cache").exists()


def test_bad_input_predict_file_with_an_empty_line(translate_run, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("A dog runs.\n\nTwo men talk.\n", encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    code = run.main(["translate", "predict", "--ckpt_path", str(translate_run / "checkpoints" / "last.ckpt"),
                     "--data.predict_file", str(inputs), "--predict_output", str(out), "--run_dir",
                     str(tmp_path / "p"), *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{inputs}, line 2: empty line" in err[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ averaging
def test_average_of_the_snapshots_is_their_mean_and_tests(translate_run, tmp_path, capsys):
    snapshots = sorted((translate_run / "snapshots").glob("*.ckpt"))
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in snapshots]
    assert sorted(s["global_step"] for s in states) == [60, 80, 100]     # the newest 3 of every 20 steps
    out = tmp_path / "avg.ckpt"
    assert run.main(["translate", "average", "--ckpts", *map(str, snapshots), "--out", str(out)]) == 0
    averaged = torch.load(out, map_location="cpu", weights_only=True)
    assert averaged["task"] == states[0]["task"] and "optimizer_states" not in averaged
    for name, value in averaged["state_dict"].items():
        mean = sum(s["state_dict"][name] for s in states) / 3
        torch.testing.assert_close(value, mean, atol=1e-6, rtol=1e-5)
    assert not torch.equal(averaged["state_dict"]["model.tgt_embed.token.weight"],
                           states[-1]["state_dict"]["model.tgt_embed.token.weight"])
    assert run.main(["translate", "test", "--ckpt_path", str(out), "--data.test_file", json.dumps(VAL),
                     "--run_dir", str(tmp_path / "t"), *QUIET]) == 0
    assert "test/bleu" in metrics(tmp_path / "t", "test")
    capsys.readouterr()
    other = torch.load(snapshots[0], map_location="cpu", weights_only=True)
    other["task"]["model_config"]["dropout"] = 0.3
    torch.save(other, tmp_path / "other.ckpt")
    assert run.main(["translate", "average", "--ckpts", str(snapshots[1]), str(tmp_path / "other.ckpt"),
                     "--out", str(tmp_path / "bad.ckpt")]) == 2
    assert "not the same model" in capsys.readouterr().err
