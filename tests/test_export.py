"""`run.py <task> export`: each task's checkpoint as a Hugging Face directory that `transformers` loads and that gives
the same outputs (within 1e-4) on real fixture sentences, tokenizer included; the converters for the networks of
tasks still being written (BERT + span head, BERT + pre-training heads, the encoder-decoder Transformer), directly
and through the blueprint dispatch; exported directories back into our encoder loader; bad input as one line."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

transformers = pytest.importorskip("transformers")

import run  # noqa: E402
from conftest import FIXTURES  # noqa: E402
from data.conll import build_windows, read_conll  # noqa: E402
from data.errors import ConfigError  # noqa: E402
from data.lm_tokenizer import TextTokenizer  # noqa: E402
from data.readers import read_table  # noqa: E402
from data.seq2seq import encode_pairs, read_parallel, train_tokenizer  # noqa: E402
from data.squad import read_squad  # noqa: E402
from data.tokenization import load_tokenizer, tokenizer_from_str  # noqa: E402
from modeling import BERT, GPT, BertConfig, GPTConfig, Transformer, TransformerConfig  # noqa: E402
from modeling.embeddings import sinusoidal_table  # noqa: E402
from modeling.hf import marian_order, save_bert, save_gpt2, save_transformer  # noqa: E402
from tasks.checkpoint import Blueprint, read_checkpoint  # noqa: E402
from tasks.classify import ClassificationTask, masked_mean  # noqa: E402
from tasks.encoders import load_encoder  # noqa: E402
from tasks.export import export, network  # noqa: E402
from tasks.lm import load_checkpoint as load_lm  # noqa: E402
from tasks.ner import NERTask  # noqa: E402

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SST2 = read_table(FIXTURES / "sst2_dev.tsv", ["sentence", "label"])["sentence"][:8]
SST2_TOKENIZER = FIXTURES.parent.parent / "data" / "samples" / "sst2" / "tokenizer.json"
ATOL = 1e-4


def fit(factory, task: str, *extra: str) -> Path:
    """The task's default config trained for two steps: its last.ckpt."""
    run_dir = factory.mktemp(task)
    assert run.main([task, "fit", "--trainer.max_steps", "2", "--run_dir", str(run_dir), "--wandb", "false",
                     *QUIET, *extra]) == 0
    return run_dir / "checkpoints" / "last.ckpt"


def export_cli(task: str, ckpt: Path, out: Path, capsys) -> str:
    assert run.main([task, "export", "--ckpt_path", str(ckpt), "--out", str(out)]) == 0
    return capsys.readouterr().out


