"""The one optimizer and learning-rate schedule every task uses.

AdamW. Weight decay goes on matrices only (linear weights, embeddings); biases and LayerNorm gains, the 1-D
parameters, are not decayed. This is the BERT recipe ("no decay on bias and LayerNorm") and nanoGPT's ("decay only
on matrices") at once: they select the same tensors. Optionally, layer-wise learning-rate decay over an encoder
(ELECTRA) and a separate learning rate for everything outside it (the task's head).

Schedule: linear warm-up from 0, then `linear` or `cosine` decay to `min_ratio` of the peak, `constant`, or the
Transformer paper's `inverse_sqrt` (lr ∝ 1/√step after warm-up; Vaswani et al. 2017, section 5.3).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

SCHEDULES = ("linear", "cosine", "constant", "inverse_sqrt")


def param_groups(params: Iterable[nn.Parameter], weight_decay: float, name: str | None = None) -> list[dict]:
    """[matrices with `weight_decay`, 1-D parameters without]; `name`d groups show as `lr-AdamW/<name>` in logs."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name is not None:
        groups[0]["name"], groups[1]["name"] = name, f"{name}.no_decay"
    return groups


def layerwise_groups(encoder: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """`param_groups` of a BERT-style encoder (`embeddings`, `layers[i]`, anything else on top) with layer-wise
    learning-rate decay (ELECTRA; Clark et al. 2020): the top layer trains at `lr`, each layer below at
    `layer_decay` times the one above, and the embeddings below layer 0. Parameters outside `embeddings` and
    `layers` (a pooler, pretraining heads) count as the top. `layer_decay` 1.0 gives every group `lr`."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    num_layers = len(encoder.layers)
    depth_modules = [encoder.embeddings, *encoder.layers]                      # depth 0 .. num_layers
    in_depths = {id(p) for m in depth_modules for p in m.parameters()}
    top = [p for p in encoder.parameters() if id(p) not in in_depths]
    groups = []
    for depth, module in enumerate(depth_modules):
        scale = layer_decay ** (num_layers - depth)
        name = "embeddings" if depth == 0 else f"layer{depth - 1}"
        groups += [{**g, "lr": lr * scale} for g in param_groups(module.parameters(), weight_decay, name)]
    groups += [{**g, "lr": lr} for g in param_groups(top, weight_decay, "top")]
    return [g for g in groups if g["params"]]


def task_param_groups(model: nn.Module, lr: float, weight_decay: float, encoder: Optional[nn.Module] = None,
                      layer_decay: float = 1.0, head_lr: Optional[float] = None) -> list[dict]:
    """Groups for a whole task: the `encoder` (if any) with layer-wise decay, the rest (`head`) at `head_lr`
    (default `lr`). Without an encoder: two groups over all of `model`."""
    if encoder is None:
        return [g for g in param_groups(model.parameters(), weight_decay, "model") if g["params"]]
    in_encoder = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in in_encoder]
    groups = layerwise_groups(encoder, lr, weight_decay, layer_decay)
    groups += [{**g, "lr": head_lr or lr} for g in param_groups(rest, weight_decay, "head") if g["params"]]
    return groups


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str = "linear",
                  min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based), as the module docstring describes:
    `linear` and `cosine` reach `min_ratio` at `total_steps`; `inverse_sqrt` is √(warmup / step), the paper's
    d_model^-0.5 · step^-0.5 scaled so that the peak (at the end of warm-up) is the configured learning rate."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        return math.sqrt(max(1, warmup_steps) / max(1, step))
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    schedule: str = "linear", min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    lr_multiplier(warmup_steps, warmup_steps, total_steps, schedule, min_ratio)  # validate the name early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, schedule, min_ratio))
