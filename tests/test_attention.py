"""`run.py <task> attention`: the saved weights are the network's own attention probabilities (equal to
softmax(QKᵀ/√d) recomputed from the Q and K of the forward pass, and to transformers' own on MiniLM; rows sum to 1,
padded and future positions are 0) for BERT, GPT and the encoder-decoder; the pictures have one panel per head; each
task's checkpoint is read as its data reads text; bad input is one line."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import run
from conftest import FIXTURES
from data.conll import Sentence, build_windows
from data.lm_tokenizer import TextTokenizer
from data.readers import read_table
from data.seq2seq import encode_pairs, read_parallel, train_tokenizer
from data.tokenization import load_tokenizer, tokenizer_from_str
from modeling import BERT, GPT, BertConfig, GPTConfig, Transformer, TransformerConfig
from modeling.attention import MultiHeadAttention
from tasks.attention import record_attention
from tasks.checkpoint import Blueprint, read_checkpoint
from tasks.export import export, network
from tasks.plots import attention_figure

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
SST2 = read_table(FIXTURES / "sst2_dev.tsv", ["sentence", "label"])["sentence"][:4]
SENTENCE = "The animal didn't cross the street because it was too tired"


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of rows padded with 0."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, (torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]).long()


class Inputs:
    """Every attention module's query input and key input, as its forward received them."""

    def __init__(self, model: torch.nn.Module):
        self.seen: dict[MultiHeadAttention, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in model.modules():
            if isinstance(m, MultiHeadAttention):
                m.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = args[0]
        self.seen[module] = (x, kwargs.get("memory") if kwargs.get("memory") is not None else x)


def recomputed(module: MultiHeadAttention, x: torch.Tensor, memory: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_k) from the module's projections, written out here; `keep` (B, T, S) is where a query may
    look -> (B, H, T, S)."""
    D, H = x.size(-1), module.num_heads
    if module.cross:
        q = module.q_proj(x)
        k = module.kv_proj(memory)[..., :D]
    else:
        q, k, _ = module.qkv_proj(x).split(D, dim=-1)
    q, k = (t.unflatten(-1, (H, D // H)).transpose(1, 2) for t in (q, k))                     # (B, H, *, Dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    return scores.masked_fill(~keep[:, None].bool(), float("-inf")).softmax(-1)


def check(maps: torch.Tensor, modules: list[MultiHeadAttention], inputs: Inputs, keep: torch.Tensor) -> None:
    """maps (B, L, H, T, S) are each layer's recomputed weights; rows sum to 1, forbidden positions are 0."""
    for layer, module in enumerate(modules):
        torch.testing.assert_close(maps[:, layer], recomputed(module, *inputs.seen[module], keep), atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5, rtol=0)
    assert (maps.permute(1, 2, 0, 3, 4)[..., ~keep.bool()] == 0).all()


def test_bert_weights_are_its_own_probabilities_and_padding_gets_none(tmp_path):
    tokenizer = load_tokenizer(str(FIXTURES.parent.parent / "data" / "samples" / "sst2" / "tokenizer.json"))
    torch.manual_seed(0)
    bert = BERT(BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_layers=3, num_heads=4,
                           ffn_size=64)).eval()
    ids, mask = padded([e.ids for e in tokenizer.encode_batch(SST2)])
    inputs = Inputs(bert)
    maps = record_attention(bert, ids, None, mask)["self"]                               # (B, L, H, T, S)
    assert maps.shape == (4, 3, 4, ids.size(1), ids.size(1)) and (mask == 0).any()
    check(maps, [layer.self_attn for layer in bert.layers], inputs, mask[:, None, :].expand(-1, ids.size(1), -1))
    assert all(not layer.self_attn.keep_weights and layer.self_attn.weights is None for layer in bert.layers)


def test_gpt_weights_are_its_own_probabilities_and_the_future_gets_none():
    text = (FIXTURES / "tinyshakespeare_head.txt").read_text()[:3000]
    tokenizer = TextTokenizer.char_from_text([text])
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, max_positions=64, num_layers=2, num_heads=2, hidden_size=32))
    ids = torch.tensor([tokenizer.encode(text[i:i + 40]) for i in (0, 500)])
    inputs = Inputs(gpt)
    maps = record_attention(gpt, ids)["self"]
    causal = torch.ones(40, 40).tril().expand(2, -1, -1)
    check(maps, [layer.self_attn for layer in gpt.layers], inputs, causal)
    assert (maps.triu(diagonal=1) == 0).all()