def close_on(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> float:
    """Largest difference at the real (not padded) positions."""
    return (a - b)[real.bool()].abs().max().item()


def save_ckpt(path: Path, bp: Blueprint, prefix: str, model: nn.Module, extra: dict | None = None) -> Path:
    """A checkpoint as a task writes it (blueprint + state dict), for the tasks that are not registered yet."""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": {**state, **(extra or {})}, "task": bp.to_dict()}, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# classify
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classify_cls(tmp_path_factory) -> Path:
    return fit(tmp_path_factory, "classify", "--model.pooling", "cls")


@pytest.fixture(scope="module")
def classify_mean(tmp_path_factory) -> Path:
    return fit(tmp_path_factory, "classify")                      # the default: mean pooling


def test_classify_with_cls_pooling_is_a_bert_sequence_classifier(classify_cls, tmp_path, capsys):
    out = tmp_path / "hf"
    assert "BertForSequenceClassification" in export_cli("classify", classify_cls, out, capsys)
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                               "tokenizer_config.json", "vocab.txt"}
    ours = ClassificationTask.load_from_checkpoint(classify_cls, map_location="cpu").eval()
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert type(theirs).__name__ == "BertForSequenceClassification"
    assert theirs.config.id2label == {0: "0", 1: "1"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    ours_tokenizer = tokenizer_from_str(ours.blueprint.tokenizer)
    assert [tokenizer(s)["input_ids"] for s in SST2] == [e.ids for e in ours_tokenizer.encode_batch(SST2)]
    batch = tokenizer(SST2, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        b = theirs(**batch).logits
    assert a.abs().max() > 1e-3                                   # a real head, not zeros
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_classify_regression_is_a_bert_sequence_classifier_for_regression(tmp_path_factory, tmp_path, capsys):
    """One output, problem_type "regression": transformers then trains it with MSE, as we do."""
    ckpt = fit(tmp_path_factory, "classify", "--model.pooling", "cls", "--data.regression", "true",
               "--data.labels", "null", "--model.metric", "spearman")
    out = tmp_path / "hf"
    assert "BertForSequenceClassification" in export_cli("classify", ckpt, out, capsys)
    ours = ClassificationTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert (theirs.config.problem_type, theirs.config.num_labels) == ("regression", 1)
    batch = transformers.AutoTokenizer.from_pretrained(str(out))(SST2, padding=True, return_tensors="pt")
    with torch.no_grad():
        a = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        b = theirs(**batch).logits
    assert a.shape == (len(SST2), 1) and a.std() > 1e-4          # a score per sentence, not a constant
    torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_classify_with_mean_pooling_exports_the_encoder_and_its_head(classify_mean, tmp_path, capsys):
    out = tmp_path / "hf"
    line = export_cli("classify", classify_mean, out, capsys)
    assert "BertModel + head.safetensors" in line and "pooling 'mean'" in line and len(line.splitlines()) == 1
    ours = ClassificationTask.load_from_checkpoint(classify_mean, map_location="cpu").eval()
    theirs = transformers.BertModel.from_pretrained(str(out), add_pooling_layer=False).eval()
    batch = transformers.AutoTokenizer.from_pretrained(str(out))(SST2, padding=True, return_tensors="pt")
    head = load_file(str(out / "head.safetensors"))
    assert set(head) == {"head.weight", "head.bias"}
    with torch.no_grad():
        ours_hidden = ours.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).last_hidden_state
        hidden = theirs(**batch).last_hidden_state
        logits = masked_mean(hidden, batch["attention_mask"]) @ head["head.weight"].t() + head["head.bias"]
        expected = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    assert close_on(hidden, ours_hidden, batch["attention_mask"]) <= ATOL
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_exported_classifier_starts_a_new_run_from_its_encoder(classify_cls, tmp_path, capsys):
    """`--model.pretrained <exported dir>`: the encoder (pooler included) comes back exactly, the head is new."""
    out = tmp_path / "hf"
    export_cli("classify", classify_cls, out, capsys)
    bert, _ = load_encoder(str(out), pooler=True)
    assert bert.load_report == {"initialised": [], "ignored": ["classifier.bias", "classifier.weight"]}
    ckpt = read_checkpoint(classify_cls)
    original = network(Blueprint.from_dict(ckpt["task"]), ckpt["state_dict"])
    batch = batch_of(load_tokenizer(str(out)), SST2)
    with torch.no_grad():
        a, b = original(**batch), bert.eval()(**batch)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state)
    torch.testing.assert_close(b.pooled, a.pooled)


# ---------------------------------------------------------------------------------------------------------
# ner
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[False, True], ids=["plain", "casing"])
def ner_ckpt(request, tmp_path_factory) -> tuple[Path, bool]:
    return fit(tmp_path_factory, "ner", "--model.casing", str(request.param).lower()), request.param


def test_ner_is_a_bert_token_classifier_with_casing_as_token_types(ner_ckpt, tmp_path, capsys):
    ckpt, casing = ner_ckpt
    out = tmp_path / "hf"
    assert "BertForTokenClassification" in export_cli("ner", ckpt, out, capsys)
    ours = NERTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    assert type(theirs).__name__ == "BertForTokenClassification"
    assert list(theirs.config.id2label.values()) == ours.labels
    assert theirs.config.type_vocab_size == (6 if casing else 2)
    sentences = read_conll(FIXTURES / "conll_valid.txt")[:8]
    windows = build_windows(tokenizer_from_str(ours.blueprint.tokenizer), sentences, None, max_length=128)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert [tokenizer(s.words, is_split_into_words=True)["input_ids"] for s in sentences] == \
        [w.input_ids for w in windows]
    width = max(len(w.input_ids) for w in windows)
    ids = torch.tensor([w.input_ids + [0] * (width - len(w.input_ids)) for w in windows])
    classes = torch.tensor([w.casing + [0] * (width - len(w.casing)) for w in windows])
    mask = (torch.arange(width) < torch.tensor([len(w.input_ids) for w in windows])[:, None]).long()
    with torch.no_grad():
        a = ours(ids, mask, classes)
        b = theirs(input_ids=ids, attention_mask=mask, token_type_ids=classes if casing else None).logits
    assert close_on(a, b, mask) <= ATOL


