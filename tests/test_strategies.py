"""The GPU strategy configs (configs/strategies/*.yaml), checked on the CPU: Lightning's FSDP and DeepSpeed refuse
a CPU at fit time, so nothing here fits. Each config combines with every task's config (`--config task.yaml
--config strategy.yaml`), builds its Lightning strategy object, and FSDP's wrap and activation-checkpointing policy
name our Transformer blocks: torch's FSDP, which runs on the CPU (gloo), wraps each block of BERT, GPT and the
encoder-decoder Transformer as one unit, recomputes its activations, and computes the same outputs and gradients.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml
from pytorch_lightning import Trainer
from pytorch_lightning.cli import LightningArgumentParser

import run
from benchmarks.kill_resume import Child, free_port
from conftest import ROOT
from modeling import BERT, GPT, BertConfig, GPTConfig, Transformer
from modeling.blocks import Block, DecoderBlock
from modeling.transformer import TransformerConfig

STRATEGIES = ROOT / "configs" / "strategies"
BLOCKS = {Block, DecoderBlock}


def trainer_settings(name: str) -> dict:
    """The trainer section of configs/strategies/<name>.yaml, parsed and instantiated as LightningCLI does."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(Trainer, "trainer")
    return parser.instantiate_classes(parser.parse_path(STRATEGIES / f"{name}.yaml")).trainer


def test_every_strategy_config_is_checked_here():
    assert sorted(p.stem for p in STRATEGIES.glob("*.yaml")) == ["ddp", "deepspeed_zero2", "fsdp"]


@pytest.mark.parametrize("task", list(run.TASKS))
@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_strategy_config_combines_with_the_task_config(task, name, capsys):
    """The task's settings stay; the strategy file adds the strategy, GPUs and bf16-mixed."""
    task_config = ROOT / run.TASKS[task].default_config
    with pytest.raises(SystemExit) as stop:
        run.main([task, "fit", "--config", str(task_config), "--config", str(STRATEGIES / f"{name}.yaml"),
                  "--print_config"])
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    printed = yaml.safe_load(out[out.index("seed_everything:"):])          # deepspeed's import may log a line first
    strategy = yaml.safe_load((STRATEGIES / f"{name}.yaml").read_text())["trainer"]["strategy"]
    assert printed["trainer"]["strategy"]["class_path"] == strategy["class_path"]
    assert printed["trainer"]["precision"] == "bf16-mixed" and printed["trainer"]["accelerator"] == "gpu"
    own = yaml.safe_load(task_config.read_text())
    assert all(printed["model"][k] == v for k, v in own["model"].items() if not isinstance(v, dict))
    assert all(printed["data"][k] == v for k, v in own["data"].items() if not isinstance(v, (dict, list)))


def test_ddp_config_builds_the_ddp_strategy():
    from pytorch_lightning.strategies import DDPStrategy
    trainer = trainer_settings("ddp")
    assert type(trainer.strategy) is DDPStrategy and trainer.precision == "bf16-mixed"


def test_fsdp_config_wraps_and_recomputes_our_blocks():
    from pytorch_lightning.strategies import FSDPStrategy
    trainer = trainer_settings("fsdp")
    strategy = trainer.strategy
    assert type(strategy) is FSDPStrategy and trainer.precision == "bf16-mixed"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == BLOCKS
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == BLOCKS
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"


def wrapped_like_lightning(model: torch.nn.Module, strategy) -> torch.nn.Module:
    """`model` wrapped as Lightning's FSDPStrategy wraps it (its kwargs, then activation checkpointing), on the CPU."""
    from lightning_fabric.strategies.fsdp import _setup_activation_checkpointing
    from torch.distributed.fsdp import FullyShardedDataParallel
    fsdp = FullyShardedDataParallel(model, device_id=torch.device("cpu"), **strategy.kwargs)
    _setup_activation_checkpointing(fsdp, strategy._activation_checkpointing_kwargs)
    return fsdp


def fsdp_wraps_each_block_with_the_same_results() -> None:
    """In a process of its own (it starts a gloo process group): every model kind, wrapped by the fsdp config's
    policies, has one FSDP unit and one checkpoint wrapper per block, and the outputs and gradients of the model
    as it was."""
    import copy

    import torch.distributed as dist
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    strategy = trainer_settings("fsdp").strategy
    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 8))                                                       # (B, T)
    models = {
        "bert": (BERT(BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, ffn_size=64,
                                 max_positions=16, dropout=0.0, attention_dropout=0.0)),
                 lambda m: m(x).last_hidden_state),
        "gpt": (GPT(GPTConfig(vocab_size=50, max_positions=16, num_layers=2, num_heads=2, hidden_size=32)),
                lambda m: m(x)),
        "transformer": (Transformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, hidden_size=32,
                                                      num_encoder_layers=2, num_decoder_layers=2, num_heads=2,
                                                      ffn_size=64, dropout=0.0, max_positions=16)),
                        lambda m: m(x, x)),
    }
    for kind, (model, run_model) in models.items():
        plain = copy.deepcopy(model)
        blocks = sum(isinstance(m, tuple(BLOCKS)) for m in model.modules())
        wrapped = wrapped_like_lightning(model, strategy)
        units = sum(isinstance(m, FullyShardedDataParallel) for m in wrapped.modules())
        recomputed = sum(isinstance(m, CheckpointWrapper) for m in wrapped.modules())
        assert blocks > 0 and units == blocks + 1 and recomputed == blocks, (kind, blocks, units, recomputed)
        out, expected = run_model(wrapped), run_model(plain)
        assert torch.allclose(out, expected, atol=1e-6), kind
        (out ** 2).mean().backward()
        (expected ** 2).mean().backward()
        grads = {n.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""): p.grad
                 for n, p in wrapped.named_parameters()}
        for name, p in plain.named_parameters():
            if p.grad is None:                              # unused by the output (BERT's pooler): FSDP gives zeros
                assert grads[name] is None or not grads[name].any(), name
            else:
                assert torch.allclose(grads[name], p.grad, atol=1e-6), name
    dist.destroy_process_group()


def test_fsdp_config_wraps_each_block_of_every_model_kind():
    child = Child.call(fsdp_wraps_each_block_with_the_same_results)
    assert child.wait(timeout=300) == 0, "the FSDP check failed: its assertion is in the captured stderr"


def test_deepspeed_config_builds_zero_stage_2():
    """DeepSpeed is optional (`pip install deepspeed`): without it, the config's settings must at least be
    DeepSpeedStrategy's; with it, the strategy is built and runs ZeRO stage 2."""
    import inspect

    from pytorch_lightning.strategies import DeepSpeedStrategy
    settings = yaml.safe_load((STRATEGIES / "deepspeed_zero2.yaml").read_text())["trainer"]["strategy"]["init_args"]
    assert set(settings) <= set(inspect.signature(DeepSpeedStrategy.__init__).parameters)
    if importlib.util.find_spec("deepspeed") is None:
        return
    trainer = trainer_settings("deepspeed_zero2")
    assert type(trainer.strategy) is DeepSpeedStrategy and trainer.precision == "bf16-mixed"
    zero = trainer.strategy.config["zero_optimization"]
    assert zero["stage"] == 2 and zero["overlap_comm"] and zero["contiguous_gradients"]
