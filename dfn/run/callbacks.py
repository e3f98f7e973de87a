"""Callbacks that keep a run recoverable: stop before a non-finite loss spoils the weights, and
keep ``last.ckpt`` the latest state when a run ends, is stopped by Ctrl-C or SIGTERM, or runs out
of ``max_steps`` mid-epoch."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from dfn.errors import InputError
from dfn.run.folder import resume_command

EXIT_SIGTERM, EXIT_CTRL_C = 128 + signal.SIGTERM, 128 + signal.SIGINT  # as a shell reports them


def last_checkpoint(trainer: Trainer) -> Path:
    """``last.ckpt`` in the ModelCheckpoint's folder (``<run>/checkpoints`` without one)."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    folder = folder or Path(trainer.default_root_dir) / "checkpoints"
    return Path(folder) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def set_logging_step(trainer: Trainer, step: int) -> None:
    """Set the step that Lightning gives the loggers with the metrics logged next.

    Lightning 2.6 has no public way to do that, so this writes its private counter;
    tests/test_frameworks.py fails if a release renames it or no longer needs this.
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


class StopOnNonFiniteLoss(Callback):
    """Stop with one clear error before a non-finite loss or gradient reaches the weights.

    The check runs before the optimizer step, so the weights in memory and every checkpoint on
    disk keep the last good state. Under a gradient scaler (16-bit mixed precision) non-finite
    gradients are expected now and then, and skipped by the scaler: only the loss is checked.
    """

    def __init__(self) -> None:
        self.loss: Tensor | None = None

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor):
        self.loss = loss.detach()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer):
        if self.loss is None:
            return
        loss_finite = torch.isfinite(self.loss).all()
        finite = loss_finite
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            norm = torch.nn.utils.get_total_norm(grads)
            finite = finite & torch.isfinite(norm).to(finite.device)
        if bool(finite):  # the one host sync of the check
            return
        loss = self.loss.float().mean().item()
        problem = f"train/loss is {loss}"
        if bool(loss_finite):
            problem = f"the gradients are not finite (train/loss {loss:.4g})"
        last = last_checkpoint(trainer)
        kept = "no checkpoint was saved yet"
        if last.is_file():
            kept = f"the last good checkpoint is kept: {last}"
        raise InputError(
            f"{problem} at step {trainer.global_step}; stopped before the update, {kept}. "
            "A lower model.optimizer.lr usually helps; also check the data for NaN or inf values"
        )


class LastCheckpoint(Callback):
    """Save ``last.ckpt`` whenever fitting stops, and resume from it exactly (``resume=``).

    SIGTERM: Lightning finishes the current step and raises ``SIGTERMException`` where the loops,
    the LR schedule and the data stream agree; the checkpoint is saved there and the run exits
    with 143. Ctrl-C: the first is handled as a SIGTERM (exit 130); a second stops at once without
    saving, since an interrupt inside an optimizer step would leave a torn state. A normal end
    saves too: ModelCheckpoint writes ``last.ckpt`` only after a validation, so a run that
    ``max_steps`` stops mid-epoch would leave an older one.

    ``every_n_train_steps`` also saves it every that many steps (0: never), so that a run killed
    without a signal (a lost machine, ``kill -9``) loses at most that many steps.
    """

    def __init__(self, every_n_train_steps: int = 0) -> None:
        if not isinstance(every_n_train_steps, int) or every_n_train_steps < 0:
            raise InputError(
                f"callbacks.last_checkpoint.every_n_train_steps={every_n_train_steps!r}; "
                "expected an integer >= 0 (0: only when the run stops)"
            )
        self.every_n_train_steps = every_n_train_steps
        self.previous_sigint = None
        self.ctrl_c = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.ctrl_c = False
        if threading.current_thread() is threading.main_thread():
            self.previous_sigint = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        on_sigterm = signal.getsignal(signal.SIGTERM)  # Lightning's, while fitting
        if not callable(on_sigterm):
            raise KeyboardInterrupt
        self.ctrl_c = True
        print(
            "\nCtrl-C: stopping after this step to save last.ckpt "
            "(Ctrl-C again stops at once, without saving)",
            file=sys.stderr,
        )
        on_sigterm(signal.SIGTERM, frame)

    def _restore_sigint(self) -> None:
        if self.previous_sigint is not None:
            signal.signal(signal.SIGINT, self.previous_sigint)
            self.previous_sigint = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning 2.6 counts one logging step too many when it resumes from a checkpoint saved at
        # the end of an epoch (it runs an empty epoch first). Without gradient accumulation the
        # logging step is the global step.
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches == 1:
            set_logging_step(trainer, trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, *args) -> None:
        n, step = self.every_n_train_steps, trainer.global_step
        if n and step % n == 0 and not trainer.fast_dev_run:
            trainer.save_checkpoint(last_checkpoint(trainer), weights_only=False)
            for logger in trainer.loggers:  # the logs, too, reach the checkpoint's step
                logger.save()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigint()
        if trainer.global_step > 0 and not trainer.fast_dev_run:
            trainer.save_checkpoint(last_checkpoint(trainer), weights_only=False)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        self._restore_sigint()
        last = last_checkpoint(trainer)
        if isinstance(exception, KeyboardInterrupt) and trainer.is_global_zero:
            kept = f"{last} is older" if last.is_file() else "no checkpoint was saved"
            print(f"Stopped at once at step {trainer.global_step}: {kept}", file=sys.stderr)
        if not isinstance(exception, SIGTERMException):
            return
        exception.code = EXIT_CTRL_C if self.ctrl_c else EXIT_SIGTERM  # Lightning leaves it 0
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if not fitting or trainer.global_step == 0 or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(last, weights_only=False)
        if trainer.is_global_zero:
            print(
                f"Stopped by {'Ctrl-C' if self.ctrl_c else 'SIGTERM'} at step "
                f"{trainer.global_step}; saved {last}\nResume with: {resume_command(last)}",
                file=sys.stderr,
            )