def test_ner_bilstm_tagger_exports_the_encoder_and_says_why(tmp_path_factory, tmp_path, capsys):
    ckpt = fit(tmp_path_factory, "ner", "--model.tagger", "bilstm", "--model.lstm_hidden", "8")
    line = export_cli("ner", ckpt, tmp_path / "hf", capsys)
    assert line.startswith(f"wrote {tmp_path / 'hf'}: BertModel + head.safetensors (a BiLSTM tagger:")
    assert any(k.startswith("head.lstm.") for k in load_file(str(tmp_path / "hf" / "head.safetensors")))


# ---------------------------------------------------------------------------------------------------------
# lm
# ---------------------------------------------------------------------------------------------------------
def test_lm_is_gpt2_lm_head_model_with_its_character_tokenizer(tmp_path_factory, tmp_path, capsys):
    ckpt = fit(tmp_path_factory, "lm")
    out = tmp_path / "hf"
    assert "GPT2LMHeadModel" in export_cli("lm", ckpt, out, capsys)
    ours, ours_tokenizer = load_lm(ckpt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    text = (FIXTURES / "tinyshakespeare_head.txt").read_text()
    chunks = [text[i:i + 60] for i in (0, 1000, 5000)]
    ids = [tokenizer(c)["input_ids"] for c in chunks]
    assert ids == [ours_tokenizer.encode(c) for c in chunks] and tokenizer.decode(ids[0]) == chunks[0]
    with torch.no_grad():
        torch.testing.assert_close(theirs(torch.tensor(ids)).logits, ours(torch.tensor(ids)), atol=ATOL, rtol=0)


def test_gpt_without_biases_and_with_an_untied_head_exports_the_same_function(tmp_path):
    """bias=False (nanoGPT's choice) exports zero biases; an untied head sets tie_word_embeddings False."""
    text = (FIXTURES / "tinyshakespeare_head.txt").read_text()[:4000]
    tokenizer = TextTokenizer.char_from_text([text])
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_positions=64, num_layers=2, num_heads=2, hidden_size=32,
                         bias=False, tie_embeddings=False)).eval()
    save_gpt2(ours, tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    assert not theirs.config.tie_word_embeddings
    assert all(not p.any() for n, p in theirs.named_parameters() if n.endswith(".bias"))
    ids = torch.tensor([tokenizer.encode(text[i:i + 64]) for i in (0, 700, 2100)])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# qa and pretrain (BERT with a span head, BERT with pre-training heads)
# ---------------------------------------------------------------------------------------------------------
def squad_pairs(n: int = 4) -> tuple[list[str], list[str]]:
    questions = read_squad(FIXTURES / "squad_dev_sample.json")[:n]
    return [q.question for q in questions], [q.context[:300] for q in questions]


def small_bert(vocab_size: int, **kwargs) -> BERT:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64,
                        max_positions=256)
    return BERT(config, **kwargs).eval()


def batch_of(tokenizer, texts: list) -> dict[str, torch.Tensor]:
    """Our tokenizer's encodings of texts (or pairs of texts), padded with [PAD] = 0."""
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    pad = lambda rows: torch.tensor([r + [0] * (width - len(r)) for r in rows])  # noqa: E731
    return {"input_ids": pad([e.ids for e in encodings]), "token_type_ids": pad([e.type_ids for e in encodings]),
            "attention_mask": pad([[1] * len(e.ids) for e in encodings])}