def test_transformer_encoder_decoder_and_cross_weights_are_its_own():
    train = read_parallel(FIXTURES / "multi30k_train_head.de", FIXTURES / "multi30k_train_head.en")
    tokenizer = train_tokenizer(train.sources + train.targets, vocab_size=500)
    pairs = encode_pairs(tokenizer, train.sources[:3], train.targets[:3])
    src, src_mask = padded(pairs.source_ids)
    tgt, tgt_mask = padded([t[:-1] for t in pairs.target_ids])
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=500, tgt_vocab_size=500, hidden_size=32, num_encoder_layers=2,
                                          num_decoder_layers=3, num_heads=4, ffn_size=64)).eval()
    inputs = Inputs(model)
    maps = record_attention(model, src, tgt, src_mask)
    assert set(maps) == {"encoder", "decoder", "cross"}
    S, T = src.size(1), tgt.size(1)
    check(maps["encoder"], [b.self_attn for b in model.encoder], inputs, src_mask[:, None, :].expand(-1, S, -1))
    check(maps["decoder"], [b.self_attn for b in model.decoder], inputs, torch.ones(T, T).tril().expand(3, -1, -1))
    check(maps["cross"], [b.cross_attn for b in model.decoder], inputs, src_mask[:, None, :].expand(-1, T, -1))


def test_figure_has_one_panel_per_head_showing_that_head():
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(5), size=(12, 4)).astype(np.float32)                 # (H, T, S)
    queries, keys = ["a", "$x$", "\n", "d"], ["[CLS]", "b", " ", "e", "[SEP]"]
    fig = attention_figure(weights, queries, keys, "self attention, layer 0")
    assert len(fig.axes) == 12
    for h, ax in enumerate(fig.axes):
        assert ax.get_title() == f"head {h}"
        np.testing.assert_array_equal(ax.images[0].get_array(), weights[h])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", r"\$x\$", "\\n", "d"]
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["[CLS]", "b", "␣", "e", "[SEP]"]
    one = attention_figure(weights[[7]], queries, keys, "layer 0", heads=[7])
    assert len(one.axes) == 1 and one.axes[0].get_title() == "head 7"


