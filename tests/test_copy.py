"""The pointer-generator output layer (modeling/copy.py): a distribution over the vocabulary; all generation at
p_gen = 1 and all copying (of real, never padded, source tokens) at p_gen = 0; decoding with the KV cache and the
projected memory equal to decoding the whole prefix; beam 1 equal to greedy; the loss equal to the mixture's
label-smoothed NLL; a copy model learning to copy ids it never saw as targets; the Marian export refusing it."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES

import run
from modeling import Transformer, TransformerConfig
from modeling.losses import smoothed_nll
from modeling.generation import beam_search, generate
from modeling.hf import save_transformer

V = 60


def copy_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = dict(src_vocab_size=V, tgt_vocab_size=V, hidden_size=32, num_encoder_layers=1, num_decoder_layers=2,
                  num_heads=4, ffn_size=64, max_positions=64, dropout=0.0, copy=True)
    return Transformer(TransformerConfig(**{**config, **overrides}))


def batch():
    torch.manual_seed(1)
    src = torch.randint(4, V - 1, (3, 10))
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    src[1, 6:] = V - 1                    # padding positions hold an id that appears nowhere else
    tgt = torch.randint(4, V, (3, 7))
    return src, mask, tgt


def set_gate(model: Transformer, bias: float) -> None:
    with torch.no_grad():
        model.copy.gate.weight.zero_()
        model.copy.gate.bias.fill_(bias)


def test_the_mixture_is_a_distribution_and_its_limits_are_generation_and_copying():
    model = copy_model().eval()
    src, mask, tgt = batch()
    with torch.no_grad():
        log_p = model(src, tgt, mask)                                                 # (B, T, V)
        torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3, 7))
        set_gate(model, 40.0)                                                         # p_gen = 1: generate only
        memory = model.encode(src, mask)
        states = model.decoder_states(tgt, memory, mask)
        logits = states @ model.tgt_embed.token.weight.t()
        torch.testing.assert_close(model(src, tgt, mask), logits.log_softmax(-1), atol=1e-5, rtol=1e-5)
        set_gate(model, -40.0)                                                        # p_gen = 0: copy only
        p = model(src, tgt, mask).exp()
        for b in range(3):
            real = src[b][mask[b].bool()]
            assert p[b][:, real.unique()].sum(-1).allclose(torch.ones(7), atol=1e-5)  # all mass on the source's ids
        assert float(p[1, :, V - 1].max()) < 1e-6                                       # none on padding positions
        attn = model.copy.attention(states, model.copy_source(memory, src, mask))     # (B, T, S)
        expected = torch.zeros(3, 7, V).scatter_add(-1, src[:, None, :].expand(-1, 7, -1), attn)
        torch.testing.assert_close(p, expected, atol=1e-6, rtol=1e-5)


def test_cached_decoding_beam_and_greedy_agree_with_the_full_prefix():
    model = copy_model().eval()
    src, mask, tgt = batch()
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model(src, tgt, mask)
        decoder = model.decoder_for(memory, mask, src)
        cache = decoder.new_cache(3, 7)
        stepped = torch.cat([decoder(tgt[:, t:t + 1], cache) for t in range(7)], dim=1)
        torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
        start = torch.full((3, 1), 1)
        greedy = generate(model.decoder_for(memory, mask, src), start, 9)
        assert torch.equal(greedy, generate(model.decoder_for(memory, mask, src), start, 9, use_cache=False))
        assert torch.equal(greedy, beam_search(model.decoder_for(memory, mask, src), start, 9, beam_size=1))
        beams = beam_search(model.decoder_for(memory, mask, src), start, 9, beam_size=4)
        assert beams.shape[0] == 3
    with pytest.raises(ValueError, match="source ids"):
        model.decoder_for(memory, mask)


def test_loss_is_the_label_smoothed_nll_of_the_mixture():
    model = copy_model()
    src, mask, tgt = batch()
    tgt[2, 4:] = 0                                                                    # padded targets not scored
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    scored = tgt_out != 0
    for eps in (0.0, 0.1):
        log_p = model(src, tgt_in, mask)[scored]
        expected = (1 - eps) * -log_p.gather(1, tgt_out[scored][:, None]).mean() - eps * log_p.mean()
        torch.testing.assert_close(model.loss(src, tgt_in, tgt_out, mask, label_smoothing=eps), expected)
    logits = torch.randn(11, V)
    target = torch.randint(0, V, (11,))
    torch.testing.assert_close(smoothed_nll(logits.log_softmax(-1), target, 0.1),
                               F.cross_entropy(logits, target, label_smoothing=0.1))


def copy_accuracy(copy: bool) -> tuple[float, float]:
    """Train a small model on "the target is the source's first three tokens" with source ids 4-39 only; greedy
    accuracy on new sources of those ids, and on sources of ids 40-59, never seen in training."""
    torch.manual_seed(0)
    model = copy_model(num_decoder_layers=1, copy=copy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    bos = torch.full((32, 1), 1)
    for _ in range(300):
        src = torch.randint(4, 40, (32, 8))
        tgt = torch.cat([bos, src[:, :3]], dim=1)
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    accuracy = []
    for low, high in ((4, 40), (40, V)):
        src = torch.randint(low, high, (64, 8))
        with torch.no_grad():
            out = generate(model.decoder_for(model.encode(src), None, src), bos[:1].expand(64, 1), 3)[:, 1:]
        accuracy.append(float((out == src[:, :3]).float().mean()))
    return accuracy[0], accuracy[1]


def test_copy_model_copies_ids_never_seen_in_training():
    """Without the copy layer the unseen ids are never produced; with it, a good part of them is copied (not all:
    once the decoder reads an unseen id back as its input, that embedding is untrained)."""
    seen, unseen = copy_accuracy(copy=True)
    plain_seen, plain_unseen = copy_accuracy(copy=False)
    assert seen > 0.95 and plain_seen > 0.9
    assert plain_unseen == 0.0
    assert unseen > 0.3, unseen


def test_marian_export_refuses_a_copy_model(tmp_path):
    with pytest.raises(ValueError, match="copy"):
        save_transformer(copy_model(), tmp_path, 1, 2)


def test_copy_needs_one_vocabulary():
    with pytest.raises(ValueError, match="share_embeddings"):
        copy_model(share_embeddings=False)


def test_summarize_with_copy_fits_tests_and_predicts_from_the_checkpoint(tmp_path):
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--wandb", "false"]
    config = ("{hidden_size: 32, num_encoder_layers: 1, num_decoder_layers: 1, num_heads: 2, ffn_size: 64, "
              "max_positions: 256, copy: true}")
    run_dir = tmp_path / "run"
    assert run.main(["summarize", "fit", "--run_dir", str(run_dir), "--data.cache_dir", str(tmp_path / "cache"),
                     "--model.config", config, *quiet]) == 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert stored["task"]["model_config"]["copy"] is True
    assert any(name.startswith("model.copy.") for name in stored["state_dict"])
    assert run.main(["summarize", "test", "--ckpt_path", str(ckpt), "--run_dir", str(tmp_path / "t"), *quiet]) == 0
    out = tmp_path / "pred.jsonl"
    assert run.main(["summarize", "predict", "--ckpt_path", str(ckpt), "--predict_output", str(out),
                     "--run_dir", str(tmp_path / "p"), *quiet]) == 0
    emails = (FIXTURES / "aeslc_dev_head.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(emails)
    assert [json.loads(line)["source"] for line in out.read_text(encoding="utf-8").splitlines()] == \
        [json.loads(line)["email"].strip() for line in emails]