def test_bert_with_a_span_head_is_a_bert_question_answering_model(tmp_path):
    tokenizer = load_tokenizer(str(SST2_TOKENIZER))
    bert = small_bert(tokenizer.get_vocab_size(), pooler=False)
    span = nn.Linear(32, 2)
    nn.init.normal_(span.weight, std=0.5)
    save_bert(bert, tmp_path, span, "BertForQuestionAnswering")
    theirs = transformers.BertForQuestionAnswering.from_pretrained(str(tmp_path)).eval()
    batch = batch_of(tokenizer, list(zip(*squad_pairs())))
    with torch.no_grad():
        start, end = span(bert(**batch).last_hidden_state).unbind(-1)            # (B, T) each
        out = theirs(**batch)
    assert close_on(start, out.start_logits, batch["attention_mask"]) <= ATOL
    assert close_on(end, out.end_logits, batch["attention_mask"]) <= ATOL


def test_qa_is_a_bert_question_answering_model(tmp_path_factory, tmp_path, capsys):
    from tasks.qa import QATask
    ckpt = fit(tmp_path_factory, "qa")
    out = tmp_path / "hf"
    assert "BertForQuestionAnswering" in export_cli("qa", ckpt, out, capsys)
    ours = QATask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out)).eval()
    questions, contexts = squad_pairs()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    pairs = tokenizer_from_str(ours.blueprint.tokenizer).encode_batch(list(zip(questions, contexts)))
    assert [tokenizer(q, c)["input_ids"] for q, c in zip(questions, contexts)] == [e.ids for e in pairs]
    batch = tokenizer(questions, contexts, padding=True, return_tensors="pt")
    with torch.no_grad():
        start, end = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        answer = theirs(**batch)
    assert close_on(start, answer.start_logits, batch["attention_mask"]) <= ATOL
    assert close_on(end, answer.end_logits, batch["attention_mask"]) <= ATOL


def test_qa_checkpoint_dispatches_to_question_answering(tmp_path, capsys):
    """The blueprint names the task; tasks.export.HEADS says its span head (`span.`) forms BertForQuestionAnswering."""
    tokenizer = load_tokenizer(str(SST2_TOKENIZER))
    bert = small_bert(tokenizer.get_vocab_size(), pooler=False)
    span = nn.Linear(32, 2)
    bp = Blueprint("qa", "bert", asdict(bert.config), tokenizer.to_str(), settings={"version_2": False})
    ckpt = save_ckpt(tmp_path / "qa.ckpt", bp, "bert.", bert, {f"span.{k}": v for k, v in span.state_dict().items()})
    assert export(ckpt, "qa", tmp_path / "hf").startswith("BertForQuestionAnswering")
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "hf")).eval()
    batch = batch_of(tokenizer, list(zip(*squad_pairs())))
    with torch.no_grad():
        start, end = span(bert(**batch).last_hidden_state).unbind(-1)
        out = theirs(**batch)
    assert close_on(start, out.start_logits, batch["attention_mask"]) <= ATOL
    assert close_on(end, out.end_logits, batch["attention_mask"]) <= ATOL


def test_pretrain_checkpoint_is_bert_for_pretraining_and_loads_back_with_its_heads(tmp_path):
    tokenizer = load_tokenizer(str(SST2_TOKENIZER))
    bert = small_bert(tokenizer.get_vocab_size(), pretraining_heads=True)
    bp = Blueprint("pretrain", "bert", asdict(bert.config), tokenizer.to_str())
    ckpt = save_ckpt(tmp_path / "pretrain.ckpt", bp, "bert.", bert)
    assert export(ckpt, "pretrain", tmp_path / "hf").startswith("BertForPreTraining:")
    theirs = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    batch = batch_of(tokenizer, list(zip(SST2[:4], SST2[4:8])))
    again, _ = load_encoder(str(tmp_path / "hf"), pooler=True, pretraining_heads=True)
    assert again.load_report["initialised"] == []
    with torch.no_grad():
        ours, out, back = bert(**batch), theirs(**batch), again.eval()(**batch)
        mlm = bert.mlm_logits(ours.last_hidden_state)
        assert close_on(mlm, out.prediction_logits, batch["attention_mask"]) <= ATOL
        torch.testing.assert_close(out.seq_relationship_logits, bert.nsp_logits(ours.pooled), atol=ATOL, rtol=0)
        torch.testing.assert_close(again.mlm_logits(back.last_hidden_state), mlm)