def test_minilm_sentence_writes_transformers_own_attentions(shared_data, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    directory = shared_data("models", "all-MiniLM-L6-v2")
    out = tmp_path / "att"
    assert run.main(["classify", "attention", "--hf_dir", str(directory), "--text", SENTENCE, "--out", str(out)]) == 0
    assert "wrote 6 pictures and 1 arrays" in capsys.readouterr().out
    tokens = json.loads((out / "tokens.json").read_text())["self"]
    assert tokens["queries"] == tokens["keys"] == ["[CLS]", "the", "animal", "didn", "'", "t", "cross", "the",
                                                    "street", "because", "it", "was", "too", "tired", "[SEP]"]
    assert sorted(p.name for p in out.glob("*.png")) == [f"self_layer{i}.png" for i in range(6)]
    ours = np.load(out / "self.npy")
    assert ours.shape == (6, 12, 15, 15) and ours.dtype == np.float32
    hf = transformers.BertModel.from_pretrained(str(directory), attn_implementation="eager").eval()
    batch = transformers.BertTokenizerFast.from_pretrained(str(directory))(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        theirs = torch.stack(hf(**batch, output_attentions=True).attentions)[:, 0]         # (L, H, T, S)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
    it, animal = tokens["queries"].index("it"), tokens["keys"].index("animal")
    assert ours[3, 1, it, animal] > 0.5           # the head that resolves "it" (docs/attention_minilm_layer3.png)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for task, extra in (("ner", ["--model.casing", "true"]), ("lm", [])):
        run_dir = tmp_path_factory.mktemp(task)
        assert run.main([task, "fit", "--trainer.max_steps", "2", "--run_dir", str(run_dir), "--wandb", "false",
                         *QUIET, *extra]) == 0
        out[task] = run_dir / "checkpoints" / "last.ckpt"
    return out


def test_ner_checkpoint_reads_casing_classes_as_segments_as_in_training(fitted, tmp_path):
    out = tmp_path / "att"
    text = "EU rejects German call to boycott British lamb ."
    assert run.main(["ner", "attention", "--ckpt_path", str(fitted["ner"]), "--text", text, "--out", str(out),
                     "--per_head", "--layers", "1"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["self_layer1_head0.png", "self_layer1_head1.png"]
    ckpt = read_checkpoint(fitted["ner"])
    bert = network(Blueprint.from_dict(ckpt["task"]), ckpt["state_dict"])
    tokenizer = tokenizer_from_str(ckpt["task"]["tokenizer"])
    window = build_windows(tokenizer, [Sentence(text.split(), ["O"] * 9, 0)], None, max_length=128)[0]
    assert json.loads((out / "tokens.json").read_text())["self"]["queries"] == \
        [tokenizer.id_to_token(i) for i in window.input_ids]
    ids, casing = torch.tensor([window.input_ids]), torch.tensor([window.casing])
    assert casing.unique().numel() > 2                                  # upper, title, lower, specials
    saved = np.load(out / "self.npy")
    with_casing = record_attention(bert, ids, casing)["self"][0].numpy()
    without = record_attention(bert, ids, torch.zeros_like(ids))["self"][0].numpy()
    np.testing.assert_array_equal(saved, with_casing)
    assert np.abs(saved - without).max() > 1e-7       # two steps from equal casing rows: small, but not nothing


def test_lm_checkpoint_attends_only_to_the_past(fitted, tmp_path):
    out = tmp_path / "att"
    text = "ROMEO:\nWhat art thou?"
    assert run.main(["lm", "attention", "--ckpt_path", str(fitted["lm"]), "--text", text, "--out", str(out)]) == 0
    saved = np.load(out / "self.npy")                                   # one token per character
    assert saved.shape == (2, 2, len(text), len(text))
    assert (np.triu(saved, k=1) == 0).all() and np.allclose(saved.sum(-1), 1, atol=1e-5)
    assert json.loads((out / "tokens.json").read_text())["self"]["keys"] == list(text)


def test_exported_gpt2_directory_gives_the_checkpoints_attention(fitted, tmp_path):
    """--hf_dir with a GPT-2 directory (here our lm checkpoint exported) reads the same tokens and weights."""
    export(fitted["lm"], "lm", tmp_path / "hf")
    for source, out in ((["--ckpt_path", str(fitted["lm"])], "a"), (["--hf_dir", str(tmp_path / "hf")], "b")):
        assert run.main(["lm", "attention", *source, "--text", "ROMEO:\nWhat?", "--out", str(tmp_path / out)]) == 0
    a, b = (json.loads((tmp_path / d / "tokens.json").read_text()) for d in "ab")
    assert a == b and a["self"]["keys"] == list("ROMEO:\nWhat?")
    np.testing.assert_allclose(np.load(tmp_path / "b" / "self.npy"), np.load(tmp_path / "a" / "self.npy"), atol=1e-6)


def test_encoder_decoder_checkpoint_draws_encoder_decoder_and_cross_attention(tmp_path, capsys):
    """A translate/summarize checkpoint (tasks still being written): source + </s>, <s> + target prefix."""
    from tasks.attention import main
    train = read_parallel(FIXTURES / "multi30k_train_head.de", FIXTURES / "multi30k_train_head.en")
    tokenizer = train_tokenizer(train.sources + train.targets, vocab_size=500)
    model = Transformer(TransformerConfig(src_vocab_size=500, tgt_vocab_size=500, hidden_size=32, num_encoder_layers=2,
                                          num_decoder_layers=3, num_heads=4, ffn_size=64))
    bp = Blueprint("translate", "transformer", asdict(model.config), tokenizer.to_str())
    ckpt = tmp_path / "t.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "task": bp.to_dict()}, ckpt)
    out = tmp_path / "att"
    assert main("translate", ["--ckpt_path", str(ckpt), "--text", "Ein Mann schläft auf einem Sofa.",
                              "--target_prefix", "A man", "--out", str(out)]) == 0
    tokens = json.loads((out / "tokens.json").read_text())
    source, target = tokens["encoder"]["keys"], tokens["decoder"]["keys"]
    assert source[-1] == "</s>" and target[0] == "<s>" and tokens["cross"] == {"queries": target, "keys": source}
    shapes = {k: np.load(out / f"{k}.npy").shape for k in ("encoder", "decoder", "cross")}
    S, T = len(source), len(target)
    assert shapes == {"encoder": (2, 4, S, S), "decoder": (3, 4, T, T), "cross": (3, 4, T, S)}
    assert len(list(out.glob("*.png"))) == 2 + 3 + 3


def test_bad_input_is_one_line_and_exit_code_2(fitted, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text('{"model_type": "t5"}')
    lm, ner, x = str(fitted["lm"]), str(fitted["ner"]), str(tmp_path / "x")
    cases = [
        (["lm", "attention", "--ckpt_path", str(tmp_path / "none.ckpt"), "--text", "a", "--out", x], "not found"),
        (["lm", "attention", "--ckpt_path", ner, "--text", "a", "--out", x], "this is a 'ner' checkpoint"),
        (["lm", "attention", "--ckpt_path", lm, "--text", "a", "--out", str(tmp_path / "file")], "a file, not a dir"),
        (["lm", "attention", "--ckpt_path", lm, "--text", "a", "--text_pair", "b", "--out", x], "--text_pair"),
        (["ner", "attention", "--ckpt_path", ner, "--text", "a", "--target_prefix", "b", "--out", x],
         "--target_prefix"),
        (["lm", "attention", "--ckpt_path", lm, "--text", "a", "--layers", "7", "--out", x], "--layers 7"),
        (["lm", "attention", "--hf_dir", str(tmp_path / "t5"), "--text", "a", "--out", x], "model_type 't5'"),
        (["lm", "attention", "--ckpt_path", lm, "--hf_dir", "y", "--text", "a", "--out", x], "not allowed with"),
        (["lm", "attention", "--ckpt_path", lm, "--text", "ž", "--out", x], "not in the character vocabulary"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert not (tmp_path / "x").exists()
