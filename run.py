#!/usr/bin/env python
"""One command from data to a trained model.

    python run.py --help                                   # the tasks
    python run.py <task> <fit|validate|test|predict> [--config configs/<task>/X.yaml] [--section.key value ...]
    python run.py <task> <verb> ...                        # extra verbs a task defines (e.g. `lm generate`)

Each task is a `tasks.base.Task` (a LightningModule) plus a `data.base.TaskDataModule`, driven by a LightningCLI,
so `--help`, `--print_config` and `--section.key value` work as in any LightningCLI. Without `--config` the task's
embedded default config applies. This file adds what every task shares: a run directory per run, wandb (offline)
plus a CSV log, `last.ckpt` (always the newest state) plus the best checkpoint on the task's monitored metric,
`--ckpt_path last` to resume, JSON-lines prediction output (one line per input, in order), and errors as one line.

Exit codes: 0 done; 2 a user error (a bad setting, data file, checkpoint or command line: one line naming it, and a
run directory this command created is removed); 1 training diverged (NaN/inf loss or gradient); 130 stopped by
Ctrl-C, 143 by SIGTERM (a scheduler's pre-emption), each after saving last.ckpt. Errors go to stderr, Lightning's
progress notes to stdout.
"""
from __future__ import annotations

import ctypes
import functools
import importlib
import json
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from jsonargparse import ArgumentError  # noqa: E402
from lightning_fabric.plugins import CheckpointIO  # noqa: E402
from pytorch_lightning.accelerators import CPUAccelerator  # noqa: E402
from pytorch_lightning.callbacks import BasePredictionWriter, Callback, LearningRateMonitor, ModelCheckpoint  # noqa: E402
from pytorch_lightning.cli import LightningCLI  # noqa: E402
from pytorch_lightning.loggers import CSVLogger  # noqa: E402
from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher  # noqa: E402
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn  # noqa: E402
from pytorch_lightning.utilities.exceptions import SIGTERMException  # noqa: E402

from data.errors import ConfigError, DataError  # noqa: E402
from tasks.base import TrainingDiverged  # noqa: E402
from tasks.checkpoint import AtomicCheckpointIO, LastCheckpoint, latest_checkpoint, read_checkpoint  # noqa: E402

SUBCOMMANDS = ("fit", "validate", "test", "predict")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # Lightning's own use of old jsonargparse APIs
RUN_DIR_ENV = "NLP_RUN_DIR"  # set by the launching process so DDP workers share its run directory
EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


@dataclass(frozen=True)
class TaskSpec:
    module: str      # "package.module:TaskClass"
    datamodule: str  # "package.module:DataModuleClass"
    default_config: str
    summary: str


TASKS: dict[str, TaskSpec] = {
    "classify": TaskSpec("tasks.classify:ClassificationTask", "data.classification:ClassificationDataModule",
                         "configs/classify/default.yaml",
                         "sentence / sentence-pair classification and regression over BERT (GLUE)"),
    "ner": TaskSpec("tasks.ner:NERTask", "data.conll:CoNLLDataModule", "configs/ner/default.yaml",
                    "token classification over BERT (CoNLL-2003 NER)"),
    "lm": TaskSpec("tasks.lm:LMTask", "data.text:TextDataModule", "configs/lm/default.yaml",
                   "GPT language-model pretraining and text generation"),
    "qa": TaskSpec("tasks.qa:QATask", "data.squad:SquadDataModule", "configs/qa/default.yaml",
                   "extractive question answering over BERT (SQuAD)"),
    "pretrain": TaskSpec("tasks.pretrain:PretrainTask", "data.pretrain:PretrainDataModule",
                         "configs/pretrain/default.yaml", "BERT pretraining: masked LM + next-sentence prediction"),
    "translate": TaskSpec("tasks.seq2seq:TranslationTask", "data.seq2seq:Seq2SeqDataModule",
                          "configs/translate/default.yaml", "encoder-decoder Transformer translation (Multi30k), BLEU"),
    "summarize": TaskSpec("tasks.seq2seq:SummarizationTask", "data.seq2seq:Seq2SeqDataModule",
                          "configs/summarize/default.yaml", "encoder-decoder summarization (AESLC), ROUGE"),
}


