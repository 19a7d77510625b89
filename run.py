#!/usr/bin/env python
"""One command from data to a trained model.

    python run.py --help                                   # the tasks
    python run.py <task> <fit|validate|test|predict> [--config configs/<task>/X.yaml] [--section.key value ...]
    python run.py <task> <verb> ...                        # extra verbs a task defines (e.g. `lm generate`)

Each task is a LightningModule (tasks/) plus a LightningDataModule (data/) driven by a LightningCLI, so
`--help`, `--print_config` and `--section.key value` work as in any LightningCLI. Without `--config`
the task's default config applies. This file adds the plumbing every task shares: a run directory per
run, wandb (offline) plus a CSV log, `last.ckpt` plus the best checkpoint on the metric the task monitors,
`--ckpt_path last` to resume, JSON-lines prediction output, and one-line errors with exit code 2.

A task module may define `VERBS = {"name": main_fn}` with `main_fn(argv: list[str]) -> int`; run.py
hands `run.py <task> name ...` to it. A LightningModule tells run.py which metric to checkpoint on with
the attributes `monitor` (e.g. "val/accuracy") and `monitor_mode` ("max" or "min"); run.py sets
`model.checkpoint_to_restore` to the `--ckpt_path` file (or None) before the trainer runs, so a module that
builds its layers in `configure_model` can leave that to `on_load_checkpoint` instead.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUBCOMMANDS = ("fit", "validate", "test", "predict")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # Lightning's own use of old jsonargparse APIs
RUN_DIR_ENV = "NLP_RUN_DIR"  # set by the launching process so DDP workers share its run directory


@dataclass(frozen=True)
class TaskSpec:
    module: str      # "package.module:LightningModuleClass"
    datamodule: str  # "package.module:LightningDataModuleClass"
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
}


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2."""


def usage() -> str:
    lines = [__doc__.strip().splitlines()[0], "", "usage: python run.py <task> <subcommand> [options]", "",
             "tasks:"]
    for name, spec in TASKS.items():
        lines.append(f"  {name:<10} {spec.summary}")
    lines += ["", "subcommands: " + ", ".join(SUBCOMMANDS) + " (plus any verbs a task adds)",
              "help for one task: python run.py <task> --help;  for one subcommand: python run.py <task> fit --help"]
    return "\n".join(lines)


def _import(target: str, task: str):
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


def _config_stem(args: list[str]) -> str:
    stem = None
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            stem = Path(args[i + 1]).stem
        elif a.startswith("--config="):
            stem = Path(a.split("=", 1)[1]).stem
    return stem or "default"


