"""Weight averaging over the tail of training, as a callback any task can name in its config.

Stochastic weight averaging (Izmailov et al. 2018) keeps the equal-weight mean of the weights the optimizer passes
through, a point in a flatter region than any single iterate. Lu et al. 2022 ("Improving generalization of
pre-trained language models via stochastic weight averaging") adapt it to fine-tuning: average over steps, not
epochs, and start early; they report gains for compact models on GLUE and SQuAD. Here the learning-rate schedule is
left as it is, so the averaged run follows exactly the trajectory of the plain one, and its last weights are kept
beside the mean for comparison.

    trainer:
      callbacks:
        - class_path: tasks.averaging.TailAveraging
          init_args: {start: 0.5}      # the mean of the weights after every step of the second half
"""
from __future__ import annotations

from pytorch_lightning.callbacks import WeightAveraging

from data.errors import ConfigError


class TailAveraging(WeightAveraging):
    """The mean of the weights after every optimizer step from `start` x the run's steps to its end.

    Validation sees the mean once averaging has begun (before that, the current weights), fit ends with the mean
    in the model, and every checkpoint written during averaging holds the mean as `state_dict` (what predict and
    test load) and the current weights as `current_model_state` (what a resumed fit continues from).
    """

    def __init__(self, start: float = 0.5):
        if not 0.0 <= start < 1.0:
            raise ConfigError(f"TailAveraging: start must be a fraction of the run's steps in [0, 1), got {start}")
        super().__init__(use_buffers=False)
        self.start = start
        self.first_step: int | None = None      # the first optimizer step (0-based) whose weights enter the mean
        self._swapped = False
        self._last_state: dict | None = None    # the current weights when fit ended, before the mean replaced them

    def on_train_start(self, trainer, pl_module) -> None:
        self.first_step = int(self.start * trainer.estimated_stepping_batches)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and self.first_step is not None and step_idx >= self.first_step

    @property
    def averaging(self) -> bool:
        """Whether the mean holds at least one step's weights."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self.averaging
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        if self.averaging:
            self._last_state = {name: t.detach().clone() for name, t in pl_module.state_dict().items()}
            self._copy_average_to_current(pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Only a fit's checkpoint written during averaging has a mean to restore. Before that, the mean starts
        # empty, as in the uninterrupted run; outside fit (validate, predict) the checkpoint's state_dict is used.
        if self._average_model is not None and "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.averaging:      # before that the average model is only a copy of the initial weights
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            if self._last_state is not None:
                checkpoint["current_model_state"] = self._last_state