@pytest.mark.skipif("pretrain" not in run.TASKS, reason="the pretrain task is not registered in run.py")
def test_pretrain_is_bert_for_pretraining(tmp_path_factory, tmp_path, capsys):
    from tasks.pretrain import PretrainTask
    ckpt = fit(tmp_path_factory, "pretrain")
    out = tmp_path / "hf"
    assert "BertForPreTraining" in export_cli("pretrain", ckpt, out, capsys)
    ours = PretrainTask.load_from_checkpoint(ckpt, map_location="cpu").eval().bert
    theirs = transformers.BertForPreTraining.from_pretrained(str(out)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = tokenizer(SST2[:4], SST2[4:8], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        a, b = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]), theirs(**batch)
    assert close_on(ours.mlm_logits(a.last_hidden_state), b.prediction_logits, batch["attention_mask"]) <= ATOL
    torch.testing.assert_close(b.seq_relationship_logits, ours.nsp_logits(a.pooled), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# the encoder-decoder Transformer -> MarianMTModel
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi30k():
    train = read_parallel(FIXTURES / "multi30k_train_head.de", FIXTURES / "multi30k_train_head.en")
    tokenizer = train_tokenizer(train.sources + train.targets, vocab_size=600)
    val = read_parallel(FIXTURES / "multi30k_val_head.de", FIXTURES / "multi30k_val_head.en")
    return tokenizer, val.sources[:6], val.targets[:6]


def small_transformer(vocab_size: int, **kwargs) -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, hidden_size=32,
                               num_encoder_layers=2, num_decoder_layers=2, num_heads=4, ffn_size=64, max_positions=128,
                               **kwargs)
    return Transformer(config).eval()


def seq2seq_batch(tokenizer, sources, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(source ids, source mask, decoder input <s> y, decoder mask), padded with <pad> = 0."""
    pairs = encode_pairs(tokenizer, sources, targets)
    pad = lambda rows: torch.tensor([r + [0] * (max(map(len, rows)) - len(r)) for r in rows])  # noqa: E731
    src, tgt = pad(pairs.source_ids), pad([t[:-1] for t in pairs.target_ids])
    return src, (src != 0).long(), tgt, (tgt != 0).long()


@pytest.mark.parametrize("shared, bias", [(True, True), (False, False)], ids=["shared", "separate-nobias"])
def test_transformer_is_marian_with_the_same_logits(multi30k, tmp_path, shared, bias):
    tokenizer, sources, targets = multi30k
    V = tokenizer.get_vocab_size()
    ours = small_transformer(V, share_embeddings=shared, bias=bias)
    save_transformer(ours, tmp_path, decoder_start_token_id=1, eos_token_id=2)
    theirs, info = transformers.MarianMTModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    src, src_mask, tgt, tgt_mask = seq2seq_batch(tokenizer, sources, targets)
    with torch.no_grad():
        a = ours(src, tgt, src_mask)
        b = theirs.eval()(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
    assert close_on(a, b, tgt_mask) <= ATOL


def test_marian_sinusoids_are_ours_in_another_order(multi30k, tmp_path):
    """Why the export permutes the model dimensions: Marian's table is ours with sines first, then cosines."""
    ours = small_transformer(multi30k[0].get_vocab_size())
    save_transformer(ours, tmp_path, 1, 2)
    table = transformers.MarianMTModel.from_pretrained(str(tmp_path)).model.encoder.embed_positions.weight
    torch.testing.assert_close(table, sinusoidal_table(128, 32)[:, marian_order(32)], atol=1e-6, rtol=0)
    assert not torch.allclose(table, sinusoidal_table(128, 32), atol=1e-3)


def test_seq2seq_checkpoint_exports_marian_and_a_tokenizer_that_ends_sources_with_eos(multi30k, tmp_path):
    tokenizer, sources, targets = multi30k
    ours = small_transformer(tokenizer.get_vocab_size())
    bp = Blueprint("translate", "transformer", asdict(ours.config), tokenizer.to_str())
    ckpt = save_ckpt(tmp_path / "t.ckpt", bp, "model.", ours)
    assert export(ckpt, "translate", tmp_path / "hf").startswith("MarianMTModel:")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert [hf_tokenizer(s)["input_ids"] for s in sources] == encode_pairs(tokenizer, sources, targets).source_ids
    assert hf_tokenizer.decode(hf_tokenizer(sources[0])["input_ids"], skip_special_tokens=True) == sources[0]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["decoder_start_token_id"], config["eos_token_id"]) == (1, 2)      # <s>, </s>
    assert config["forced_eos_token_id"] is None          # generate() stops at max_new_tokens as ours does


