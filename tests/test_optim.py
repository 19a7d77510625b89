"""Optimizer parameter groups and learning-rate schedules (tasks/optim.py)."""
import math

import pytest
import torch

from modeling.bert import BERT, BertConfig
from tasks.optim import layerwise_groups, lr_multiplier, param_groups


def tiny_bert(layers=3):
    torch.manual_seed(0)
    return BERT(BertConfig(vocab_size=50, hidden_size=16, num_layers=layers, num_heads=2, max_positions=32),
                pooler=True)


def test_decay_goes_on_matrices_only():
    model = tiny_bert()
    decay, no_decay = param_groups(model.parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_layerwise_groups_scale_each_depth_and_cover_every_parameter_once():
    model, lr, decay = tiny_bert(layers=3), 1e-3, 0.5
    groups = layerwise_groups(model, lr, 0.01, decay)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {lr_of[id(p)] for p in model.embeddings.parameters()} == {lr * decay ** 3}
    for i, layer in enumerate(model.layers):                 # layer 2 (the top) at lr, layer 0 at lr * decay^2
        assert [lr_of[id(p)] for p in layer.parameters()] == pytest.approx([lr * decay ** (2 - i)] * len(
            list(layer.parameters())))
    assert {lr_of[id(p)] for p in model.pooler.parameters()} == {lr}
    for g in groups:                                          # and decay still only on matrices
        assert all((p.ndim >= 2) == (g["weight_decay"] > 0) for p in g["params"])


def test_layer_decay_one_is_a_single_learning_rate():
    groups = layerwise_groups(tiny_bert(), 2e-4, 0.01, 1.0)
    assert {g["lr"] for g in groups} == {2e-4}
    with pytest.raises(ValueError, match="layer_decay"):
        layerwise_groups(tiny_bert(), 2e-4, 0.01, 0.0)


def test_warmup_then_cosine_reaches_floor_at_total_steps():
    warmup, total, floor = 100, 2000, 0.1
    assert lr_multiplier(0, warmup, total, "cosine", floor) == pytest.approx(1 / 101)   # nanoGPT's (it+1)/(w+1)
    assert lr_multiplier(warmup, warmup, total, "cosine", floor) == pytest.approx(1.0)
    mid = warmup + (total - warmup) // 2
    assert lr_multiplier(mid, warmup, total, "cosine", floor) == pytest.approx(floor + (1 - floor) * 0.5 *
                                                                             (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(total, warmup, total, "cosine", floor) == pytest.approx(floor)
    assert lr_multiplier(total + 50, warmup, total, "linear", 0.0) == 0.0