def _one_line(message: str, limit: int = 400) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _build_cli_class():
    """The LightningCLI subclass, built lazily so `run.py --help` does not import Lightning."""
    import torch
    from pytorch_lightning.callbacks import BasePredictionWriter, LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

    class JsonLinesWriter(BasePredictionWriter):
        """Writes what `predict_step` returns (a list of JSON-able dicts per batch) as one line per input."""

        def __init__(self, path: Path):
            super().__init__(write_interval="batch")
            self.path = path
            self.count = 0

        def on_predict_start(self, trainer, pl_module):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("w")

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                               dataloader_idx=0):
            for item in prediction:
                self.file.write(json.dumps(item) + "\n")
                self.count += 1

        def on_predict_end(self, trainer, pl_module):
            self.file.close()

    class TaskCLI(LightningCLI):
        def __init__(self, task: str, model_class, datamodule_class, args: list[str]):
            self.task = task
            self.config_stem = _config_stem(args)
            no_exit = {"exit_on_error": False}
            super().__init__(
                model_class, datamodule_class, args=args, seed_everything_default=42,
                parser_kwargs={**no_exit, **{s: dict(no_exit) for s in SUBCOMMANDS}},
                save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
            )

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--run_dir", type=Optional[str], default=None,
                                help="Run directory (logs, checkpoints, predictions). Default: "
                                     "runs/<task>/<config name>[_N], a new one per run; with `--ckpt_path last` "
                                     "the latest one that has a last.ckpt.")
            parser.add_argument("--wandb", type=bool, default=True,
                                help="Log to wandb (offline unless WANDB_MODE says otherwise) beside the CSV log.")
            parser.add_argument("--checkpoint_every_n_steps", type=Optional[int], default=None,
                                help="Also keep a checkpoint every N optimizer steps (step=N.ckpt).")
            parser.add_argument("--predict_output", type=Optional[str], default=None,
                                help="Where `predict` writes JSON lines. Default: <run_dir>/predictions.jsonl.")

        # ---- run directory and `--ckpt_path last` --------------------------------------------------------
        def parse_arguments(self, parser, args) -> None:
            super().parse_arguments(parser, args)
            sub = self.config.get("subcommand")
            if sub is None:
                return
            cfg = self.config[sub]
            self.run_dir = self._resolve_run_dir(sub, cfg)
            if cfg.get("ckpt_path") == "last":
                last = self.run_dir / "checkpoints" / "last.ckpt"
                if not last.is_file():
                    raise UsageError(f"--ckpt_path last: no checkpoint at {last}")
                cfg["ckpt_path"] = str(last)
            ckpt = cfg.get("ckpt_path")
            if ckpt and not Path(ckpt).is_file():
                raise UsageError(f"--ckpt_path {ckpt}: no such file")

        def _resolve_run_dir(self, sub: str, cfg) -> Path:
            if os.environ.get(RUN_DIR_ENV):
                return Path(os.environ[RUN_DIR_ENV])
            if cfg.get("run_dir"):
                return Path(cfg["run_dir"])
            base = Path("runs") / self.task / (self.config_stem + ("" if sub == "fit" else f"_{sub}"))
            candidates = [base] + [base.with_name(f"{base.name}_{i}") for i in range(2, 1000)]
            if sub == "fit" and cfg.get("ckpt_path") == "last":
                with_last = [c for c in candidates if (c / "checkpoints" / "last.ckpt").is_file()]
                if with_last:
                    return max(with_last, key=lambda c: (c / "checkpoints" / "last.ckpt").stat().st_mtime)
                return base
            return next(c for c in candidates if not c.exists())

        # ---- loggers and callbacks every task gets ------------------------------------------------------
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
                # a resumed fit logs beside the first run's metrics.csv instead of overwriting it
                version = ""
                if self.subcommand == "fit" and cfg.get("ckpt_path"):
                    version = next(f"resume_{i}" for i in range(1, 10_000) if not (run_dir / f"resume_{i}").exists())
                loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=version))
                if self.subcommand == "fit":
                    callbacks.append(LearningRateMonitor(logging_interval="step"))
            if self.subcommand == "fit" and trainer_cfg.get("enable_checkpointing", True) is not False:
                callbacks.append(ModelCheckpoint(
                    dirpath=run_dir / "checkpoints", filename="best-epoch={epoch}-step={step}",
                    auto_insert_metric_name=False, monitor=getattr(self.model, "monitor", None),
                    mode=getattr(self.model, "monitor_mode", "min"), save_top_k=1, save_last=True))
                if cfg.get("checkpoint_every_n_steps"):
                    callbacks.append(ModelCheckpoint(
                        dirpath=run_dir / "checkpoints", filename="step={step}", auto_insert_metric_name=False,
                        every_n_train_steps=cfg["checkpoint_every_n_steps"], save_top_k=-1))
            if self.subcommand == "predict":
                out = Path(cfg.get("predict_output") or run_dir / "predictions.jsonl")
                self.prediction_writer = JsonLinesWriter(out)
                callbacks.append(self.prediction_writer)
            # tells a module whose layers depend on the checkpoint to build them in on_load_checkpoint
            self.model.checkpoint_to_restore = cfg.get("ckpt_path")
            kwargs.setdefault("default_root_dir", str(run_dir))
            kwargs.setdefault("logger", loggers or False)
            kwargs.setdefault("callbacks", callbacks)
            return super().instantiate_trainer(**kwargs)

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
                rank_zero_warn(f"wandb unavailable ({_one_line(e, 120)}); logging to CSV only")
                return []
            run_dir.mkdir(parents=True, exist_ok=True)
            return [WandbLogger(save_dir=str(run_dir), project=f"nlp-{run_dir.parent.name}", name=run_dir.name,
                                offline=os.environ["WANDB_MODE"] == "offline")]

        # ---- reports -------------------------------------------------------------------------------------
        def _metrics(self) -> dict:
            return {k: round(float(v), 6) for k, v in self.trainer.callback_metrics.items()
                    if isinstance(v, (int, float, torch.Tensor)) and torch.as_tensor(v).numel() == 1}

        def after_fit(self) -> None:
            ckpt = self.trainer.checkpoint_callback
            lines = [f"run directory: {self.run_dir}"]
            if ckpt is not None and ckpt.best_model_path:
                score = "" if ckpt.best_model_score is None else f" ({ckpt.monitor}={float(ckpt.best_model_score):.4f})"
                lines.append(f"best checkpoint: {ckpt.best_model_path}{score}")
            if ckpt is not None and ckpt.last_model_path:
                lines.append(f"last checkpoint: {ckpt.last_model_path}")
            # learning rates per parameter group are in metrics.csv and fit_metrics.json; the console gets the results
            shown = {k: v for k, v in self._metrics().items() if not k.startswith("lr-")}
            lines.append("final metrics: " + json.dumps(shown, sort_keys=True))
            rank_zero_info("\n".join(lines))
            self._write_summary("fit")

        def after_validate(self) -> None:
            rank_zero_info(f"run directory: {self.run_dir}\nmetrics: " + json.dumps(self._metrics(), sort_keys=True))
            self._write_summary("validate")

        def after_test(self) -> None:
            rank_zero_info(f"run directory: {self.run_dir}\nmetrics: " + json.dumps(self._metrics(), sort_keys=True))
            self._write_summary("test")

        def after_predict(self) -> None:
            w = self.prediction_writer
            rank_zero_info(f"wrote {w.count} predictions to {w.path}")

        def _write_summary(self, sub: str) -> None:
            """metrics.json in the run directory: what a benchmark script reads back."""
            if self.trainer.global_rank != 0:
                return
            self.run_dir.mkdir(parents=True, exist_ok=True)
            summary = {"subcommand": sub, "metrics": self._metrics(), "global_step": self.trainer.global_step}
            ckpt = self.trainer.checkpoint_callback
            if sub == "fit" and ckpt is not None:
                summary.update(best_checkpoint=ckpt.best_model_path or None,
                               last_checkpoint=ckpt.last_model_path or None)
            (self.run_dir / f"{sub}_metrics.json").write_text(json.dumps(summary, indent=1) + "\n")

    return TaskCLI


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    task, rest = argv[0], argv[1:]
    launched_here = RUN_DIR_ENV not in os.environ
    try:
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}; choose from: {', '.join(TASKS)}")
        spec = TASKS[task]
        task_module = _import(spec.module.partition(":")[0], task)
        verbs = getattr(task_module, "VERBS", {})
        if rest and rest[0] in verbs:
            return int(verbs[rest[0]](rest[1:]) or 0)
        if rest and not rest[0].startswith("-") and rest[0] not in SUBCOMMANDS:
            raise UsageError(f"unknown subcommand {rest[0]!r} for task {task!r}; choose from: "
                             + ", ".join([*SUBCOMMANDS, *verbs]))
        model_class = _import(spec.module, task)
        datamodule_class = _import(spec.datamodule, task)
        has_config = any(a in ("-c", "--config") or a.startswith("--config=") for a in rest)
        default = ROOT / spec.default_config
        if rest and rest[0] in SUBCOMMANDS and not has_config and default.exists():
            rest = [rest[0], "--config", str(default), *rest[1:]]
        import warnings
        with warnings.catch_warnings():  # run.py passes args on purpose; Lightning warns about that
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
            _build_cli_class()(task, model_class, datamodule_class, rest)
        return 0
    except UsageError as e:
        print(f"run.py {task}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        from jsonargparse import ArgumentError
        data_error, config_error = _user_error_classes()
        if isinstance(e, (ArgumentError, config_error, FileNotFoundError)):   # a setting names a missing file
            print(f"run.py {task}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        if isinstance(e, data_error):
            print(f"run.py {task}: error: {_one_line(e, 1000)}", file=sys.stderr)
            return 1
        raise
    finally:
        if launched_here:
            os.environ.pop(RUN_DIR_ENV, None)


def _user_error_classes() -> tuple[type, type]:
    """data.errors: DataError (a bad input file: one line naming file, row and what is wrong, exit 1) and
    ConfigError (settings that do not fit together: one line naming the key, exit 2). A FileNotFoundError
    (a checkpoint, tokenizer or data path that is not there; its message names the path) is also one line."""
    from data.errors import ConfigError, DataError
    return DataError, ConfigError


if __name__ == "__main__":
    sys.exit(main())