# Verbs every task has, `run.py <task> <verb> ...`: "module:function", called as function(task, argv) -> exit code.
COMMON_VERBS = {"export": "tasks.export:main", "attention": "tasks.attention:main"}


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2."""


# Errors that are the user's to fix, each reported as one line with exit code 2: a bad setting or data file
# (data.errors), a bad checkpoint (tasks.checkpoint.CheckpointError is a ConfigError), a missing path, a bad command
# line (jsonargparse).
USER_ERRORS = (UsageError, ConfigError, DataError, FileNotFoundError, ArgumentError)


def usage() -> str:
    lines = [__doc__.strip().splitlines()[0], "", "usage: python run.py <task> <subcommand> [options]", "",
             "tasks:"]
    lines += [f"  {name:<10} {spec.summary}" for name, spec in TASKS.items()]
    lines += ["", "subcommands: " + ", ".join(SUBCOMMANDS) + " (plus any verbs a task adds)",
              "help for one task: python run.py <task> --help;  for one subcommand: python run.py <task> fit --help"]
    return "\n".join(lines)


def import_target(target: str, task: str):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UsageError(f"task {task!r} is not available in this checkout: module {module_name} not found")
        raise
    if not attr:
        return module
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UsageError(f"task {task!r}: {module_name} defines no {attr}") from None


def reuse_freed_memory() -> bool:
    """Make glibc keep the memory this process frees for its next allocations, instead of returning it to the OS.

    glibc gives every block over 32 MB its own mmap and unmaps it when freed, so a training step on the CPU touches
    its activations' pages anew each time (an attention map of 32 x 12 x 176 x 176 floats is 48 MB); in a virtual
    machine each first touch is a page fault that costs more than the arithmetic done there. With mmap and trimming
    off, freed blocks are reused at once. Measured here (benchmarks/malloc_speed.py, in turns): a MiniLM step on 32
    windows of 176 tokens 0.87x the time, the first 20 batches of `run.py qa fit` 0.74x, the steps of a whole QA
    fit ~0.91x; peak resident memory +4-10 %. Processes started from this one (ddp_spawn) inherit it through MALLOC_*
    variables. Left alone where the environment already tunes malloc (MALLOC_*, GLIBC_TUNABLES, LD_PRELOAD: so also
    after a first call), on other C libraries, and with NLP_REUSE_FREED_MEMORY=0. True when this call applied it."""
    tuned = any(k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD") for k in os.environ)
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):           # no confstr (Windows), or no such name (musl, macOS)
        libc_name = ""
    if os.environ.get("NLP_REUSE_FREED_MEMORY") == "0" or tuned or not libc_name.startswith("glibc"):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, NEVER = -1, -4, 2**31 - 1         # <malloc.h>
    libc = ctypes.CDLL(None)
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, NEVER) != 1:
        return False
    os.environ.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(NEVER))
    return True


def one_line(message: str, limit: int = 600) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class JsonLinesWriter(BasePredictionWriter):
    """Writes what `predict_step` returns (a list of JSON-able dicts per batch) as one line each, in order."""

    def __init__(self, path: Path):
        super().__init__(write_interval="batch")
        self.path = path
        self.count = 0

    def on_predict_start(self, trainer, pl_module):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("w", encoding="utf-8")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.file.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in prediction)
        self.count += len(prediction)

    def on_predict_end(self, trainer, pl_module):
        self.file.close()


class ValidationStep(Callback):
    """The global step of a fit's newest validation (None before the first). A fit that stops between validations
    (`max_steps` inside an epoch, `check_val_every_n_epoch` > 1) ends with val/ metrics of earlier weights, and the
    report says so."""

    def __init__(self):
        self.step: Optional[int] = None

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.step = trainer.global_step


class TaskCLI(LightningCLI):
    """LightningCLI for one task: run directory, loggers, checkpoints, the checkpoint handed to model and data."""

    def __init__(self, task: str, args: list[str]):
        """Parses `args` and runs the subcommand. The task's default config applies when no --config is given."""
        spec = TASKS[task]
        self.task = task
        self.checkpoint: Optional[dict] = None
        self.checkpoint_step: Optional[int] = None     # the global step of the checkpoint given (--ckpt_path)
        self.run_dir: Optional[Path] = None
        self.created_run_dir = False
        self.last_checkpoint = None
        self.validation_step = ValidationStep()
        self.given_model_keys = {a.removeprefix("--model.").split("=")[0].split(".")[0]
                                 for a in args if a.startswith("--model.")}
        # only the subcommand asked for gets a parser: each one costs most of a second to build (all four for --help)
        self.parsed_subcommands = [args[0]] if args and args[0] in SUBCOMMANDS else list(SUBCOMMANDS)
        default = [] if config_paths(args) else [str(ROOT / spec.default_config)]
        sub_kwargs = {"exit_on_error": False, "default_config_files": default}
        try:
            super().__init__(
                import_target(spec.module, task), import_target(spec.datamodule, task), args=args,
                seed_everything_default=42,
                parser_kwargs={"exit_on_error": False, **{s: sub_kwargs for s in self.parsed_subcommands}},
                trainer_defaults={"use_distributed_sampler": False},   # every loader shards itself (data/batching.py)
                save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)
        except USER_ERRORS:
            # a run that stopped on a user error leaves nothing behind: the run directory it created goes
            if self.created_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def subcommands(self) -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        return {name: every[name] for name in self.parsed_subcommands}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run_dir", type=Optional[str], default=None,
                            help="Run directory (logs, checkpoints, predictions). Default: runs/<task>/<config "
                                 "name>[_N], a new one per run; with `--ckpt_path last` the latest one with a checkpoint.")
        parser.add_argument("--wandb", type=bool, default=True,
                            help="Log to wandb (offline unless WANDB_MODE says otherwise) beside the CSV log.")
        parser.add_argument("--checkpoint_every_n_steps", type=Optional[int], default=None,
                            help="Also write last.ckpt every N optimizer steps (it is always written after each "
                                 "validation and at the end).")
        parser.add_argument("--predict_output", type=Optional[str], default=None,
                            help="Where `predict` writes JSON lines. Default: <run_dir>/predictions.jsonl.")

    # ---- run directory, `--ckpt_path last`, and the checkpoint ------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Resolve the run directory and `--ckpt_path` (`last`: the newest checkpoint of the run, whatever its name;
        for validate / test / predict, of this config's fit runs), read the checkpoint once, safely, refusing another
        task's, and take its model settings as LightningCLI does: a `--model.X` on the command line that says otherwise
        is refused, not silently overridden (the decoding settings, which a checkpoint does not keep, excepted)."""
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        every = cfg.get("checkpoint_every_n_steps")
        if every is not None and every < 1:
            raise UsageError(f"--checkpoint_every_n_steps {every}: must be at least 1")
        self.run_dir = self._resolve_run_dir(sub, cfg)
        if cfg.get("ckpt_path") == "last":
            searched = [self.run_dir] if sub == "fit" or cfg.get("run_dir") else self._numbered_runs(cfg, "fit")
            newest = latest_checkpoint(*searched)
            if newest is None:
                raise UsageError(f"--ckpt_path last: no checkpoint in {searched[0] / 'checkpoints'}"
                                 + ("" if len(searched) == 1 else " or its numbered siblings (_2, _3, ...)"))
            cfg["ckpt_path"] = str(newest)
        if not cfg.get("ckpt_path"):
            if sub != "fit" and not cfg["model"].get("pretrained"):
                raise UsageError(f"{sub} needs a trained model: --ckpt_path (a checkpoint of `run.py {self.task} fit`, "
                                 f"or `last`: the newest of this config's fits) or --model.pretrained")
            return
        self.checkpoint = read_checkpoint(cfg["ckpt_path"], task=self.task)
        self.checkpoint_step = int(self.checkpoint.get("global_step", 0))
        hparams = {k: v for k, v in self.checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
        for key in sorted(self.given_model_keys & set(hparams)):
            given, trained = cfg["model"][key], hparams[key]
            if json.dumps(given, sort_keys=True, default=str) != json.dumps(trained, sort_keys=True, default=str):
                raise UsageError(f"--model.{key} {given}: {cfg['ckpt_path']} was trained with {trained!r}, and a run "
                                 f"from a checkpoint keeps the model settings it was trained with")
        if hparams:
            try:
                self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
            except ArgumentError as e:        # written by another version of the task
                raise UsageError(f"{cfg['ckpt_path']}: its model settings do not fit this {self.task} task ({e})") \
                    from None

    def _resolve_run_dir(self, sub: str, cfg) -> Path:
        if os.environ.get(RUN_DIR_ENV):
            return Path(os.environ[RUN_DIR_ENV])
        if cfg.get("run_dir"):
            run_dir = Path(cfg["run_dir"])
        else:
            candidates = self._numbered_runs(cfg, sub)
            if sub == "fit" and cfg.get("ckpt_path") == "last":  # the run of the newest: <run>/checkpoints/<file>
                newest = latest_checkpoint(*candidates)
                run_dir = newest.parent.parent if newest is not None else candidates[0]
            else:
                run_dir = next(c for c in candidates if not c.exists())
        self.created_run_dir = not run_dir.exists()
        return run_dir

    def _numbered_runs(self, cfg, sub: str) -> list[Path]:
        """runs/<task>/<config name>[_<sub>][_N]: the run directories of a subcommand with this config."""
        configs = cfg.get("config") or []
        stem = Path(str(configs[-1])).stem if configs else "default"
        base = Path("runs") / self.task / (stem if sub == "fit" else f"{stem}_{sub}")
        return [base] + [base.with_name(f"{base.name}_{i}") for i in range(2, 1000)]

    def after_instantiate_classes(self) -> None:
        """A restored checkpoint builds the model and gives the data its tokenizer and labels, before anything runs."""
        if self.checkpoint is not None:
            bp = self.model.restore(self.checkpoint, str(self.config[self.subcommand]["ckpt_path"]))
            if self.datamodule is not None:
                self.datamodule.adopt(bp)
            self.checkpoint = None            # the trainer reads the file again for the weights

    # ---- loggers and callbacks every task gets ------------------------------------------------------------
    def instantiate_trainer(self, **kwargs):
        cfg = self.config[self.subcommand]
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        run_dir = self.run_dir
        os.environ[RUN_DIR_ENV] = str(run_dir)
        callbacks = list(trainer_cfg.get("callbacks") or [])
        loggers = []
        if trainer_cfg.get("logger", True) is not False:
            if cfg.get("wandb", True) and self.subcommand == "fit":
                loggers += self._wandb_logger(run_dir)
            # a resumed fit, or an evaluation in its fit's directory, logs beside the metrics.csv already there
            # (in resume_N / validate_N / test_N) instead of overwriting it
            version = ""
            if (self.subcommand == "fit" and cfg.get("ckpt_path")) or (run_dir / "metrics.csv").exists():
                label = "resume" if self.subcommand == "fit" else self.subcommand
                version = next(f"{label}_{i}" for i in range(1, 10_000) if not (run_dir / f"{label}_{i}").exists())
            loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=version))
            if not (run_dir / version / "metrics.csv").exists():    # the directory holds wandb's files, not a log
                warnings.filterwarnings("ignore", message=f"Experiment logs directory {re.escape(str(run_dir))}")
            if self.subcommand == "fit":
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "fit":
            callbacks.append(self.validation_step)
        if self.subcommand == "fit" and trainer_cfg.get("enable_checkpointing", True) is not False:
            if not getattr(self.model, "monitor", None):
                raise TypeError(f"{type(self.model).__name__} sets no `monitor`: every Task names the validation "
                                "metric that picks the best checkpoint (tasks/base.py)")
            callbacks.append(ModelCheckpoint(
                dirpath=run_dir / "checkpoints", filename="best-epoch={epoch}-step={step}",
                auto_insert_metric_name=False, monitor=self.model.monitor, mode=self.model.monitor_mode,
                save_top_k=1, save_last=False))
            self.last_checkpoint = LastCheckpoint(run_dir / "checkpoints", cfg.get("checkpoint_every_n_steps"))
            callbacks.append(self.last_checkpoint)
        if self.subcommand == "predict":
            self.prediction_writer = JsonLinesWriter(Path(cfg.get("predict_output") or run_dir / "predictions.jsonl"))
            callbacks.append(self.prediction_writer)
        kwargs.setdefault("default_root_dir", str(run_dir))
        kwargs.setdefault("logger", loggers or False)
        kwargs.setdefault("callbacks", callbacks)
        kwargs.setdefault("plugins", self._checkpoint_io(trainer_cfg.get("plugins")))
        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer.accelerator, CPUAccelerator):      # on a GPU the big blocks are not the CPU's
            reuse_freed_memory()
        return trainer

    @staticmethod
    def _checkpoint_io(plugins) -> list:
        """The configured plugins, plus checkpoints written atomically (tasks/checkpoint.AtomicCheckpointIO) unless
        the configuration brings its own CheckpointIO."""
        plugins = list(plugins or []) if isinstance(plugins, (list, tuple)) or plugins is None else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return plugins

    @staticmethod
    def _wandb_logger(run_dir: Path) -> list:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        if os.environ["WANDB_MODE"] == "disabled":
            return []
        try:
            from pytorch_lightning.loggers import WandbLogger
            import wandb  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any import failure means: CSV only
            rank_zero_warn(f"wandb unavailable ({one_line(e, 120)}); logging to CSV only")
            return []
        run_dir.mkdir(parents=True, exist_ok=True)
        logger = WandbLogger(save_dir=str(run_dir), project=f"nlp-{run_dir.parent.name}", name=run_dir.name,
                             offline=os.environ["WANDB_MODE"] == "offline")
        logger._wandb_init.pop("anonymous", None)       # Lightning always passes it; wandb (0.19+) warns it is gone
        return [logger]

    # ---- reports --------------------------------------------------------------------------------------------
    def metrics(self) -> dict:
        return {k: round(float(v), 6) for k, v in self.trainer.callback_metrics.items()
                if isinstance(v, (int, float, torch.Tensor)) and torch.as_tensor(v).numel() == 1}

    @property
    def interrupted(self) -> bool:
        return self.last_checkpoint is not None and self.last_checkpoint.interrupted

    @functools.cached_property
    def final_step(self) -> int:
        """The run's last optimizer step, read once it has ended. Under ddp_fork / ddp_spawn the processes that
        trained were children, and Lightning does not bring their step count back to this one: their last.ckpt
        holds it."""
        path = self.last_checkpoint.path if self.last_checkpoint is not None else None
        if isinstance(self.trainer.strategy.launcher, _MultiProcessingLauncher) and path is not None and path.exists():
            return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
        return self.trainer.global_step

    def after_fit(self) -> None:
        best = self.trainer.checkpoint_callback
        lines = [f"run directory: {self.run_dir}"]
        if self.interrupted:
            lines.append(f"interrupted at step {self.final_step}: resume with --ckpt_path last")
        if best is not None and best.best_model_path:
            score = "" if best.best_model_score is None else f" ({best.monitor}={float(best.best_model_score):.4f})"
            lines.append(f"best checkpoint: {best.best_model_path}{score}")
        if self.last_checkpoint is not None:
            lines.append(f"last checkpoint: {self.last_checkpoint.path} (step {self.final_step})")
        # learning rates per parameter group are in metrics.csv and fit_metrics.json; the console gets the results,
        # and the train/ values apart: they are of the last logged batch, not of the whole final model
        shown = {k: v for k, v in self.metrics().items() if not k.startswith("lr-")}
        lines.append("final metrics: " + json.dumps({k: v for k, v in shown.items() if not k.startswith("train/")},
                                                    sort_keys=True))
        last_batch = {k: v for k, v in shown.items() if k.startswith("train/")}
        if last_batch:
            lines.append("last training batch: " + json.dumps(last_batch, sort_keys=True))
        validated = self.validation_step.step
        if validated is not None and validated != self.trainer.global_step:     # val/ metrics of earlier weights
            last = self.last_checkpoint.path if self.last_checkpoint is not None else "<checkpoint>"
            lines.append(f"the val/ metrics are of step {validated}, not of the final step "
                         f"{self.trainer.global_step}: `run.py {self.task} validate --ckpt_path {last}` scores the "
                         "final weights")
        rank_zero_info("\n".join(lines))
        self.write_summary("fit")
        if self.trainer.is_global_zero:        # curves.png from the CSV log, and the same picture to wandb
            from tasks.plots import write_curves
            write_curves(self.run_dir, self.trainer.loggers)

    def after_validate(self) -> None:
        ckpt = self.config[self.subcommand].get("ckpt_path")
        scored = f"checkpoint: {ckpt} (step {self.checkpoint_step})\n" if ckpt else ""
        rank_zero_info(f"run directory: {self.run_dir}\n{scored}metrics: " + json.dumps(self.metrics(), sort_keys=True))
        self.write_summary(self.subcommand)

    after_test = after_validate

    def after_predict(self) -> None:
        w = self.prediction_writer
        rank_zero_info(f"wrote {w.count} predictions to {w.path}")

    def write_summary(self, sub: str) -> None:
        """<sub>_metrics.json in the run directory: what a benchmark script reads back."""
        if self.trainer.global_rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # an evaluation's trainer counts no steps: its model is the checkpoint's (None: model.pretrained as it is)
        step = self.final_step if sub == "fit" else self.checkpoint_step
        summary = {"subcommand": sub, "metrics": self.metrics(), "global_step": step}
        if sub == "fit":
            best = self.trainer.checkpoint_callback
            summary.update(best_checkpoint=(best.best_model_path or None) if best else None,
                           last_checkpoint=str(self.last_checkpoint.path) if self.last_checkpoint else None,
                           interrupted=self.interrupted, validation_step=self.validation_step.step)
        (self.run_dir / f"{sub}_metrics.json").write_text(json.dumps(summary, indent=1) + "\n")


def config_paths(args: list[str]) -> list[str]:
    """The files of `--config FILE`, `--config=FILE` and `-c FILE` in `args`."""
    paths = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    return paths + [b for a, b in zip(args, args[1:]) if a in ("-c", "--config")]


def check_config_files(args: list[str]) -> None:
    """Every `--config FILE` exists and is YAML; else one UsageError line naming the file and line (jsonargparse
    would name neither)."""
    for path in map(Path, config_paths(args)):
        if not path.is_file():
            raise UsageError(f"--config {path}: " + ("file not found" if not path.exists() else "not a file"))
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"{path}{where}: not valid YAML ({e.problem or e.context})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: not valid YAML ({one_line(e, 200)})") from None


def in_which_config(error: Exception, args: list[str]) -> str:
    """jsonargparse's "... does not accept option 'a.b'", prefixed with the --config file that sets a.b, if one does."""
    unknown = re.search(r"does not accept option '([^']+)'", str(error))
    if unknown is None:
        return str(error)
    for path in config_paths(args):
        node = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        for part in unknown.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return f"{path}: unknown key {unknown.group(1)} ({error})"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USER_ERROR
    task, rest = argv[0], argv[1:]
    launched_here = RUN_DIR_ENV not in os.environ
    outer_wandb_run = wandb_run()
    try:
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}; choose from: {', '.join(TASKS)}")
        if rest and rest[0] in COMMON_VERBS:
            return int(import_target(COMMON_VERBS[rest[0]], task)(task, rest[1:]) or 0)
        task_module = import_target(TASKS[task].module.partition(":")[0], task)
        verbs = getattr(task_module, "VERBS", {})
        if rest and rest[0] in verbs:
            return int(verbs[rest[0]](rest[1:]) or 0)
        if rest and rest[0] in ("-h", "--help"):       # LightningCLI's help lists the four subcommands only
            print(f"verbs of {task} beyond {', '.join(SUBCOMMANDS)}: {', '.join([*verbs, *COMMON_VERBS])} "
                  f"(run.py {task} <verb> --help)\n")
        if rest and not rest[0].startswith("-") and rest[0] not in SUBCOMMANDS:
            raise UsageError(f"unknown subcommand {rest[0]!r} for task {task!r}; choose from: "
                             + ", ".join([*SUBCOMMANDS, *verbs, *COMMON_VERBS]))
        check_config_files(rest)
        with warnings.catch_warnings():  # run.py passes args on purpose; Lightning warns about that
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
            # Lightning 2.6 calls a torch API this torch deprecates, on every run: a note for its developers
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            if rest and rest[0] != "fit":      # evaluation restores no training callbacks, on purpose
                warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
            cli = TaskCLI(task, rest)
        return EXIT_INTERRUPTED if cli.interrupted else 0
    except USER_ERRORS as e:
        print(f"run.py {task}: error: {one_line(in_which_config(e, rest))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SIGTERMException:
        print(f"run.py {task}: stopped by SIGTERM; last.ckpt holds the last step: resume with --ckpt_path last",
              file=sys.stderr)
        return EXIT_TERMINATED
    except TrainingDiverged as e:
        print(f"run.py {task}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        if launched_here:
            os.environ.pop(RUN_DIR_ENV, None)
        if wandb_run() is not outer_wandb_run:    # the wandb run this command started ends with it, so a next
            sys.modules["wandb"].finish()          # main() in the same process (a notebook, a test) gets its own


def wandb_run():
    """The wandb run in progress in this process, if wandb is loaded and one is."""
    return getattr(sys.modules.get("wandb"), "run", None)


def lightning_notes_to_stdout() -> None:
    """Lightning's and Fabric's progress notes ("GPU available: ...", "Seed set to 42") go to stdout, so that stderr
    holds warnings and errors only: a failed command's stderr is its one error line."""
    for name in ("pytorch_lightning", "lightning_fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)


if __name__ == "__main__":
    lightning_notes_to_stdout()
    sys.exit(main())
