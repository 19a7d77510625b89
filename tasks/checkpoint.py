"""One checkpoint layout, one reader, and the `last.ckpt` that always holds the newest state.

Layout. Besides Lightning's own entries (state_dict, optimizer and loop states, hyper_parameters), every
checkpoint a task writes carries `checkpoint["task"]`, a `Blueprint` (below): with it, `predict`, `test`, resuming,
exporting and starting another task from the encoder need nothing but the file.

Reading. `read_checkpoint` is the only place a `.ckpt` is opened (`weights_only=True`: a pickle that runs code is
refused). Every problem is one `CheckpointError` line naming the file: missing, truncated or not a checkpoint,
unsafe, written by another task (named), or by an unknown format.

Saving. `LastCheckpoint` keeps `last.ckpt` the newest state, also when Ctrl-C or SIGTERM stops a run;
`AtomicCheckpointIO` writes every checkpoint so that a kill never leaves a half-written one under a `.ckpt` name;
`latest_checkpoint` finds the newest checkpoint of a run, whatever its name.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from data.errors import ConfigError

FORMAT = 1


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used here: one line naming the file and the reason (exit code 2)."""


@dataclass
class Blueprint:
    """What rebuilds a task's network and its inputs without the original files (`checkpoint["task"]`)."""
    task: str                                   # run.py's task name
    model_kind: str                             # "bert", "gpt" or "transformer"
    model_config: dict                          # the modeling config's fields
    tokenizer: Optional[str] = None             # the serialised tokenizer (tokenizers JSON, or lm's TextTokenizer)
    labels: Optional[list[str]] = None          # class / tag names, in output order
    settings: dict = field(default_factory=dict)  # the task's shape settings (pooling, regression, casing, ...)
    format: int = FORMAT

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "checkpoint") -> "Blueprint":
        missing = {"task", "model_kind", "model_config"} - set(d)
        if missing or not set(d) <= {f.name for f in dataclasses.fields(cls)}:
            raise CheckpointError(f"{source}: malformed task entry (keys {sorted(d)})")
        return cls(**d)


def read_checkpoint(path: str | Path, task: Optional[str] = None) -> dict:
    """The checkpoint at `path` as a dict, loaded with `weights_only=True`; with `task`, it must be that task's."""
    path = Path(path)
    if (path / "latest").is_file() and (path / "checkpoint").is_dir():        # what Lightning's DeepSpeed saves
        raise CheckpointError(f"{path}: a DeepSpeed checkpoint directory (sharded); make one file of it first: "
                              f"python -c \"from pytorch_lightning.utilities.deepspeed import "
                              f"convert_zero_checkpoint_to_fp32_state_dict as c; c('{path}', 'model.ckpt')\"")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found" if not path.exists()
                              else f"{path}: not a checkpoint file (a directory?)")
    if not zipfile.is_zipfile(path):        # what torch.save writes; a cut or foreign file is not one
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, or another kind of file: not the zip "
                              f"archive torch.save writes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("\n")[0]
        if "Unsupported" in str(e) or "weights_only" in str(e):
            reason = "it holds Python objects that could run code, refused (weights_only=True)"
        raise CheckpointError(f"{path}: cannot load safely: {reason}") from None
    except Exception as e:  # noqa: BLE001 - whatever breaks while reading it, the file is not a checkpoint
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or another kind of file: {first})") \
            from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    if task is not None:
        blueprint(ckpt, path, task)
    return ckpt


def blueprint(ckpt: dict, path: str | Path = "checkpoint", task: Optional[str] = None) -> Blueprint:
    """The checkpoint's Blueprint; with `task`, a checkpoint of another task is an error that names its task."""
    entry = ckpt.get("task")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: not written by this suite's tasks (no 'task' entry)")
    if entry.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {entry.get('format')!r}, this version reads {FORMAT}")
    bp = Blueprint.from_dict(entry, str(path))
    if task is not None and bp.task != task:
        raise CheckpointError(f"{path}: this is a {bp.task!r} checkpoint, not a {task!r} one "
                              f"(use `run.py {bp.task} ...`, or give it to --model.pretrained to start from its encoder)")
    return bp


