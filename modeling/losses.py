"""Cross-entropy over a large vocabulary without materialising all the logits.

For a language model the last projection, hidden (N, D) @ Eᵀ (D, V), and its softmax dominate memory: N × V
floats for the logits, the same again for their gradient. `linear_cross_entropy` walks the tokens in chunks and,
while it has a chunk's logits in hand, computes the loss and the gradient of the loss with respect to the hidden
states and the embedding at once (d loss / d logits = softmax - target distribution). Only (N, D) and (V, D)
gradients are kept for the backward pass, which then just scales them.

Label smoothing (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4) with ε spreads ε of the target's probability
mass uniformly over the V classes, as `F.cross_entropy(label_smoothing=ε)` does:

    loss = (1 - ε) · (lse - z_y) + ε · (lse - mean_j z_j),    lse = log Σ_j exp z_j
    d loss / d z_j = softmax_j - (1 - ε) · [j = y] - ε / V
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, chunk_size: int,
                label_smoothing: float):
        n_scored = (targets != ignore_index).sum().clamp(min=1)
        eps = label_smoothing
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.size(0), chunk_size):
            h, y = hidden[start:start + chunk_size], targets[start:start + chunk_size]    # (c, D), (c,)
            logits = (h @ weight.t()).float()                                             # (c, V)
            scored = y != ignore_index
            safe_y = y.masked_fill(~scored, 0)
            lse = torch.logsumexp(logits, dim=-1)                                        # (c,)
            token_loss = lse - (1.0 - eps) * logits.gather(1, safe_y[:, None]).squeeze(1)
            if eps:
                token_loss -= eps * logits.mean(dim=-1)
            loss += (token_loss * scored).sum()
            # d loss / d logits = (softmax - (1 - ε) onehot - ε / V) / n_scored, zero for ignored rows
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(y.numel(), device=y.device), safe_y] -= 1.0 - eps
            if eps:
                grad_logits.sub_(eps / logits.size(-1))
            grad_logits.mul_((scored.float() / n_scored)[:, None])
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk_size] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t().float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss / n_scored

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_loss if grad_hidden is not None else None,
                (grad_weight * grad_loss).to(ctx.saved_tensors[1].dtype) if grad_weight is not None else None,
                None, None, None, None)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int = -100,
                         chunk_size: int = 1024, label_smoothing: float = 0.0) -> Tensor:
    """mean cross_entropy(hidden @ weightᵀ, targets, label_smoothing) over non-ignored targets.
    hidden: (N, D); weight: (V, D); targets: (N,)."""
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        losses = [F.cross_entropy((h @ weight.t()).float(), y, ignore_index=ignore_index, reduction="sum",
                                  label_smoothing=label_smoothing)
                  for h, y in zip(hidden.split(chunk_size), targets.split(chunk_size))]
        return torch.stack(losses).sum() / (targets != ignore_index).sum().clamp(min=1)
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_size, label_smoothing)


def smoothed_nll(log_probs: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over N rows of (N, V) log-probabilities against (N,) targets, label-smoothed as
    `F.cross_entropy(..., label_smoothing=ε)`: (1 − ε) · (−log p_y) + ε · mean_w(−log p_w)."""
    nll = -log_probs.gather(1, target[:, None]).squeeze(1)                            # (N,)
    if label_smoothing == 0.0:
        return nll.mean()
    return ((1 - label_smoothing) * nll - label_smoothing * log_probs.mean(dim=-1)).mean()
