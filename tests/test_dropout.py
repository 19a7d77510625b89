"""modeling/dropout.py: the CPU dropout draws 16-bit uniforms from 64-bit random words; check its statistics,
its scaling and gradient, its reproducibility, and the attention path that uses it."""
import math

import torch
import torch.nn.functional as F

from modeling.attention import MultiHeadAttention, attention_weights, scaled_dot_product_attention
from modeling.dropout import Dropout, dropout, keep_mask


def test_keep_mask_drops_with_probability_p_independently():
    torch.manual_seed(0)
    n, p = 2_000_000, 0.1
    keep = keep_mask((n,), p)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    dropped = 1.0 - keep
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(dropped.mean().item() - p) < 5 * sd                     # P(drop) = p
    # neighbours inside one 64-bit word and across words are independent: P(both dropped) = p²
    for lag in (1, 3, 4, 5):
        both = (dropped[:-lag] * dropped[lag:]).mean().item()
        assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n), lag


def test_keep_mask_is_reproducible_with_the_torch_seed():
    torch.manual_seed(123)
    a = keep_mask((7, 33), 0.3)
    b = keep_mask((7, 33), 0.3)
    torch.manual_seed(123)
    assert torch.equal(a, keep_mask((7, 33), 0.3))
    assert not torch.equal(a, b)


def test_dropout_scales_kept_values_and_gradient_by_inverse_keep_probability():
    torch.manual_seed(1)
    p = 0.25
    x = torch.randn(64, 129, requires_grad=True)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))


def test_dropout_bfloat16_rounds_once():
    torch.manual_seed(2)
    x = torch.randn(4096, dtype=torch.bfloat16)
    y = dropout(x, 0.1, training=True)
    kept = y != 0
    expected = (x[kept].float() / 0.9).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y[kept], expected)


def test_dropout_identity_when_evaluating_or_p_zero_and_zero_when_p_one():
    x = torch.randn(10, 10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_attention_with_dropout_equals_the_formula_with_the_same_mask():
    torch.manual_seed(3)
    B, H, T, S, Dh, p = 2, 3, 5, 7, 4, 0.2
    q, k, v = torch.randn(B, H, T, Dh), torch.randn(B, H, S, Dh), torch.randn(B, H, S, Dh)
    mask = torch.rand(B, 1, 1, S) > 0.3
    mask[..., 0] = True
    torch.manual_seed(4)
    got = scaled_dot_product_attention(q, k, v, mask, dropout_p=p)
    torch.manual_seed(4)
    keep = keep_mask((B, H, T, S), p)
    scores = q @ k.transpose(-2, -1) / math.sqrt(Dh)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    assert torch.allclose(got, (weights * keep / (1 - p)) @ v, atol=1e-6)
    assert torch.allclose(weights, attention_weights(q, k, mask), atol=1e-6)


def test_attention_dropout_mean_matches_no_dropout():
    """Averaged over many draws, attention with dropout is unbiased: E[out] = softmax(QKᵀ/√d) V."""
    torch.manual_seed(5)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    reference = F.scaled_dot_product_attention(q, k, v)
    draws = torch.stack([scaled_dot_product_attention(q, k, v, dropout_p=0.1) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), reference, atol=0.03)


def test_multi_head_attention_trains_with_dropout_and_is_deterministic_in_eval():
    torch.manual_seed(6)
    mha = MultiHeadAttention(16, 4, dropout=0.1)
    x = torch.randn(2, 5, 16, requires_grad=True)
    mha(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    mha.eval()
    assert torch.equal(mha(x), mha(x))
