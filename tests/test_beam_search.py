"""Beam search (modeling/generation.py) on small random models: the encoder-decoder Transformer through
`decoder_for(memory, src_mask)` and GPT. EOS is made likely (a bias on its logit) so that hypotheses really finish
at different lengths; each test first checks that the behaviour it constrains does occur without the constraint."""
from __future__ import annotations

import pytest
import torch

from modeling import GPT, GPTConfig, Transformer, TransformerConfig
from modeling.generation import beam_search, generate, repeated_ngram_mask

PAD, BOS, EOS = 0, 1, 2
VOCAB = 24
EOS_BIAS = 4.0


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def translation_model() -> Transformer:
    return Transformer(TransformerConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, hidden_size=32,
                                         num_encoder_layers=2, num_decoder_layers=2, num_heads=4, ffn_size=64,
                                         max_positions=64, dropout=0.0)).eval()


class EosBias:
    """A decoder whose EOS logit is raised by `bias` (a random model then ends hypotheses at varied lengths)."""

    def __init__(self, decoder, bias: float):
        self.decoder, self.bias = decoder, bias

    def new_cache(self, batch_size: int, max_len: int):
        return self.decoder.new_cache(batch_size, max_len)

    def __call__(self, ids: torch.Tensor, cache=None) -> torch.Tensor:
        logits = self.decoder(ids, cache=cache)                                      # (B, t, V)
        logits[..., EOS] += self.bias
        return logits


def padded_sources(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) random source ids ending in EOS, right-padded, and their (B, S) mask."""
    S = max(lengths)
    src = torch.full((len(lengths), S), PAD)
    mask = torch.zeros(len(lengths), S, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n - 1] = torch.randint(3, VOCAB, (n - 1,))
        src[i, n - 1] = EOS
        mask[i, :n] = 1
    return src, mask


def decode(model: Transformer, src: torch.Tensor, mask: torch.Tensor | None, eos_bias: float = EOS_BIAS,
           **kwargs) -> torch.Tensor:
    with torch.no_grad():
        memory = model.encode(src, mask)
    start = torch.full((src.size(0), 1), BOS)
    decoder = EosBias(model.decoder_for(memory, mask), eos_bias)
    return beam_search(decoder, start, eos_token_id=EOS, pad_token_id=PAD, **kwargs)


def generated(row: torch.Tensor) -> list[int]:
    """The tokens after <s>, up to and including EOS (padding dropped)."""
    tokens = row[1:].tolist()
    return tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens


def test_beam_one_equals_greedy_with_eos():
    model = translation_model()
    src, mask = padded_sources([5, 9, 3, 7, 6, 8])
    with torch.no_grad():
        memory = model.encode(src, mask)
    start = torch.full((6, 1), BOS)
    greedy = generate(EosBias(model.decoder_for(memory, mask), EOS_BIAS), start, 15, eos_token_id=EOS)
    beam1 = beam_search(EosBias(model.decoder_for(memory, mask), EOS_BIAS), start, 15, beam_size=1,
                        eos_token_id=EOS)
    lengths = [len(generated(row)) for row in greedy]
    assert min(lengths) < 15 and len(set(lengths)) > 1          # some stop early, at different lengths
    assert torch.equal(beam1, greedy)                            # both fill finished rows with EOS


def test_batched_beam_search_equals_one_prompt_at_a_time():
    model = translation_model()
    lengths = [4, 11, 7, 2, 9]
    src, mask = padded_sources(lengths)
    batched = decode(model, src, mask, eos_bias=3.5, max_new_tokens=12, beam_size=4, length_penalty=1.0)
    outputs = [generated(row) for row in batched]
    assert any(o[-1] == EOS for o in outputs) and len({len(o) for o in outputs}) > 1
    for i, n in enumerate(lengths):
        alone = decode(model, src[i:i + 1, :n], None, eos_bias=3.5, max_new_tokens=12, beam_size=4,
                       length_penalty=1.0)
        assert generated(alone[0]) == outputs[i]
        assert batched[i, 1 + len(outputs[i]):].eq(PAD).all()              # padded after the hypothesis


def test_kv_cache_equals_recomputing_the_whole_prefix():
    model = translation_model()
    src, mask = padded_sources([6, 3, 8])
    K = 3
    with torch.no_grad():
        memory = model.encode(src, mask)
    start = torch.full((3, 1), BOS)
    cached = beam_search(EosBias(model.decoder_for(memory, mask), EOS_BIAS), start, 12, beam_size=K,
                         eos_token_id=EOS)
    assert any(EOS in generated(row)[:-1] or generated(row)[-1] == EOS for row in cached)
    per_beam = EosBias(model.decoder_for(memory.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)), EOS_BIAS)
    assert torch.equal(cached, beam_search(per_beam, start, 12, beam_size=K, eos_token_id=EOS, use_cache=False))
    gpt = GPT(GPTConfig(vocab_size=97, max_positions=64, num_layers=2, num_heads=4, hidden_size=32)).eval()
    prompt = torch.randint(0, 97, (2, 5))
    assert torch.equal(beam_search(gpt, prompt, 10, beam_size=4, eos_token_id=7),
                       beam_search(gpt, prompt, 10, beam_size=4, eos_token_id=7, use_cache=False))


def test_min_new_tokens_forbids_eos_before_it():
    model = translation_model()
    src, mask = padded_sources([5, 8, 4, 6])
    free = [generated(row) for row in decode(model, src, mask, max_new_tokens=12, beam_size=3)]
    assert min(len(o) for o in free if o[-1] == EOS) < 6                      # EOS comes early when allowed
    held = [generated(row) for row in decode(model, src, mask, max_new_tokens=12, beam_size=3, min_new_tokens=6)]
    assert all(EOS not in tokens[:6] for tokens in held)
    assert any(tokens[-1] == EOS for tokens in held)                          # and it may end afterwards


def has_repeated_ngram(tokens: list[int], n: int) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_size(n):
    model = translation_model()
    src, mask = padded_sources([5, 8, 4, 6, 7, 3])
    free = decode(model, src, mask, max_new_tokens=20, beam_size=3)
    assert any(has_repeated_ngram([BOS, *generated(row)], n) for row in free)
    constrained = decode(model, src, mask, max_new_tokens=20, beam_size=3, no_repeat_ngram_size=n)
    assert not any(has_repeated_ngram([BOS, *generated(row)], n) for row in constrained)   # <s> included, as HF


def test_repeated_ngram_mask_marks_the_tokens_that_would_repeat():
    ids = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    mask = repeated_ngram_mask(ids, 3, 10)                       # row 0 ends "5 6": 7 would repeat "5 6 7"
    assert mask[0].nonzero().flatten().tolist() == [7] and not mask[1].any()
    assert repeated_ngram_mask(ids, 2, 10)[0].nonzero().flatten().tolist() == [7]
    assert repeated_ngram_mask(ids, 1, 10)[1].nonzero().flatten().tolist() == [1, 2, 3, 4, 5]
    assert not repeated_ngram_mask(ids[:, :2], 3, 10).any()     # shorter than n


def test_a_wider_beam_scores_at_least_as_well():
    """Sum of log-probabilities of the returned hypothesis (no length penalty) never falls below greedy's."""
    model = translation_model()
    src, mask = padded_sources([6, 9, 4])
    with torch.no_grad():
        memory = model.encode(src, mask)

    def logprob(out: torch.Tensor, i: int) -> float:
        tokens = torch.tensor([[BOS, *generated(out[i])]])
        with torch.no_grad():
            logp = EosBias(model.decoder_for(memory[i:i + 1], mask[i:i + 1]), EOS_BIAS)(tokens[:, :-1]).log_softmax(-1)
        return logp[0].gather(-1, tokens[0, 1:, None]).sum().item()

    greedy = decode(model, src, mask, max_new_tokens=10, beam_size=1, length_penalty=0.0)
    wide = decode(model, src, mask, max_new_tokens=10, beam_size=6, length_penalty=0.0)
    for i in range(3):
        assert logprob(wide, i) >= logprob(greedy, i) - 1e-5


