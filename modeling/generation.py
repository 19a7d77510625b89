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
             on_token: Callable[[Tensor], None] | None = None, max_context: int | None = None,
             allowed_tokens: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Extend (B, T) prompts by up to `max_new_tokens` tokens -> (B, T + n). Rows that produced `eos_token_id`
    keep emitting it until every row has finished. Without the cache each step re-reads the whole prefix
    (cropped to the last `max_context` tokens when given). `allowed_tokens`: (B, t) sequences so far ->
    (B, V) True where a token may come next (a constraint; None: any)."""
    ids = input_ids
    B, T = ids.shape
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    logits = model(ids, cache=cache)[:, -1]                                          # (B, V)
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        if allowed_tokens is not None:
            logits = logits.masked_fill(~allowed_tokens(ids), float("-inf"))
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


def repeated_ngram_mask(ids: Tensor, n: int, vocab_size: int) -> Tensor:
    """(R, L) sequences -> (R, V) True for each token that would complete an n-gram the sequence already holds
    (its last n - 1 tokens followed by that token occur earlier)."""
    R, L = ids.shape
    mask = torch.zeros(R, vocab_size, dtype=torch.bool, device=ids.device)
    if L < n:
        return mask
    grams = ids.unfold(1, n, 1)                                                      # (R, L-n+1, n)
    last = ids[:, L - n + 1:]                                                        # (R, n-1)
    seen = (grams[:, :, :-1] == last[:, None, :]).all(dim=-1)                        # (R, L-n+1)
    rows, starts = seen.nonzero(as_tuple=True)
    mask[rows, grams[rows, starts, -1]] = True
    return mask


class FinishedHypotheses:
    """The best `beam_size` finished hypotheses of each prompt, by length-normalised score, and how many
    hypotheses each prompt has finished in all (beam search stops a prompt at `beam_size`)."""

    def __init__(self, batch_size: int, beam_size: int, max_new_tokens: int, fill: int, device):
        self.fill = fill
        self.scores = torch.full((batch_size, beam_size), float("-inf"), dtype=torch.float64, device=device)
        self.tokens = torch.full((batch_size, beam_size, max(max_new_tokens, 1)), fill, dtype=torch.long,
                                 device=device)
        self.lengths = torch.zeros(batch_size, beam_size, dtype=torch.long, device=device)
        self.count = torch.zeros(batch_size, dtype=torch.long, device=device)

    def add(self, scores: Tensor, tokens: Tensor) -> None:
        """scores: (B, C) normalised, -inf where no hypothesis ends; tokens: (B, C, n) the generated tokens."""
        B, C, n = tokens.shape
        width = self.tokens.size(-1)
        padded = torch.full((B, C, width), self.fill, dtype=torch.long, device=tokens.device)
        padded[:, :, :n] = tokens
        all_scores = torch.cat([self.scores, scores], dim=1)                         # (B, K + C)
        all_tokens = torch.cat([self.tokens, padded], dim=1)                         # (B, K + C, width)
        all_lengths = torch.cat([self.lengths, torch.full_like(scores, n, dtype=torch.long)], dim=1)
        self.scores, best = all_scores.topk(self.scores.size(1), dim=-1)             # (B, K)
        self.tokens = all_tokens.gather(1, best[:, :, None].expand(-1, -1, width))
        self.lengths = all_lengths.gather(1, best)
        self.count += (scores > float("-inf")).sum(dim=-1)

    def best(self) -> tuple[Tensor, Tensor]:
        """(B, width) tokens and (B,) lengths of each prompt's highest-scoring hypothesis."""
        index = self.scores.argmax(dim=-1)                                           # (B,)
        rows = torch.arange(index.numel(), device=index.device)
        return self.tokens[rows, index], self.lengths[rows, index]


