"""Lightning callbacks of a pre-training run: the resumable checkpoint and the throughput log."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
LOG_FILE = "log.jsonl"


class LastCheckpoint(Checkpoint):
    """Write `last.ckpt` every `every` steps, at `stop_step`, at the end of training and when stopped.

    The file is written under a temporary name and then renamed, so an interrupted save never
    leaves a truncated `last.ckpt`. Lightning stores the loop state with it, and the data position
    follows from the global step (see EpochBatchSampler). A stop requested with `request_stop`
    (Ctrl-C) or SIGTERM ends training after the current step, which is saved first.
    """

    def __init__(self, run_dir: Path, every: int, stop_step: int) -> None:
        self.path = run_dir / LAST_CHECKPOINT
        self.every = every
        self.stop_step = stop_step
        # Wall time spent saving, in seconds, so that throughput can leave it out.
        self.saving_time = 0.0
        # Global step of the last checkpoint written in this session (None before the first).
        self.saved_step: int | None = None
        # Name of the signal that asked training to stop early (SIGINT, SIGTERM), else None.
        self.stopped_by: str | None = None

    def request_stop(self, signal_name: str) -> None:
        """Ask training to stop after the current step; that step is saved for --resume."""
        self.stopped_by = signal_name

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step >= self.stop_step or self.stopped_by is not None:
            self.save(trainer)
        if self.stopped_by is not None:
            trainer.should_stop = True

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            # Lightning raises this after a step has ended, on every process, so the state is
            # complete and every process takes part in the save.
            self.stopped_by = "SIGTERM"
            if trainer.global_step != self.saved_step:
                self.save(trainer)
        if not trainer.is_global_zero:
            return
        saved = f"step {self.saved_step}" if self.saved_step is not None else "an earlier session, if any"
        logger.warning("training stopped at step %d (%s); %s is from %s: continue with `bench pretrain --resume %s`",
                       trainer.global_step, type(exception).__name__, self.path, saved, self.path)

    def save(self, trainer: L.Trainer) -> None:
        """Write the trainer's state to last.ckpt atomically (every process must call this)."""
        start = time.perf_counter()
        temporary = self.path.with_name("." + self.path.name + ".partial")
        trainer.save_checkpoint(temporary, weights_only=False)
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
            logger.info("saved %s at step %d", self.path, trainer.global_step)
        self.saved_step = trainer.global_step
        self.saving_time += time.perf_counter() - start


class ThroughputLog(Callback):
    """Show progress with data and model throughput, and append records to log.jsonl.

    Data time is the wall time between the end of one step and the start of the next, spent
    waiting for the next batch. Model time is the rest of the step (forward, backward, optimizer). On CUDA the step end waits for the GPU (torch.cuda.synchronize), so that model time
    is the GPU's time. Both rates count this process's images; `images/s` counts all processes.
    Only the global-zero process reports.
    """

    def __init__(self, run_dir: Path, console: Console, total_steps: int, steps_per_epoch: int, batch_size: int,
                 world_size: int, log_every: int, checkpoint: LastCheckpoint | None = None) -> None:
        self.path = run_dir / LOG_FILE
        self.checkpoint = checkpoint
        self._saving_seen = 0.0
        self.console = console
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.world_size = world_size
        self.log_every = log_every
        self.epochs_reported = 0
        self.progress: Progress | None = None
        self.task = None
        self._reset_window(time.perf_counter())
        self._last_end = 0.0
        self._batch_start = 0.0

    def _reset_window(self, now: float) -> None:
        self.window_start = now
        self.data_time = 0.0
        self.model_time = 0.0
        self.window_images = 0
        self.window_steps = 0

    def _append(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.console.is_terminal:
            # Without a terminal rich draws the bar only at the end, so _report prints lines instead.
            self.progress = Progress(
                BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"), console=self.console,
            )
            self.task = self.progress.add_task("steps", total=self.total_steps, completed=trainer.global_step, status="")
            self.progress.start()
        now = time.perf_counter()
        self._reset_window(now)
        self._last_end = now
        self._append({"event": "start", "step": trainer.global_step, "time": time.time()})

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        waited = now - self._last_end
        if self.checkpoint is not None:
            # Saving last.ckpt happens between two steps but is not time spent waiting for data.
            waited -= self.checkpoint.saving_time - self._saving_seen
            self._saving_seen = self.checkpoint.saving_time
        self.data_time += max(waited, 0.0)
        self._batch_start = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self.model_time += now - self._batch_start
        self._last_end = now
        self.window_images += len(batch[0])
        self.window_steps += 1
        step = trainer.global_step
        if self.progress is not None:
            self.progress.update(self.task, completed=step)
        if step % self.log_every == 0 or step >= self.total_steps:
            self._report(trainer, pl_module, now)

    def _report(self, trainer: L.Trainer, pl_module, now: float) -> None:
        elapsed = max(now - self.window_start, 1e-9)
        accuracy = pl_module.running_accuracy()
        record = {
            "event": "step",
            "step": trainer.global_step,
            "epoch": trainer.global_step // self.steps_per_epoch,
            "samples_seen": trainer.global_step * self.batch_size,
            "loss": float(pl_module.last_loss) if pl_module.last_loss is not None else None,
            "train_accuracy": accuracy,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "data_images_per_s": self.window_images / max(self.data_time, 1e-9),
            "model_images_per_s": self.window_images / max(self.model_time, 1e-9),
            "images_per_s": self.window_images * self.world_size / elapsed,
            "time": time.time(),
        }
        self._append(record)
        shown_accuracy = f"{100 * accuracy:.1f}%" if accuracy is not None else "-"
        status = (f"loss {record['loss']:.3f} acc {shown_accuracy} | data {record['data_images_per_s']:,.0f} "
                  f"model {record['model_images_per_s']:,.0f} all {record['images_per_s']:,.0f} img/s")
        if self.progress is not None:
            self.progress.update(self.task, status=status)
        else:
            self.console.print(f"step {record['step']}/{self.total_steps}: {status}")
        self._reset_window(now)

    def _report_epochs(self, pl_module) -> None:
        # The module closes an epoch after the callbacks' epoch-end hooks have run, so finished
        # epochs are reported when the next one starts and when training ends.
        for step, accuracy in pl_module.epoch_history[self.epochs_reported:]:
            epoch = (step - 1) // self.steps_per_epoch
            self._append({"event": "epoch", "epoch": epoch, "step": step, "train_accuracy": accuracy, "time": time.time()})
            self.console.print(
                f"epoch {epoch + 1}: step {step}/{self.total_steps}, train accuracy {100 * accuracy:.1f}%"
            )
        self.epochs_reported = len(pl_module.epoch_history)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._report_epochs(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self._report_epochs(pl_module)
        if self.progress is not None:
            self.progress.stop()
        self._append({"event": "end", "step": trainer.global_step, "time": time.time()})
