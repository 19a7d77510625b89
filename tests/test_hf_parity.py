"""Parity with `transformers` (test-only dependency): loading, and exporting what `transformers` loads back."""
from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from modeling import BERT, GPT, BertConfig, GPTConfig  # noqa: E402
from modeling.hf import load_bert, load_gpt2, save_bert, save_gpt2  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A stirring, funny and finally transporting re-imagining of Beauty and the Beast.",
    "EU rejects German call to boycott British lamb.",
    "Peter Blackburn",
]


def _encode(directory, sentences):
    tok = transformers.BertTokenizerFast.from_pretrained(str(directory))
    return tok(sentences, padding=True, return_tensors="pt")


def test_minilm_matches_transformers_on_real_sentences(shared_data):
    directory = shared_data("models", "all-MiniLM-L6-v2")
    batch = _encode(directory, SENTENCES)
    ours = load_bert(directory).eval()
    assert ours.load_report["initialised"] == [] and ours.load_report["ignored"] == []
    theirs = transformers.BertModel.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        a = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        b = theirs(**batch)
    real = batch["attention_mask"].bool()
    assert (a.last_hidden_state - b.last_hidden_state)[real].abs().max().item() <= 1e-4
    assert (a.pooled - b.pooler_output).abs().max().item() <= 1e-4


def test_missing_pretraining_heads_are_reported_by_name(shared_data, caplog):
    directory = shared_data("models", "all-MiniLM-L6-v2")
    with caplog.at_level(logging.WARNING):
        model = load_bert(directory, pretraining_heads=True)
    initialised = model.load_report["initialised"]
    assert "mlm_head.dense.weight" in initialised and "nsp_head.weight" in initialised
    assert not any(k.startswith(("embeddings.", "layers.")) for k in initialised)
    assert "mlm_head.dense.weight" in caplog.text


def test_bert_export_loads_back_into_transformers(tmp_path):
    torch.manual_seed(0)
    ours = BERT(BertConfig(vocab_size=200, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64),
                pretraining_heads=True).eval()
    save_bert(ours, tmp_path)
    theirs = transformers.BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(1, 200, (2, 11))
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    with torch.no_grad():
        a = ours(ids, types)
        b = theirs(input_ids=ids, token_type_ids=types)
    torch.testing.assert_close(ours.mlm_logits(a.last_hidden_state), b.prediction_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.nsp_logits(a.pooled), b.seq_relationship_logits, atol=1e-4, rtol=1e-4)
    again = load_bert(tmp_path, pretraining_heads=True).eval()          # and our own export round-trips
    with torch.no_grad():
        torch.testing.assert_close(again(ids, types).last_hidden_state, a.last_hidden_state)


def test_random_gpt2_from_transformers_gives_same_logits(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=500, n_positions=64, n_embd=48, n_layer=3, n_head=4)
    theirs = transformers.GPT2LMHeadModel(config).eval()
    theirs.save_pretrained(str(tmp_path))
    ours = load_gpt2(tmp_path).eval()
    assert ours.load_report == {"initialised": [], "ignored": []}
    ids = torch.randint(0, 500, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)
        hf_greedy = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    from modeling.generation import generate
    assert torch.equal(generate(ours, ids, 12), hf_greedy)


def test_gpt_export_loads_back_into_transformers(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=300, max_positions=32, num_layers=2, num_heads=2, hidden_size=32)).eval()
    save_gpt2(ours, tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_untied_gpt_head_round_trips_through_transformers(tmp_path):
    """tie_embeddings=False: the LM head is its own matrix, exported as lm_head.weight and read back."""
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=300, max_positions=32, num_layers=2, num_heads=2, hidden_size=32,
                         tie_embeddings=False)).eval()
    assert ours.lm_head is not None and not torch.equal(ours.head_weight, ours.embeddings.token.weight)
    save_gpt2(ours, tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    assert not theirs.config.tie_word_embeddings
    ids = torch.randint(0, 300, (3, 20))
    again = load_gpt2(tmp_path).eval()
    assert again.load_report == {"initialised": [], "ignored": []} and not again.config.tie_embeddings
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(again(ids), ours(ids))
