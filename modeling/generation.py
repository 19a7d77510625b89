"""Decoding for any autoregressive decoder: greedy, sampling (temperature, top-k, top-p) and beam search.

A decoder here is anything with `new_cache(batch_size, max_len)` and `decoder(ids, cache=cache) -> logits`
((B, t) new token ids -> (B, t, V)): `GPT`, and the encoder-decoder `Transformer` through
`Transformer.decoder_for(memory, memory_mask)`. With the KV cache every step feeds only the newest token.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits in each row, set the rest to -inf: (B, V) -> (B, V)."""
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach p (the first token is always kept)
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits: Tensor, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Pick the next token from last-position logits (B, V) -> (B,)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids: Tensor, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None,
             on_token: Callable[[Tensor], None] | None = None, max_context: int | None = None) -> Tensor:
    """Extend (B, T) prompts by up to `max_new_tokens` tokens -> (B, T + n). Rows that produced `eos_token_id`
    keep emitting it until every row has finished. Without the cache each step re-reads the whole prefix
    (cropped to the last `max_context` tokens when given)."""
    ids = input_ids
    B, T = ids.shape
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    logits = model(ids, cache=cache)[:, -1]                                          # (B, V)
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        nxt = next_token(logits, do_sample, temperature, top_k, top_p, generator)     # (B,)
        if eos_token_id is not None:
            nxt = nxt.masked_fill(finished, eos_token_id)
            finished |= nxt == eos_token_id
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        if on_token is not None:
            on_token(nxt)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if use_cache:
            logits = model(nxt[:, None], cache=cache)[:, -1]
        else:
            context = ids if max_context is None else ids[:, -max_context:]
            logits = model(context)[:, -1]
    return ids


@torch.no_grad()
def beam_search(model, input_ids: Tensor, max_new_tokens: int, beam_size: int = 4, length_penalty: float = 1.0,
                eos_token_id: int | None = None, pad_token_id: int | None = None) -> Tensor:
    """Beam search with the KV cache. A hypothesis ends at EOS and is scored by
    sum(log p) / (generated length ** length_penalty); a prompt is done once it has `beam_size` finished
    hypotheses (early stop) or after `max_new_tokens`. Returns the best hypothesis per prompt, (B, T + n),
    right-padded with `pad_token_id` (or EOS)."""
    B, T = input_ids.shape
    K = beam_size
    device = input_ids.device
    ids = input_ids.repeat_interleave(K, dim=0)                                      # (B*K, T)
    cache = model.new_cache(B * K, T + max_new_tokens)
    logits = model(ids, cache=cache)[:, -1]                                          # (B*K, V)
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = float("-inf")           # all beams start identical: expand only the first
    finished: list[list[tuple[float, Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        logp = logits.float().log_softmax(dim=-1)                                    # (B*K, V)
        V = logp.size(-1)
        scores = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_index = scores.topk(2 * K, dim=-1)                           # (B, 2K): room for EOS picks
        next_scores = torch.full((B, K), float("-inf"), device=device)
        next_tokens = torch.zeros(B, K, dtype=torch.long, device=device)
        next_beams = torch.zeros(B, K, dtype=torch.long, device=device)
        for b in range(B):
            if done[b]:
                next_tokens[b] = eos_token_id if eos_token_id is not None else 0
                next_scores[b, 0] = 0.0
                continue
            kept = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                beam, token = divmod(index, V)
                if eos_token_id is not None and token == eos_token_id:
                    hyp = torch.cat([ids[b * K + beam, T:], ids.new_tensor([token])])
                    finished[b].append((score / (hyp.numel() ** length_penalty), hyp))
                    continue
                next_scores[b, kept], next_tokens[b, kept], next_beams[b, kept] = score, token, beam
                kept += 1
                if kept == K:
                    break
            if len(finished[b]) >= K:
                done[b] = True
        if all(done):
            break
        rows = (torch.arange(B, device=device)[:, None] * K + next_beams).view(-1)  # (B*K,) surviving parents
        ids = torch.cat([ids[rows], next_tokens.view(-1, 1)], dim=1)
        beam_scores = next_scores
        for layer_cache in cache:
            layer_cache.reorder(rows)
        if step < max_new_tokens - 1:
            logits = model(next_tokens.view(-1, 1), cache=cache)[:, -1]
    for b in range(B):                           # prompts that ran out of steps: their live beams count too
        if not done[b]:
            for k in range(K):
                if beam_scores[b, k] > float("-inf"):
                    hyp = ids[b * K + k, T:]
                    finished[b].append((beam_scores[b, k].item() / (max(hyp.numel(), 1) ** length_penalty), hyp))
    best = [max(hyps, key=lambda h: h[0])[1] for hyps in finished]
    fill = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    width = max(h.numel() for h in best)
    out = torch.full((B, T + width), fill, dtype=input_ids.dtype, device=device)
    out[:, :T] = input_ids
    for b, hyp in enumerate(best):
        out[b, T:T + hyp.numel()] = hyp
    return out
