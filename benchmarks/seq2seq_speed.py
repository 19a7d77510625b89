"""Speed of our encoder-decoder `modeling.Transformer` against `transformers`' MarianMTModel of the same shape, in one
run on one machine, on real Multi30k en->de pairs tokenised by our joint BPE (data/seq2seq.py).

(1) Training: forward + backward + AdamW step, float32, same batches, same shape (post-norm, shared vocabulary, tied
    embeddings, sinusoidal positions, ReLU FFN), same dropout, label smoothing 0.1. Ours computes the task's loss
    (tasks.seq2seq.seq2seq_loss: label-smoothed, projected onto the vocabulary chunk by chunk at the target tokens
    only); transformers' the usual way (all logits, F.cross_entropy). Tokens/s counts the non-pad source and
    target tokens of each batch.
(2) Beam-5 decoding of the first N test_2016_flickr sentences: our `beam_search` (KV cache) against
    `MarianMTModel.generate(num_beams=5)`, on the SAME weights (ours copied into the HF model; `copy_to_marian` is
    the mapping, checked by comparing the two models' logits). The model is untrained, so EOS is held off for
    `--max_new_tokens` steps in both (min length = max length): both decode exactly the same number of steps, and
    the two outputs are compared token by token.

This machine's speed drifts by ±15 % over minutes, so the two sides take turns for `--rounds` rounds; every round
is printed, and the summary gives the median ratio and its spread (min-max), not the best single round.

    python benchmarks/seq2seq_speed.py                                             # full run, records the result
    python benchmarks/seq2seq_speed.py --rounds 1 --steps 3 --sentences 8 --no_record   # smoke test
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record import record  # noqa: E402
from data.seq2seq import BOS_ID, EOS_ID, PAD_ID, encode_pairs, read_parallel, train_tokenizer  # noqa: E402
from modeling import Transformer, TransformerConfig  # noqa: E402
from modeling.generation import beam_search  # noqa: E402
from tasks.seq2seq import seq2seq_loss  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "multi30k"


# ------------------------------------------------------------------------------------------------ models
def our_model(args, vocab_size: int) -> Transformer:
    return Transformer(TransformerConfig(
        src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, hidden_size=args.hidden_size,
        num_encoder_layers=args.layers, num_decoder_layers=args.layers, num_heads=args.heads, ffn_size=args.ffn_size,
        dropout=args.dropout, attention_dropout=0.0, max_positions=args.max_positions, share_embeddings=True,
        pad_token_id=PAD_ID))


def marian_model(config: TransformerConfig):
    """MarianMTModel of the same shape: post-norm, scaled embeddings, sinusoidal positions, ReLU, tied output."""
    from transformers import MarianConfig, MarianMTModel
    return MarianMTModel(MarianConfig(
        vocab_size=config.tgt_vocab_size, d_model=config.hidden_size, encoder_layers=config.num_encoder_layers,
        decoder_layers=config.num_decoder_layers, encoder_attention_heads=config.num_heads,
        decoder_attention_heads=config.num_heads, encoder_ffn_dim=config.ffn_size, decoder_ffn_dim=config.ffn_size,
        dropout=config.dropout, attention_dropout=config.attention_dropout, activation_dropout=0.0,
        activation_function=config.activation, max_position_embeddings=config.max_positions, scale_embedding=True,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID, forced_eos_token_id=None))


@torch.no_grad()
def copy_to_marian(ours: Transformer, hf) -> None:
    """Our weights into a MarianMTModel: fused Q/K/V and K/V projections split into HF's separate ones; our
    interleaved sin/cos table into Marian's position embedding (Marian's own puts all sines first)."""
    model = hf.model
    model.shared.weight.copy_(ours.tgt_embed.token.weight)
    assert hf.lm_head.weight.data_ptr() == model.shared.weight.data_ptr(), "HF output projection is not tied"
    table = ours.tgt_embed.position.table[:model.encoder.embed_positions.weight.size(0)]
    model.encoder.embed_positions.weight.copy_(table)
    model.decoder.embed_positions.weight.copy_(table)
    hf.final_logits_bias.zero_()

    def linear(dst, weight, bias):
        dst.weight.copy_(weight)
        dst.bias.copy_(bias)

    def attention(dst, src):
        """src: our MultiHeadAttention; rows of its fused projection are [W^Q; W^K; W^V] or (cross) [W^K; W^V]."""
        if src.cross:
            linear(dst.q_proj, src.q_proj.weight, src.q_proj.bias)
            kv_w, kv_b = src.kv_proj.weight.chunk(2), src.kv_proj.bias.chunk(2)
            linear(dst.k_proj, kv_w[0], kv_b[0])
            linear(dst.v_proj, kv_w[1], kv_b[1])
        else:
            qkv_w, qkv_b = src.qkv_proj.weight.chunk(3), src.qkv_proj.bias.chunk(3)
            for proj, w, b in zip((dst.q_proj, dst.k_proj, dst.v_proj), qkv_w, qkv_b):
                linear(proj, w, b)
        linear(dst.out_proj, src.out_proj.weight, src.out_proj.bias)

    def feed_forward(dst, src):
        linear(dst.fc1, src.up.weight, src.up.bias)
        linear(dst.fc2, src.down.weight, src.down.bias)

    for dst, src in zip(model.encoder.layers, ours.encoder):
        attention(dst.self_attn, src.self_attn)
        dst.self_attn_layer_norm.load_state_dict(src.attn_residual.norm.state_dict())
        feed_forward(dst, src.ffn)
        dst.final_layer_norm.load_state_dict(src.ffn_residual.norm.state_dict())
    for dst, src in zip(model.decoder.layers, ours.decoder):
        attention(dst.self_attn, src.self_attn)
        dst.self_attn_layer_norm.load_state_dict(src.self_residual.norm.state_dict())
        attention(dst.encoder_attn, src.cross_attn)
        dst.encoder_attn_layer_norm.load_state_dict(src.cross_residual.norm.state_dict())
        feed_forward(dst, src.ffn)
        dst.final_layer_norm.load_state_dict(src.ffn_residual.norm.state_dict())


# ------------------------------------------------------------------------------------------------ data
def pad(rows: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


def training_batches(encoded, batch_size: int, count: int, seed: int) -> list[dict]:
    """`count` random batches of real pairs as the task's data module makes them: source (B, S) + mask, target
    (B, T + 1) <s> y </s>."""
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    batches = []
    for k in range(count):
        chosen = order[k * batch_size:(k + 1) * batch_size]
        src = pad([encoded.source_ids[i] for i in chosen])
        tgt = pad([encoded.target_ids[i] for i in chosen])
        batches.append({"source_ids": src, "source_mask": (src != PAD_ID).long(), "target_ids": tgt,
                        "tokens": int((src != PAD_ID).sum() + (tgt[:, 1:] != PAD_ID).sum())})
    return batches


# ------------------------------------------------------------------------------------------------ timing
def train_step_fns(ours: Transformer, hf, label_smoothing: float, lr: float):
    our_opt = torch.optim.AdamW(ours.parameters(), lr=lr, betas=(0.9, 0.98), fused=True)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=lr, betas=(0.9, 0.98), fused=True)

    def ours_step(b):
        seq2seq_loss(ours, b, label_smoothing).backward()
        our_opt.step()
        our_opt.zero_grad(set_to_none=True)

    def hf_step(b):
        logits = hf(input_ids=b["source_ids"], attention_mask=b["source_mask"],
                    decoder_input_ids=b["target_ids"][:, :-1]).logits
        F.cross_entropy(logits.view(-1, logits.size(-1)), b["target_ids"][:, 1:].reshape(-1), ignore_index=PAD_ID,
                        label_smoothing=label_smoothing).backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
    return {"ours": ours_step, "transformers": hf_step}


def tokens_per_second(step, batches: list[dict], warmup: int) -> float:
    for b in batches[:warmup]:
        step(b)
    start = time.perf_counter()
    for b in batches:
        step(b)
    return sum(b["tokens"] for b in batches) / (time.perf_counter() - start)


def decode_fns(ours: Transformer, hf, beam: int, new_tokens: int):
    def ours_decode(src, mask):
        with torch.no_grad():
            memory = ours.encode(src, mask)
        start = torch.full((src.size(0), 1), BOS_ID)
        return beam_search(ours.decoder_for(memory, mask), start, new_tokens, beam_size=beam, length_penalty=1.0,
                           eos_token_id=EOS_ID, pad_token_id=PAD_ID, min_new_tokens=new_tokens)

    def hf_decode(src, mask):
        return hf.generate(input_ids=src, attention_mask=mask, num_beams=beam, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, length_penalty=1.0, early_stopping=True, do_sample=False,
                           decoder_start_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    return {"ours": ours_decode, "transformers": hf_decode}


def sentences_per_second(decode, batches: list[tuple]) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    outputs = [decode(src, mask) for src, mask in batches]
    return sum(src.size(0) for src, _ in batches) / (time.perf_counter() - start), outputs


def ratio_summary(ratios: list[float]) -> str:
    return (f"median {statistics.median(ratios):.2f}x "
            f"(spread {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds)")


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Multi30k directory (train/test .en/.de)")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn_size", type=int, default=1024)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--label_smoothing", type=float, default=0.1)
    parser.add_argument("--max_positions", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64, help="training sentences per batch")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each timed turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=200, help="test sentences decoded per model per round")
    parser.add_argument("--decode_batch_size", type=int, default=50)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=30, help="decoded steps (EOS held off until then)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_record", action="store_true", help="print only; append nothing to results.jsonl")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall_start = time.time()

    train = read_parallel(args.data / "train.en", args.data / "train.de")
    test = read_parallel(args.data / "test_2016_flickr.en", args.data / "test_2016_flickr.de")
    start = time.perf_counter()
    tokenizer = train_tokenizer(train.sources + train.targets, vocab_size=args.vocab_size)
    print(f"joint BPE, {tokenizer.get_vocab_size():,} subwords, on {len(train):,} pairs in "
          f"{time.perf_counter() - start:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads")
    encoded = encode_pairs(tokenizer, train.sources, train.targets, args.max_positions, args.max_positions)
    batches = training_batches(encoded, args.batch_size, args.steps, args.seed)

    ours = our_model(args, tokenizer.get_vocab_size())
    hf = marian_model(ours.config)
    copy_to_marian(ours, hf)
    ours.eval()
    hf.eval()
    with torch.no_grad():
        b = batches[0]
        ours_logits = ours(b["source_ids"], b["target_ids"][:, :-1], b["source_mask"])
        hf_logits = hf(input_ids=b["source_ids"], attention_mask=b["source_mask"],
                       decoder_input_ids=b["target_ids"][:, :-1]).logits
    gap = (ours_logits - hf_logits).abs().max().item()
    print(f"shape: {args.layers}+{args.layers} layers, width {args.hidden_size}, {args.heads} heads, "
          f"FFN {args.ffn_size}; "
          f"{sum(p.numel() for p in ours.parameters()):,} parameters (ours), "
          f"{sum(p.numel() for p in hf.parameters()):,} (HF); same weights: max |logit difference| {gap:.2e}")
    if gap > 1e-3:
        raise SystemExit(f"the weight mapping is wrong: logits differ by {gap}")

    print(f"\n## training: {args.steps} batches of {args.batch_size} sentences "
          f"({statistics.mean(b['tokens'] for b in batches):,.0f} tokens each), fp32, dropout {args.dropout}, "
          f"label smoothing {args.label_smoothing}")
    ours.train()
    hf.train()
    steps = train_step_fns(ours, hf, args.label_smoothing, lr=1e-4)
    train_rounds = []
    for r in range(args.rounds):
        tps = {name: tokens_per_second(step, batches, args.warmup) for name, step in steps.items()}
        train_rounds.append(tps)
        print(f"round {r + 1}: ours {tps['ours']:,.0f} tok/s, transformers {tps['transformers']:,.0f} tok/s, "
              f"ratio {tps['ours'] / tps['transformers']:.2f}x", flush=True)
    train_ratios = [t["ours"] / t["transformers"] for t in train_rounds]
    print(f"training tokens/s ours / transformers: {ratio_summary(train_ratios)}")

    print(f"\n## beam {args.beam} decoding: {args.sentences} test sentences in batches of {args.decode_batch_size}, "
          f"exactly {args.max_new_tokens} steps each, same weights")
    copy_to_marian(ours, hf)                               # the trained-for-a-few-steps weights, in both
    ours.eval()
    hf.eval()
    sources = encode_pairs(tokenizer, test.sources[:args.sentences], test.targets[:args.sentences],
                           args.max_positions).source_ids
    size = args.decode_batch_size
    decode_batches = [(src, (src != PAD_ID).long())
                      for src in (pad(sources[i:i + size]) for i in range(0, len(sources), size))]
    decoders = decode_fns(ours, hf, args.beam, args.max_new_tokens)
    decode_rounds, same = [], None
    for r in range(args.rounds):
        sps, outputs = {}, {}
        for name, decode in decoders.items():
            sps[name], outputs[name] = sentences_per_second(decode, decode_batches)
        decode_rounds.append(sps)
        same = sum(int(torch.equal(a_row, b_row)) for a, b in zip(outputs["ours"], outputs["transformers"])
                   for a_row, b_row in zip(a, b))
        print(f"round {r + 1}: ours {sps['ours']:.2f} sent/s, transformers {sps['transformers']:.2f} sent/s, "
              f"ratio {sps['ours'] / sps['transformers']:.2f}x; identical outputs {same}/{len(sources)}", flush=True)
    decode_ratios = [d["ours"] / d["transformers"] for d in decode_rounds]
    print(f"beam-{args.beam} sentences/s ours / transformers: {ratio_summary(decode_ratios)}")

    if args.no_record:
        return
    wall = time.time() - wall_start
    config = (f"Multi30k en-de {args.layers}+{args.layers}L-{args.hidden_size}d-{args.heads}h-ffn{args.ffn_size} "
              f"vocab{tokenizer.get_vocab_size()} fp32")
    median = statistics.median
    record("translate", f"{config} train b{args.batch_size} dropout {args.dropout} ls {args.label_smoothing}",
           "train_tokens_per_s", round(median(t["ours"] for t in train_rounds), 1), wall,
           baseline="transformers MarianMTModel, same shape, same batches",
           baseline_value=round(median(t["transformers"] for t in train_rounds), 1),
           ratio_median=round(median(train_ratios), 3), ratio_min=round(min(train_ratios), 3),
           ratio_max=round(max(train_ratios), 3), rounds=args.rounds, steps=args.steps)
    record("translate", f"{config} beam{args.beam} {args.max_new_tokens} steps batch {args.decode_batch_size}",
           "beam5_sentences_per_s", round(median(d["ours"] for d in decode_rounds), 3), wall,
           baseline="transformers generate(num_beams), same weights",
           baseline_value=round(median(d["transformers"] for d in decode_rounds), 3),
           ratio_median=round(median(decode_ratios), 3), ratio_min=round(min(decode_ratios), 3),
           ratio_max=round(max(decode_ratios), 3), rounds=args.rounds, sentences=len(sources),
           identical_outputs=same)


if __name__ == "__main__":
    main()
