"""Warm-starting the encoder-decoder from a pretrained BERT (Rothe et al. 2020) with the real all-MiniLM-L6-v2: the
encoder computes what modeling.hf's BERT computes on the same input, every BERT weight it should take is taken, the
report names what is new, and `run.py summarize` trains and predicts from such a start with the BERT's WordPiece."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES

import run
from data.seq2seq import Seq2SeqDataModule, special_tokens
from data.tokenization import load_wordpiece
from modeling import Transformer
from modeling.hf import load_bert
from modeling.transformer import bert_weight_names, config_from_bert, load_bert_weights

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
AESLC_TRAIN = FIXTURES / "aeslc_train_head.jsonl"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    from conftest import require_shared
    return require_shared("models", "all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def bert(minilm):
    return load_bert(minilm, pooler=False).eval()


def email_batch(minilm, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Real AESLC emails as the data module encodes them for a warm start: [CLS] x [SEP], padded, (B, S) ids + mask."""
    data = Seq2SeqDataModule(train_file=str(AESLC_TRAIN), source_column="email", target_column="subject",
                             tokenizer=str(minilm), max_source_length=64, cache_dir=None)
    data.setup("fit")
    by_length = sorted(data.encoded("train").source_ids, key=len)
    rows = by_length[:n // 2] + by_length[-n // 2:]                      # short ones padded to the long ones
    ids = torch.zeros(n, max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, (ids != 0).long()


def test_wordpiece_sources_and_targets_read_as_bert_reads(minilm):
    tokenizer = load_wordpiece(minilm)
    specials = special_tokens(tokenizer)
    assert (specials.pad, specials.bos, specials.eos, specials.source_bos) == (0, 101, 102, True)
    data = Seq2SeqDataModule(train_file=str(AESLC_TRAIN), source_column="email", target_column="subject",
                             tokenizer=str(minilm), max_source_length=64, max_target_length=16, cache_dir=None)
    data.setup("fit")
    encoded = data.encoded("train")
    subject = data.examples("train").targets[0]
    assert all(ids[0] == 101 and ids[-1] == 102 and len(ids) <= 64 for ids in encoded.source_ids)
    assert encoded.target_ids[0] == [101, *tokenizer.encode(subject, add_special_tokens=False).ids[:15], 102]
    assert tokenizer.decode(encoded.target_ids[0], skip_special_tokens=True) == subject.lower()


@pytest.mark.parametrize("decoder", [False, True])
def test_warm_started_encoder_computes_what_the_bert_computes(minilm, bert, decoder):
    torch.manual_seed(0)
    model = Transformer(config_from_bert(bert, num_decoder_layers=2)).eval()
    report = load_bert_weights(model, bert, decoder=decoder)
    ids, mask = email_batch(minilm)
    assert mask.min() == 0                                               # padded rows among them
    with torch.no_grad():
        ours = model.encode(ids, mask)
        reference = bert(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=1e-5)
    # every BERT weight (the pooler aside: a seq2seq model has no use for it) starts our encoder
    taken = set(bert_weight_names(model, bert, decoder).values())
    assert taken == set(bert.state_dict())
    assert set(report["loaded"]) | set(report["new"]) == {n for n, _ in model.named_parameters()}
    assert all(name.startswith("decoder.") for name in report["new"])
    if decoder:      # BERT2BERT: only the cross-attention is new
        assert {n.split(".", 2)[2].split(".")[0] for n in report["new"]} == {"cross_attn", "cross_residual"}
        torch.testing.assert_close(model.decoder[1].self_attn.qkv_proj.weight, bert.layers[1].self_attn.qkv_proj.weight)
        torch.testing.assert_close(model.decoder[1].self_residual.norm.weight, bert.layers[1].attn_residual.norm.weight)
    else:            # BERT2RND: the whole decoder is new
        assert len(report["new"]) == sum(1 for n, _ in model.named_parameters() if n.startswith("decoder."))


def test_warm_start_errors_name_the_setting(bert):
    with pytest.raises(ValueError, match="7 decoder layers, but the BERT has only 6"):
        load_bert_weights(Transformer(config_from_bert(bert, num_decoder_layers=7)), bert, decoder=True)


def test_summarize_from_minilm_through_run_py(minilm, bert, tmp_path, caplog):
    """lr 1e-12: AdamW's first steps move each weight by about lr, so after them the checkpoint still holds the BERT's
    weights (to 1e-9): what the task built and saved is the warm start."""
    run_dir = tmp_path / "run"
    assert run.main(["summarize", "fit", "--model.pretrained", str(minilm), "--model.decoder_init", "pretrained",
                     "--model.config", "{num_decoder_layers: 2, dropout: 0.0}", "--model.lr", "1e-12",
                     "--trainer.max_steps", "2", "--data.max_source_length", "64", "--run_dir", str(run_dir),
                     "--wandb", "false", "--data.cache_dir", str(tmp_path / "cache"), *QUIET]) == 0
    log = caplog.text
    assert f"warm start from {minilm}: loaded 101 tensors: tgt_embed.token.weight" in log
    assert f"warm start from {minilm}: new 16 tensors: decoder.{{0-1}}.cross_attn.q_proj.weight" in log
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    bp = ckpt["task"]
    assert bp["model_config"]["embeddings"] == "bert" and bp["model_config"]["layer_norm_eps"] == 1e-12
    assert bp["model_config"]["activation"] == "gelu" and bp["model_config"]["num_decoder_layers"] == 2
    assert json.loads(bp["tokenizer"])["model"]["type"] == "WordPiece"
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    for name, bert_name in bert_weight_names(Transformer(config_from_bert(bert, num_decoder_layers=2)), bert,
                                             decoder=True).items():
        expected = bert.state_dict()[bert_name]
        expected = expected[:1] if name.endswith("segment.weight") else expected
        torch.testing.assert_close(state[name], expected, atol=1e-9, rtol=0)
    written = json.loads((run_dir / "warm_start.json").read_text())
    assert len(written["loaded"]) == 5 + 12 * 6 + 12 * 2 and len(written["new"]) == 8 * 2   # 12 tensors a layer
    pred = tmp_path / "pred.jsonl"
    assert run.main(["summarize", "predict", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                     "--data.predict_file", str(AESLC_TRAIN), "--predict_output", str(pred), "--model.beam_size", "2",
                     "--run_dir", str(tmp_path / "p"), *QUIET]) == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == 40 and all(isinstance(r["summary"], str) for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--model.config", "{hidden_size: 128}"], "model.config.hidden_size: set by the pretrained BERT"),
    (["--model.config", "{num_decoder_layers: 7}", "--model.decoder_init", "pretrained"],
     "7 decoder layers, but the BERT has only 6"),
    (["--model.config", "{dropout: 0.1}", "--model.known_words", "true"],
     "model.known_words: needs a vocabulary whose word-start pieces begin with"),
])
def test_bad_warm_start_settings_are_one_line(minilm, tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    code = run.main(["summarize", "fit", "--model.pretrained", str(minilm), "--run_dir", str(run_dir),
                     "--wandb", "false", "--data.cache_dir", str(tmp_path / "cache"), *QUIET, *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run.py summarize: error:")]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not run_dir.exists()


def test_bad_input_decoder_init_pretrained_needs_a_pretrained_bert(tmp_path, capsys):
    code = run.main(["summarize", "fit", "--model.decoder_init", "pretrained", "--run_dir", str(tmp_path / "run"),
                     "--wandb", "false", "--data.cache_dir", str(tmp_path / "cache"), *QUIET])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run.py summarize: error:")]
    assert code == 2 and len(err) == 1 and "model.decoder_init pretrained: needs model.pretrained" in err[0]


def test_warm_started_decoder_trains_at_head_lr_and_encoder_at_lr(minilm, tmp_path):
    """The decoder's cross-attention starts new: `head_lr` gives the decoder its own learning rate, the BERT part
    (shared embedding, encoder layers) keeps `lr` (with `layer_decay` down its layers); every weight in one group."""
    run_dir = tmp_path / "run"
    assert run.main(["summarize", "fit", "--model.pretrained", str(minilm), "--model.config",
                     "{num_decoder_layers: 1}", "--model.lr", "1e-4", "--model.head_lr", "1e-3",
                     "--model.layer_decay", "0.5", "--model.warmup_steps", "0", "--model.schedule", "constant",
                     "--trainer.max_steps", "1", "--data.max_source_length", "32", "--run_dir", str(run_dir),
                     "--wandb", "false", "--data.cache_dir", str(tmp_path / "cache"), *QUIET]) == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    lr = {g["name"]: g["lr"] for g in groups}
    assert lr["head"] == lr["head.no_decay"] == 1e-3                     # the decoder
    assert lr["layer5"] == 1e-4 and lr["layer0"] == pytest.approx(1e-4 * 0.5 ** 5)
    assert lr["embeddings"] == pytest.approx(1e-4 * 0.5 ** 6)
    names = [k.removeprefix("model.") for k in ckpt["state_dict"]]
    decoder = sum(1 for n in names if n.startswith("decoder."))
    assert sum(len(g["params"]) for g in groups if g["name"].startswith("head")) == decoder
    indices = [i for g in groups for i in g["params"]]
    tensors = [n for n in names if not n.startswith("src_embed.")]   # src_embed is tgt_embed: saved under both names
    assert len(indices) == len(set(indices)) == len(tensors)


@pytest.mark.parametrize("task", ["summarize", "lm"])
@pytest.mark.parametrize("option", [["--model.head_lr", "0.001"], ["--model.layer_decay", "0.8"]])
def test_bad_input_head_lr_or_layer_decay_without_a_pretrained_encoder(task, option, tmp_path, capsys):
    """From scratch there is no encoder to set apart from the head: the option would be silently ignored."""
    run_dir = tmp_path / "run"
    code = run.main([task, "fit", *option, "--trainer.max_steps", "1", "--run_dir", str(run_dir), "--wandb", "false",
                     *QUIET])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"run.py {task}: error:")]
    assert code == 2 and len(err) == 1, err
    assert f"{option[0][2:]} {option[1]}: the {task} model has no pretrained encoder" in err[0]
    assert not list(run_dir.rglob("*.ckpt"))
