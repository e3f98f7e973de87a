"""What every experiment's LightningModule shares: the optimizer, the LR schedule, the parameter
count, test metrics and images for TensorBoard."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from lightning import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

log = logging.getLogger(__name__)


class DFNTask(LightningModule):
    """``optimizer`` and ``scheduler`` are partial configs completed with this module's parameters
    (``model.optimizer.lr=...`` from the command line); the schedule steps every iteration.
    ``channels_last`` stores the conv weights channels-last, which the convolutions run faster
    with on CPU (docs/PERFORMANCE.md) and which leaves the maths unchanged."""

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

    def log_test_metrics(self, metrics: dict[str, Tensor]) -> None:
        """Log ``{predictor/metric: value}``; the model's own metrics go under ``test/metric``."""
        renamed = {f"test/{k.removeprefix('model/')}": v for k, v in metrics.items()}
        self.log_dict(renamed, sync_dist=True)

    def log_image(self, tag: str, image: Tensor) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, image, self.global_step)