def seq2seq_examples(task: str) -> tuple[list[str], list[str]]:
    """Six real (source, target) pairs of the task's fixtures: Multi30k sentences, or AESLC emails' first lines."""
    if task == "translate":
        val = read_parallel(FIXTURES / "multi30k_val_head.de", FIXTURES / "multi30k_val_head.en")
        return val.sources[:6], val.targets[:6]
    table = read_table(FIXTURES / "aeslc_dev_head.jsonl", ["email", "subject"])
    return [email.splitlines()[0] for email in table["email"][:6]], table["subject"][:6]


@pytest.mark.parametrize("task", ["translate", "summarize"])
def test_seq2seq_task_is_marian_with_the_same_logits(task, tmp_path_factory, tmp_path, capsys):
    from tasks.seq2seq import SummarizationTask, TranslationTask
    ckpt = fit(tmp_path_factory, task)
    out = tmp_path / "hf"
    assert "MarianMTModel" in export_cli(task, ckpt, out, capsys)
    task_class = TranslationTask if task == "translate" else SummarizationTask
    ours = task_class.load_from_checkpoint(ckpt, map_location="cpu").eval().model
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(out)).eval()
    tokenizer = tokenizer_from_str(read_checkpoint(ckpt)["task"]["tokenizer"])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    sources, targets = seq2seq_examples(task)
    assert [hf_tokenizer(s)["input_ids"] for s in sources] == encode_pairs(tokenizer, sources, targets).source_ids
    src, src_mask, tgt, tgt_mask = seq2seq_batch(tokenizer, sources, targets)
    with torch.no_grad():
        a = ours(src, tgt, src_mask)
        b = theirs(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
    assert close_on(a, b, tgt_mask) <= ATOL


@pytest.mark.parametrize("setting, message", [({"norm_first": True}, "pre-norm"),
                                              ({"embeddings": "bert"}, "'bert' embeddings")])
def test_bad_input_what_marian_cannot_express_is_refused_in_one_line(multi30k, tmp_path, setting, message):
    """Named before the tokenizer is looked at: a warm-started model's WordPiece vocabulary has no <s> / </s>, and
    saying so would hide the reason. A refused export leaves no directory."""
    tokenizer = multi30k[0]
    ours = small_transformer(tokenizer.get_vocab_size(), **setting)
    wordpiece = load_tokenizer(str(FIXTURES / "qa_vocab.txt")).to_str()
    bp = Blueprint("summarize", "transformer", asdict(ours.config), wordpiece)
    with pytest.raises(ConfigError, match=message) as err:
        export(save_ckpt(tmp_path / "t.ckpt", bp, "model.", ours), "summarize", tmp_path / "hf")
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------
def test_bad_input_missing_or_another_tasks_checkpoint_or_out_file_is_one_line(classify_mean, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (["ner", "export", "--ckpt_path", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "a")], "not found"),
        (["ner", "export", "--ckpt_path", str(classify_mean), "--out", str(tmp_path / "b")],
         "this is a 'classify' checkpoint, not a 'ner' one"),
        (["classify", "export", "--ckpt_path", str(classify_mean), "--out", str(tmp_path / "file")],
         "a file, not a directory"),
        (["classify", "export", "--out", str(tmp_path / "c")], "--ckpt_path"),
        (["classify", "export", "--ckpt_path", str(classify_mean), "--out", str(tmp_path)], "not empty"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not any((tmp_path / d).exists() for d in "abc")