@torch.no_grad()
def beam_search(model, input_ids: Tensor, max_new_tokens: int, beam_size: int = 4, length_penalty: float = 1.0,
                eos_token_id: int | None = None, pad_token_id: int | None = None, min_new_tokens: int = 0,
                no_repeat_ngram_size: int = 0, use_cache: bool = True,
                allowed_tokens: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Beam search over a batch of prompts, all beams of all prompts in one (B*K, ...) batch.

    Each step extends every beam by every token and keeps, per prompt, the 2K best candidates by sum(log p).
    A candidate ending in EOS that ranks above the K-th continuing one finishes a hypothesis, scored
    sum(log p) / (generated length ** length_penalty); the K best continuing candidates are the next beams.
    A prompt is done once it has finished `beam_size` hypotheses (early stop) or after `max_new_tokens`, when
    its live beams compete too. EOS is forbidden for the first `min_new_tokens` tokens; with
    `no_repeat_ngram_size` n, no n-gram (prompt included) occurs twice; `allowed_tokens` maps the (B*K, t)
    sequences (prompt b's beams are rows b*K .. b*K + K - 1) to (B*K, V) True where a token may come next.
    Without the cache each step re-reads the whole sequence (the model must then accept B*K rows: bind an
    encoder-decoder's memory repeated per beam).
    Returns the best hypothesis per prompt, (B, T + n), right-padded with `pad_token_id` (or EOS, or 0)."""
    B, T = input_ids.shape
    K = beam_size
    device = input_ids.device
    fill = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    ids = input_ids.repeat_interleave(K, dim=0)                                      # (B*K, T)
    cache = model.new_cache(B * K, T + max_new_tokens) if use_cache else None
    logits = model(ids, cache=cache)[:, -1]                                          # (B*K, V)
    beam_scores = torch.zeros(B, K, device=device)
    beam_scores[:, 1:] = float("-inf")           # all beams start identical: expand only the first
    finished = FinishedHypotheses(B, K, max_new_tokens, fill, device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    first_row = torch.arange(B, device=device)[:, None] * K                          # (B, 1) row of beam 0
    for step in range(max_new_tokens):
        logp = logits.float().log_softmax(dim=-1)                                    # (B*K, V)
        V = logp.size(-1)
        if eos_token_id is not None and step < min_new_tokens:
            logp[:, eos_token_id] = float("-inf")
        if no_repeat_ngram_size > 0:
            logp = logp.masked_fill(repeated_ngram_mask(ids, no_repeat_ngram_size, V), float("-inf"))
        if allowed_tokens is not None:
            logp = logp.masked_fill(~allowed_tokens(ids), float("-inf"))
        scores = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_index = scores.topk(2 * K, dim=-1)                           # (B, 2K): room for EOS picks
        parents, tokens = top_index // V, top_index % V                              # (B, 2K) each
        is_eos = tokens == eos_token_id if eos_token_id is not None else torch.zeros_like(tokens, dtype=torch.bool)
        # an EOS candidate finishes a hypothesis when fewer than K continuing candidates rank above it
        ends = is_eos & ((~is_eos).cumsum(dim=-1) < K) & ~done[:, None] & (top_scores > float("-inf"))
        if bool(ends.any()):
            rows = (first_row + parents).view(-1)                                    # (B*2K,)
            hyps = torch.cat([ids[rows, T:], tokens.view(-1, 1)], dim=1).view(B, 2 * K, step + 1)
            normalised = top_scores.double() / (step + 1) ** length_penalty
            finished.add(normalised.masked_fill(~ends, float("-inf")), hyps)
            done |= finished.count >= K
        if bool(done.all()):
            break
        # the next beams: the first K candidates that do not end (EOS ones, if too few, enter at -inf)
        keep = is_eos.to(torch.uint8).argsort(dim=-1, stable=True)[:, :K]             # (B, K)
        beam_scores = top_scores.gather(1, keep).masked_fill(is_eos.gather(1, keep), float("-inf"))
        next_tokens = tokens.gather(1, keep)                                         # (B, K)
        rows = (first_row + parents.gather(1, keep)).view(-1)                        # (B*K,) surviving parents
        ids = torch.cat([ids[rows], next_tokens.view(-1, 1)], dim=1)
        if use_cache:
            for layer_cache in cache:
                layer_cache.reorder(rows)
        if step < max_new_tokens - 1:
            logits = (model(next_tokens.view(-1, 1), cache=cache) if use_cache else model(ids))[:, -1]
    if not bool(done.all()):                     # prompts that ran out of steps: their live beams count too
        generated = ids.size(1) - T
        live = beam_scores.double() / max(generated, 1) ** length_penalty
        finished.add(live.masked_fill(done[:, None], float("-inf")), ids[:, T:].view(B, K, generated))
    best, lengths = finished.best()
    out = torch.full((B, T + int(lengths.max())), fill, dtype=input_ids.dtype, device=device)
    out[:, :T] = input_ids
    out[:, T:] = best[:, :int(lengths.max())]
    return out