def latest_checkpoint(*run_dirs: str | Path) -> Optional[Path]:
    """The most recently written `*.ckpt` under `<run_dir>/checkpoints` of any of `run_dirs`, whatever its name (None
    if there is none). A tie goes to last.ckpt: a best checkpoint written in the same clock tick (a few ms on Linux)
    holds the state after the same step's validation, and last.ckpt the one to continue from (LastCheckpoint)."""
    files = [path for run_dir in run_dirs for path in (Path(run_dir) / "checkpoints").glob("*.ckpt")]
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name == LastCheckpoint.FILENAME)) if files else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to `.<name>.tmp` in its own directory, flushed to disk, then renames it to `<name>`: the
    `.ckpt` is the previous complete file or the new complete file, never a part of one. (Lightning's own fsspec
    transaction writes to the system's temporary directory and *moves* the file, which is a copy straight into the
    `.ckpt` when that directory is on another file system, as /tmp and a cluster's shared disk are.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        with open(partial, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)


class LastCheckpoint(pl.callbacks.Checkpoint):
    """Keeps `<dirpath>/last.ckpt` the newest state of the run.

    Saved every `every_n_steps` optimizer steps (if set), after each validation during fit, and when fit ends.
    A run that stops (max_steps, max_time, Ctrl-C, the last batch of max_epochs) is saved at its last step, before
    Lightning counts the epoch as done, so a resumed run continues that epoch where it stopped, and a finished run
    resumed with a larger max_epochs trains the next one. The validation after such a stop may keep a new best
    checkpoint: last.ckpt then gets the best-checkpoint bookkeeping of after it (the file it names). Ctrl-C: the first
    SIGINT asks the run to stop at the end of the current step (the state is consistent there); a second one
    interrupts at once. SIGTERM (what a cluster scheduler sends before it kills a pre-empted job): Lightning stops
    at the end of the current step, and last.ckpt is written first. (A `Checkpoint` subclass, so Lightning runs it
    after the callbacks that stop a run.)
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_n_steps: Optional[int] = None):
        super().__init__()
        self.path = Path(dirpath).absolute() / self.FILENAME    # absolute, as ModelCheckpoint names the best one
        self.every_n_steps = every_n_steps
        self.interrupted = False                   # stopped by SIGINT (Ctrl-C)
        self._previous_handler: Any = None
        self._saved_step = -1
        self._saved_best: dict[str, set] = {}       # the best checkpoints each ModelCheckpoint kept at the last save
        self._stop_saved = False

    def save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_step = trainer.global_step
        self._saved_best = self._kept(self._best_states(trainer))

    @staticmethod
    def _best_states(trainer) -> dict[str, dict]:
        """The state of each ModelCheckpoint (which best checkpoints it keeps, and their scores), by state key."""
        return {cb.state_key: cb.state_dict() for cb in trainer.checkpoint_callbacks
                if isinstance(cb, pl.callbacks.ModelCheckpoint)}

    @staticmethod
    def _kept(states: dict[str, dict]) -> dict[str, set]:
        """The files each ModelCheckpoint state keeps, by state key."""
        return {key: set(state["best_k_models"]) for key, state in states.items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self._count_a_finished_epoch_once(trainer)
        if trainer.is_global_zero or trainer.world_size == 1:
            try:
                self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:                      # not the main thread: leave Ctrl-C alone
                self._previous_handler = None

    @staticmethod
    def _count_a_finished_epoch_once(trainer) -> None:
        """Resuming the state that validation at the end of an epoch saves (every best checkpoint; last.ckpt after a
        validation): the epoch is `processed`, not yet `completed`. With `max_steps` set, Lightning (2.6) restarts
        such a run by finishing that epoch again, which counts it as processed a second time, and `max_epochs` then
        stops the run one epoch early (from the best checkpoint of epoch 0 with max_epochs 2, nothing trained).
        Taking the count back here (after the loop's reset, before that redo) leaves it counted once."""
        loop = trainer.fit_loop
        progress = loop.epoch_progress
        if loop.restarted_on_epoch_end and progress.current.processed == progress.current.completed + 1:
            progress.current.processed -= 1
            progress.total.processed -= 1

    def _on_sigint(self, signum, frame) -> None:
        self.interrupted = True
        signal.signal(signal.SIGINT, self._previous_handler or signal.default_int_handler)  # a second one interrupts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        interrupted = self.interrupted
        if trainer.world_size > 1:                  # every process stops at the same step
            flag = torch.tensor(float(interrupted), device=pl_module.device)
            interrupted = bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)
        if interrupted:
            self.interrupted = True
            trainer.should_stop = True
        step = trainer.global_step
        stopping = trainer.should_stop or 0 < trainer.max_steps <= step or self._last_batch_of_fit(trainer)
        if stopping or trainer.received_sigterm:    # SIGTERM: Lightning raises SIGTERMException after this hook
            # the state at the stop: on_train_end's would count an unfinished epoch as done, and one that ended at
            # this batch twice (a resume would skip an epoch); SIGTERM: on_train_end never comes
            self.save(trainer)
            self._stop_saved = True
        elif self.every_n_steps and step % self.every_n_steps == 0 and step != self._saved_step:
            self.save(trainer)

    @staticmethod
    def _last_batch_of_fit(trainer) -> bool:
        """The last batch of the last epoch (max_epochs). on_train_end's state counts this epoch twice: resumed with
        a larger max_epochs, it would start one epoch late, or not at all."""
        max_epochs = trainer.max_epochs
        return (max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
                and trainer.is_last_batch)

    def on_validation_end(self, trainer, pl_module) -> None:
        """After a stop inside an epoch Lightning still validates, and the state after that validation says the
        epoch ended: resuming from it would skip the epoch's other batches. last.ckpt keeps the state at the stop."""
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not self._stop_saved:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._stop_saved:
            self.save(trainer)
        elif trainer.is_global_zero and self.path.is_file():
            best = self._best_states(trainer)
            if self._kept(best) != self._saved_best:
                # the validation after the stop kept a new best checkpoint (and deleted the one last.ckpt names):
                # a resumed run must compare against, and delete, the files that are there
                checkpoint = read_checkpoint(self.path)
                checkpoint["callbacks"].update(best)
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
            os.utime(self.path)     # the newest again, after a best checkpoint the stopping validation may have written
        self._restore_sigint()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_sigint()

    def _restore_sigint(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