@pytest.mark.parametrize("beam_size", [1, 3])
def test_allowed_tokens_holds_at_every_step_for_each_prompts_rows(beam_size):
    """Each prompt bans the tokens its unconstrained output used (but EOS): rows b*K .. b*K + K - 1 are prompt b's."""
    model = translation_model()
    src, mask = padded_sources([5, 8, 4])
    free = [generated(row) for row in decode(model, src, mask, max_new_tokens=12, beam_size=beam_size)]
    banned = [set(tokens) - {EOS} for tokens in free]
    assert all(banned)

    def allowed(ids: torch.Tensor) -> torch.Tensor:
        ok = torch.ones(ids.size(0), VOCAB, dtype=torch.bool)
        for row in range(ids.size(0)):
            ok[row, sorted(banned[row // (ids.size(0) // len(banned))])] = False
        return ok

    constrained = [generated(row) for row in decode(model, src, mask, max_new_tokens=12, beam_size=beam_size,
                                                    allowed_tokens=allowed)]
    assert all(not set(tokens) & banned[b] for b, tokens in enumerate(constrained))
    assert constrained != free
    if beam_size == 1:                                       # greedy through generate() obeys it too
        with torch.no_grad():
            memory = model.encode(src, mask)
        greedy = generate(EosBias(model.decoder_for(memory, mask), EOS_BIAS), torch.full((3, 1), BOS), 12,
                          eos_token_id=EOS, allowed_tokens=allowed)
        assert [generated(row) for row in greedy] == constrained
