"""What every experiment's LightningModule shares: the optimizer and LR schedule, the parameter
count, the training, validation and test steps, the test metrics and the TensorBoard figures.
A task supplies only what is its own: the methods below that raise NotImplementedError, its
``test_metrics``, and where it differs from the defaults, its ``loss`` and ``loss_kind``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MetricCollection

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """What a task makes of a batch."""

    prediction: Tensor
    target: Tensor
    extras: dict[str, Any]


class DFNTask(LightningModule):
    """``optimizer`` and ``scheduler`` are partial configs completed with this module's parameters
    (``model.optimizer.lr=...`` from the command line); the schedule steps every iteration.
    ``channels_last`` stores the conv weights channels-last, which the convolutions run faster
    with on CPU (docs/PERFORMANCE.md) and which leaves the maths unchanged."""

    # the kind of loss the task trains with ("bce", "mse"); validation also logs it summed over
    # the pixels of a frame, the paper's unit, as val/<loss_kind> (val/bce)
    loss_kind: str | None = None
    # metrics whose compute() returns their values by name under test/, which
    # update_test_metrics updates
    test_metrics: MetricCollection

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.channels_last = channels_last
        # what the last test drew, by name: the first batch's figures and those of its metrics
        self.test_images: dict[str, Tensor] = {}

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_fit_start(self) -> None:
        log.info("%s: %s parameters", type(self).__name__, f"{self.num_parameters:,}")
        for logger in self.loggers:
            logger.log_metrics({"model/parameters": float(self.num_parameters)}, step=0)

    def outcome(self, batch) -> Outcome:
        """The model's prediction of a batch, its target, and what metrics and figures need."""
        raise NotImplementedError

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target)

    def update_test_metrics(self, outcome: Outcome) -> None:
        """Score the model and the task's reference predictors on a test batch."""
        raise NotImplementedError

    def figures(self, outcome: Outcome) -> dict[str, Tensor]:
        """Images [C, H, W] by name, drawn for the first batch of each validation and test: to
        TensorBoard as val/<name> and test/<name>, and to the run folder as <name>.png."""
        raise NotImplementedError

    def metric_figures(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Images of the test metrics, by name, drawn when a test ends."""
        return {}

    def weight_metrics(self) -> dict[str, Tensor]:
        """Metrics of the weights alone, logged with each validation and test."""
        return {}

    def training_loss(self, batch) -> Tensor:
        """The loss of one training batch, which ``training_step`` logs."""
        outcome = self.outcome(batch)
        return self.loss(outcome.prediction, outcome.target)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        outcome = self.outcome(batch)
        loss = self.loss(outcome.prediction, outcome.target)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        if self.loss_kind is not None:  # the paper's unit: summed over the pixels of a frame
            frame = outcome.target[0, 0].numel()
            self.log(f"val/{self.loss_kind}", loss * frame, sync_dist=True)
        if batch_idx == 0:
            self.log_images("val", self.figures(outcome))

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.weight_metrics().items()}, sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self.test_images = {}

    def test_step(self, batch, batch_idx: int) -> None:
        outcome = self.outcome(batch)
        self.update_test_metrics(outcome)
        if batch_idx == 0:
            self.test_images = self.figures(outcome)

    def on_test_epoch_end(self) -> None:
        # compute() reduces the states over the processes: every rank logs the same values (which
        # sync_dist's mean keeps). A metric no batch updated (the stereo baseline has no
        # disparity) is left out.
        metrics = self.weight_metrics()
        for metric in self.test_metrics.values():
            if metric.update_called:
                metrics |= metric.compute()
        self.log_dict({f"test/{k}": v for k, v in metrics.items()}, sync_dist=True)
        self.test_metrics.reset()
        self.test_images |= self.metric_figures(metrics)
        self.log_images("test", self.test_images)

    def log_images(self, stage: str, images: dict[str, Tensor]) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, image in images.items():
                    logger.experiment.add_image(f"{stage}/{name}", image, self.global_step)
