"""The contract every task fills in.

A task is a LightningModule that subclasses `Task` and provides:

    name, monitor, monitor_mode   its run.py name, and the validation metric that picks the best checkpoint
    create(data) -> Blueprint     a new run: build the network (from `pretrained` weights or from `config`, an
                                  architecture from scratch) and describe it
    build(blueprint)              rebuild that network from a checkpoint's description (the weights follow)
    training_step, validation_step, ... as any LightningModule

and may override `encoder()` (the module that layer-wise learning-rate decay walks), `check_data(data)` (refuse
data the network cannot take), `decoding` (the settings each test / predict run chooses itself) and `predict_step`.

`Task` owns the rest, the same for every task:
- *when* the network is built: `configure_model` calls `create` for a new run; a checkpoint (predict, test, resume,
  `load_from_checkpoint`) calls `build` with the checkpoint's blueprint instead, before its weights are loaded;
  either way `check_data` then checks the data against the network;
- *the checkpoint layout*: `checkpoint["task"]` is the blueprint (tasks/checkpoint.py), and a checkpoint of another
  task is refused with a line that names its task;
- *the optimizer*: AdamW without decay on norms and biases, warm-up then linear / cosine / inverse-sqrt decay,
  optional layer-wise decay and head learning rate, fused where safe, gradient clipping under bf16 (tasks/optim.py);
- *the shared settings*, checked once: a bad value is one `ConfigError` line, exit code 2;
- *a run that diverges*: a NaN or infinite loss or gradient stops training with one line naming the step, before
  the weights take the bad update (so no checkpoint holds NaN weights);
- *exact resumption*: the random number generators' states travel in the checkpoint, so a resumed run draws the
  same dropout masks as an uninterrupted one.

README.md "Adding a task" walks through `tasks/classify.py` as the example.
"""
from __future__ import annotations

import json
import os
from typing import Any, ClassVar, Literal, Optional, Union

import pytorch_lightning as pl
import torch
from torch import nn

from data.errors import ConfigError
from modeling import BERT
from tasks.checkpoint import Blueprint, blueprint
from tasks.optim import SCHEDULES, task_param_groups, warmup_schedule

