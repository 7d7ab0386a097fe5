"""Checkpoints that survive a kill and resume exactly.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file next to it and renames it
  (:func:`atomnet.files.atomic_output`), so a process killed while writing leaves the previous ``last.ckpt``
  in place, never a truncated one. (Lightning's own writer goes through a temporary file in the system temp
  folder and ``shutil.move``, which copies in place when that folder is on another file system.)
* :class:`ExactResume` makes a resumed run continue exactly:

  - the pending scheduler step. ``ModelCheckpoint`` writes at the end of an epoch, *before* the fit loop
    steps a ``ReduceLROnPlateau`` scheduler on that epoch's validation loss, and on resume Lightning skips
    that step (the metric is not in the checkpoint): the resumed run's learning rate would lag one
    reduction behind. The callback stores the monitored value in the checkpoint and applies the step.
  - the global torch generator (e.g. CMNet's random sortings). Lightning re-seeds it on resume instead of
    continuing its stream, and a resumed run creates its first loader iterator (which draws from it) at
    another point than a fresh run. The callback seeds it at each epoch's first batch from (seed, epoch),
    like :class:`~atomnet.training.datamodule.EpochSampler` orders the data.
"""

from __future__ import annotations

import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from atomnet.files import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the checkpoint's folder, then ``os.replace`` onto the path."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_output(path) as tmp:
            torch.save(checkpoint, tmp)


class ExactResume(Callback):
    """Stores in every checkpoint whether the epoch's plateau-scheduler step is still due and the monitored
    values, and applies that step when training resumes; seeds torch's global generator at the
    first batch of every epoch with ``seed * 100003 + epoch``."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.loaded: dict | None = None

    @property
    def state_key(self) -> str:
        return "atomnet.ExactResume"

    def state_dict(self) -> dict:
        trainer = self._trainer
        loop = trainer.fit_loop
        progress = loop.epoch_progress.current
        monitored = {}
        for config in trainer.lr_scheduler_configs:
            value = trainer.callback_metrics.get(config.monitor) if config.reduce_on_plateau else None
            if value is not None:
                monitored[config.monitor] = float(value)
        return {
            "epoch": trainer.current_epoch,
            # saved after the epoch's last batch (at validation end or train epoch end) but before the fit
            # loop's end-of-epoch plateau step, as ModelCheckpoint does
            "pending": progress.completed < progress.started and loop.epoch_loop.batch_progress.is_last_batch,
            "monitored": monitored,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.loaded = state_dict

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer, pl_module) -> None:
        state, self.loaded = self.loaded, None
        if state is None:
            return  # a fresh run
        if state["pending"]:
            # the fit loop's end-of-epoch plateau step, which Lightning skips on every resume from such a
            # checkpoint (other epoch schedulers step at the epoch's last batch, before the checkpoint)
            for config in trainer.lr_scheduler_configs:
                due = config.interval == "epoch" and (state["epoch"] + 1) % config.frequency == 0
                if due and config.reduce_on_plateau and config.monitor in state["monitored"]:
                    config.scheduler.step(state["monitored"][config.monitor])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # after the epoch's loader iterator drew its seed, in a fresh and a resumed run alike
        if batch_idx == 0:
            torch.manual_seed(self.seed * 100_003 + trainer.current_epoch)
