"""Optimizers and learning-rate schedules shared by every task.

Weight decay goes on matrices only (linear weights, embeddings); biases and LayerNorm gains, the 1-D
parameters, are not decayed. This is the BERT recipe ("no decay on bias and LayerNorm") and nanoGPT's
("decay only on matrices") at once: they select the same tensors.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, name: str | None = None) -> list[dict]:
    """[matrices with `weight_decay`, 1-D parameters without]; `name`d groups show as `lr-AdamW/<name>` in logs."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name is not None:
        groups[0]["name"], groups[1]["name"] = name, f"{name}.no_decay"
    return groups


def layerwise_groups(backbone: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """`param_groups` of a BERT-style backbone (`embeddings`, `layers[i]`, anything else on top) with layer-wise
    learning-rate decay (ELECTRA; Clark et al. 2020): the top layer trains at `lr`, each layer below at
    `layer_decay` times the one above, and the embeddings below layer 0. Parameters outside `embeddings` and
    `layers` (a pooler) count as the top. `layer_decay` 1.0 gives every group `lr`."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    num_layers = len(backbone.layers)
    depth_modules = [backbone.embeddings, *backbone.layers]                     # depth 0 .. num_layers
    in_depths = {id(p) for m in depth_modules for p in m.parameters()}
    top = [p for p in backbone.parameters() if id(p) not in in_depths]
    groups = []
    for depth, module in enumerate(depth_modules):
        scale = layer_decay ** (num_layers - depth)
        name = "embeddings" if depth == 0 else f"layer{depth - 1}"
        groups += [{**g, "lr": lr * scale} for g in param_groups(module, weight_decay, name) if g["params"]]
    groups += [{**g, "lr": lr} for g in param_groups(nn.ParameterList(top), weight_decay, "top") if g["params"]]
    return groups


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.01, betas=(0.9, 0.999), eps: float = 1e-8,
          fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups`. `fused` defaults to True where PyTorch has a fused kernel (CPU and CUDA)."""
    if fused is None:
        fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str = "linear",
                  min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Linear warm-up from 0 over `warmup_steps`, then `linear` decay to `min_ratio` at `total_steps`,
    `cosine` decay to `min_ratio`, or `constant`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}: expected linear, cosine or constant")


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    schedule: str = "linear", min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    lr_multiplier(warmup_steps, warmup_steps, total_steps, schedule, min_ratio)  # validate the name early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, schedule, min_ratio))