# An architecture from scratch: the modeling config's fields, e.g. {hidden_size: 128, num_layers: 2, num_heads: 2}.
Architecture = dict[str, Union[bool, int, float, str]]


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite: one line naming the step (run.py exits with 1)."""


TRACE_SAMPLES_ENV = "NLP_TRACE_SAMPLES"   # a file: every training batch's example numbers are appended to it


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 on a CPU without bf16 arithmetic (no AVX-512 BF16, no AMX) is emulated, about 40 times slower than
    float32 (measured: 0.3 against 13 GFLOP/s on an AVX2 EPYC): refuse it with the remedy instead of crawling."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    allowed = os.environ.get("NLP_ALLOW_EMULATED_BF16") == "1"          # tests of the bf16 code path on any CPU
    if precision.startswith("bf16") and device.type == "cpu" and not native and not allowed:
        raise ConfigError(f"trainer.precision {precision}: this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX), "
                          f"so bf16 runs ~40x slower than float32 here; use --trainer.precision 32-true")


class Task(pl.LightningModule):
    name: ClassVar[str]
    monitor: ClassVar[str]
    monitor_mode: ClassVar[Literal["min", "max"]]
    # hyperparameters that read the outputs (beam size, answer length, ...), not the network: a checkpoint does not
    # keep them, so each test / predict run takes its own from the command line or config, not the training run's
    decoding: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pretrained: Optional[str] = None, config: Optional[Architecture] = None,
                 lr: float = 5e-5, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, warmup_steps: Optional[int] = None, warmup_ratio: float = 0.0,
                 schedule: Literal["linear", "cosine", "constant", "inverse_sqrt"] = "linear",
                 min_lr_ratio: float = 0.0, decay_steps: Optional[int] = None, layer_decay: float = 1.0,
                 head_lr: Optional[float] = None, freeze_depth: int = 0, fused: Optional[bool] = None):
        """
        Args:
            pretrained: where the weights start: a Hugging Face directory, a hub name (online), or one of our .ckpt
                files (its encoder). Not used when a checkpoint is restored (`--ckpt_path`).
            config: the architecture trained from scratch (the modeling config's fields), or overrides for the
                pretrained one where the task allows (e.g. dropout).
            lr: peak learning rate (AdamW).
            weight_decay: AdamW decay of matrices (never of biases and norms).
            betas, eps: AdamW's moment decay rates and epsilon.
            warmup_steps: linear warm-up length in optimizer steps (wins over warmup_ratio).
            warmup_ratio: warm-up as a fraction of all training steps.
            schedule: after warm-up: linear or cosine decay to min_lr_ratio, constant, or inverse_sqrt (the paper's).
            min_lr_ratio: floor of linear / cosine decay, as a fraction of lr.
            decay_steps: steps over which the decay runs (default: all training steps).
            layer_decay: layer-wise learning-rate decay over the encoder (1.0: off).
            head_lr: learning rate of the parameters outside the encoder (default: lr).
            freeze_depth: hold the bottom of the encoder fixed, counted as layer_decay counts it: 1 the embeddings,
                2 the embeddings and layer 0, and so on (0: train everything). Nothing below the first trained
                layer needs a backward pass, so each frozen layer saves its share of the step's compute.
            fused: fused AdamW kernel (default: on CPU and CUDA, except with fp16's loss scaler).
        """
        super().__init__()
        checks = [
            ("lr", lr, lr > 0, "must be > 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, "must be >= 0"),
            ("warmup_ratio", warmup_ratio, 0 <= warmup_ratio < 1, "must be in [0, 1)"),
            ("warmup_steps", warmup_steps, warmup_steps is None or warmup_steps >= 0, "must be >= 0"),
            ("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "must be in [0, 1]"),
            ("decay_steps", decay_steps, decay_steps is None or decay_steps > 0, "must be > 0"),
            ("layer_decay", layer_decay, 0 < layer_decay <= 1, "must be in (0, 1]"),
            ("head_lr", head_lr, head_lr is None or head_lr > 0, "must be > 0"),
            ("freeze_depth", freeze_depth, freeze_depth >= 0, "must be >= 0"),
            ("betas", betas, all(0 <= b < 1 for b in betas), "must be in [0, 1)"),
            ("schedule", schedule, schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
        ]
        for key, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"model.{key} {value}: {rule}")
        if pretrained is not None and not str(pretrained).strip():
            raise ConfigError("model.pretrained is empty")
        self.save_hyperparameters()
        self.blueprint: Optional[Blueprint] = None
        self._step_losses: list[torch.Tensor] = []  # the losses of the optimizer step under way

    # ---- what a task fills in -------------------------------------------------------------------------------
    def create(self, data: pl.LightningDataModule) -> Blueprint:
        """Build the network for a new run from `hparams.pretrained` or `hparams.config` and the data (its tokenizer
        and labels); return the blueprint that rebuilds it."""
        raise NotImplementedError

    def build(self, blueprint: Blueprint) -> None:
        """Build the network a blueprint describes, with fresh weights (a checkpoint's state dict loads next)."""
        raise NotImplementedError

    def encoder(self) -> Optional[nn.Module]:
        """The BERT-style encoder (`embeddings`, `layers`) that layer_decay and head_lr refer to, if any."""
        return None

    def check_data(self, data: pl.LightningDataModule) -> None:
        """Refuse data the network cannot take, in one ConfigError line, before anything runs (a new network or one
        restored from a checkpoint). Here: inputs longer than a BERT encoder's positions."""
        encoder, max_length = self.encoder(), getattr(data, "max_length", None)
        if isinstance(encoder, BERT) and max_length is not None and max_length > encoder.config.max_positions:
            raise ConfigError(f"data.max_length {max_length} is longer than the model's "
                              f"{encoder.config.max_positions} positions")

    # ---- when the network is built ----------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self._trainer is None:
            return                      # load_from_checkpoint: on_load_checkpoint builds the network
        check_precision(str(self.trainer.precision), self.trainer.strategy.root_device)
        data = self.trainer.datamodule
        if self.blueprint is None:      # else built from a checkpoint (restore), or by an earlier stage
            if data is None:
                raise ConfigError(f"{self.name}: a data module is needed to build a new model")
            self.blueprint = self.create(data)
        if data is not None:
            self.check_data(data)
        self._freeze_bottom()           # here, before a DDP wrapper records which parameters take gradients

    def _freeze_bottom(self) -> None:
        """requires_grad off for the embeddings and the lowest layers, `freeze_depth` levels in all."""
        depth = self.hparams.freeze_depth
        if depth == 0:
            return
        encoder = self.encoder()
        if encoder is None:
            raise ConfigError(f"model.freeze_depth {depth}: the {self.name} model has no pretrained encoder to "
                              f"freeze (it needs model.pretrained); remove model.freeze_depth")
        levels = [encoder.embeddings, *encoder.layers]
        if depth > len(levels):
            raise ConfigError(f"model.freeze_depth {depth}: the encoder has {len(levels)} levels (the embeddings "
                              f"and {len(levels) - 1} layers)")
        for module in levels[:depth]:
            module.requires_grad_(False)

    def restore(self, checkpoint: dict, source: str = "checkpoint") -> Blueprint:
        """Build the network of `checkpoint` (read by tasks.checkpoint.read_checkpoint); run.py calls this before
        the trainer starts, `load_from_checkpoint` through `on_load_checkpoint`."""
        bp = blueprint(checkpoint, source, task=self.name)
        if self.blueprint != bp:
            self.build(bp)
            self.blueprint = bp
        return bp

    # ---- the checkpoint layout --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["task"] = self.blueprint.to_dict()
        for key in self.decoding:
            checkpoint.get("hyper_parameters", {}).pop(key, None)
        checkpoint["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restore(checkpoint)
        rng = checkpoint.get("rng")
        if rng and self._trainer is not None and self.trainer.state.fn == "fit":    # resuming: same random draws
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    # ---- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        encoder = self.encoder()
        if encoder is None:             # head_lr and layer_decay split encoder from head: with none, never ignore them
            for key, value, unset in (("head_lr", hp.head_lr, None), ("layer_decay", hp.layer_decay, 1.0)):
                if value != unset:
                    raise ConfigError(f"model.{key} {value}: the {self.name} model has no pretrained encoder to set "
                                      f"apart (it needs model.pretrained); remove model.{key}")
        elif hp.head_lr is not None and {id(p) for p in self.parameters()} <= {id(p) for p in encoder.parameters()}:
            raise ConfigError(f"model.head_lr {hp.head_lr}: every parameter of the {self.name} model is in its "
                              f"encoder, heads included (they learn at model.lr); remove model.head_lr")
        groups = task_param_groups(self, hp.lr, hp.weight_decay, encoder, hp.layer_decay, hp.head_lr)
        fused = hp.fused
        if fused is None:       # on CPU and CUDA, except under fp16 (Lightning's loss scaler cannot unscale into it)
            fused = self.device.type in ("cpu", "cuda") and "16-mixed" != str(self.trainer.precision)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=fused)
        total = hp.decay_steps or int(self.trainer.estimated_stepping_batches)
        if total <= 0 or total == float("inf"):
            raise ConfigError(f"{self.name}: training length unknown: set trainer.max_steps or model.decay_steps")
        warmup = hp.warmup_steps if hp.warmup_steps is not None else int(hp.warmup_ratio * total)
        scheduler = warmup_schedule(optimizer, warmup, total, hp.schedule, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Lightning refuses to clip a fused optimizer's gradients under any mixed precision, because fp16's loss
        scaler would have to unscale them first. bf16 has no scaler: clip directly. Under FSDP each process holds
        a shard of the gradients: the root FSDP module's `clip_grad_norm_` takes the norm over all shards (Lightning's
        FSDP precision plugin refuses norm clipping). DeepSpeed clips inside its engine."""
        strategy = type(self.trainer.strategy).__name__
        by_norm = gradient_clip_val and gradient_clip_algorithm in (None, "norm")
        if by_norm and strategy == "FSDPStrategy":
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
        elif by_norm and str(self.trainer.precision) == "bf16-mixed" and \
                strategy in ("SingleDeviceStrategy", "DDPStrategy"):
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        """A table of sample predictions (input, prediction, gold) to wandb when a wandb logger is attached (from
        rank 0); nothing otherwise: the CSV log keeps numbers only."""
        for logger in self.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key=key, columns=columns, data=rows)

    def all_gather_uneven(self, x: torch.Tensor) -> torch.Tensor:
        """(N_rank, ...) from every process, concatenated in rank order -> (N_total, ...). Evaluation shards need not
        be the same size (data/batching.py), and all_gather needs equal shapes: pad, gather, trim."""
        if self.trainer.world_size == 1:
            return x
        sizes = self.all_gather(torch.tensor([x.size(0)], device=x.device)).flatten().tolist()    # (W,)
        padded = x.new_zeros((max(sizes), *x.shape[1:]))
        padded[:x.size(0)] = x
        gathered = self.all_gather(padded)                                                      # (W, max, ...)
        return torch.cat([gathered[rank, :n] for rank, n in enumerate(sizes)])

    # ---- a run that diverges ----------------------------------------------------------------------------------
    def on_before_backward(self, loss: torch.Tensor) -> None:
        self._step_losses.append(loss.detach())

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stops the run before the update when a loss of this step or a gradient is NaN or infinite on any process
        (all processes agree, so none is left waiting for the others), so no checkpoint ever holds NaN weights.
        Under fp16's loss scaler an infinite gradient is routine (the scaler skips that step): only the loss counts."""
        losses = torch.stack(self._step_losses) if self._step_losses else torch.zeros(0, device=self.device)
        self._step_losses = []
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        finite_grads = torch.ones((), dtype=torch.bool, device=self.device)
        if grads and str(self.trainer.precision) not in ("16-mixed", "16-true"):
            finite_grads = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        bad = torch.stack([~torch.isfinite(losses).all(), ~finite_grads]).float()       # (2,) loss, gradient
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        if not bad.any():
            return
        nonfinite = losses[~torch.isfinite(losses)]
        what = (f"the training loss is {nonfinite[0].item()}" if len(nonfinite) else
                "a gradient is not finite" if not finite_grads else
                "the loss or a gradient is not finite on another process")
        raise TrainingDiverged(f"{self.name}: {what} at step {self.global_step} (epoch {self.current_epoch}); "
                               f"stopped before the update. Try a lower model.lr or trainer.gradient_clip_val")

    # ---- which examples each step trains on (opt-in, for resume tests) -----------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """With NLP_TRACE_SAMPLES=<file>, append `{"step", "rank", "index"}` of every training batch to that file:
        the example numbers (`batch["index"]`) each optimizer step trains on, to check that a resumed run sees the
        same examples as an uninterrupted one."""
        path = os.environ.get(TRACE_SAMPLES_ENV)
        if not path:
            return
        if not isinstance(batch, dict) or "index" not in batch:
            raise ConfigError(f"{TRACE_SAMPLES_ENV}: the {self.name} task's training batches carry no 'index' "
                              f"(the numbers of their examples), so they cannot be traced")
        record = {"step": self.global_step, "rank": self.global_rank, "index": torch.as_tensor(batch["index"]).tolist()}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
