"""Stereo prediction (paper section 4.3): the right view from the left one.

A horizontal 1x13 dynamic local filter picks, per pixel, where in the left view the right
view's content comes from; its expected horizontal offset is therefore an unsupervised disparity
map, scored against ground truth where the data has it (``test/disparity_epe``, in pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import CatMetric, MeanMetric

from dfn.models.predictor import DynamicFilterPredictor
from dfn.ops.filtering import expected_displacement
from dfn.tasks.base import DFNTask
from dfn.tasks.metrics import PredictionMetrics
from dfn.tasks.visualize import colorize, sequence_grid


class StereoPredictionTask(DFNTask):
    """Batches are dicts with "left", "right" [B, 1, H, W] and "disparity" (NaN where unknown)."""

    def __init__(self, predictor: DynamicFilterPredictor, num_logged: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False, ignore=["predictor", "optimizer", "scheduler"])
        self.predictor = predictor
        self.num_logged = num_logged
        self.test_metrics = PredictionMetrics(["model", "copy_left"], horizon=1)
        self.disparity_error = MeanMetric()
        self.disparity_bad1 = MeanMetric()  # share of pixels off by more than 1 px
        self.disparity_truth = CatMetric()

    def forward(self, left: Tensor) -> tuple[Tensor, Tensor | None]:
        prediction, filters, _ = self.predictor.step(left)
        return prediction, filters

    def disparity(self, filters: Tensor | None) -> Tensor | None:
        """The filters' expected horizontal offset, [B, 1, H, W] in pixels."""
        if filters is None:
            return None
        with torch.autocast(filters.device.type, enabled=False):  # pixels, not bf16 steps
            offsets = expected_displacement(filters.float(), self.predictor.filtering.kernel_size)
        return offsets[:, :1]

    @staticmethod
    def scorable(truth: Tensor) -> Tensor:
        """Pixels with known disparity whose match lies inside the crop: elsewhere the filter
        sees only zero padding and cannot find it."""
        x = torch.arange(truth.shape[-1], device=truth.device, dtype=truth.dtype)
        source = x + truth
        return torch.isfinite(truth) & (source >= 0) & (source <= truth.shape[-1] - 1)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        prediction, _ = self(batch["left"])
        loss = F.mse_loss(prediction, batch["right"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prediction, filters = self(batch["left"])
        loss = F.mse_loss(prediction, batch["right"])
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/mse", loss * batch["right"][0].numel(), sync_dist=True)
        if batch_idx == 0:
            n = self.num_logged
            rows = [batch["left"][:n], batch["right"][:n], prediction[:n]]
            self.log_image("val/left_right_prediction", sequence_grid(rows))
            disparity = self.disparity(filters)
            if disparity is not None:
                reach = self.predictor.filtering.kernel_size[1] // 2
                maps = [
                    colorize(disparity[:n], -reach, reach),
                    colorize(batch["disparity"][:n], -reach, reach),
                ]
                self.log_image("val/disparity_vs_ground_truth", sequence_grid(maps))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        left, right, truth = batch["left"], batch["right"], batch["disparity"]
        prediction, filters = self(left)
        self.test_metrics.update("model", prediction.unsqueeze(1), right.unsqueeze(1))
        self.test_metrics.update("copy_left", left.unsqueeze(1), right.unsqueeze(1))
        disparity = self.disparity(filters)
        valid = self.scorable(truth)
        if disparity is not None and valid.any():
            error = (disparity - truth)[valid].abs()
            self.disparity_error.update(error)
            self.disparity_bad1.update((error > 1).float())
            self.disparity_truth.update(truth[valid])

    def on_test_epoch_end(self) -> None:
        metrics = self.test_metrics.compute()
        if self.disparity_error.update_count:
            truth = self.disparity_truth.compute()
            metrics["model/disparity_epe"] = self.disparity_error.compute()
            metrics["model/disparity_bad1"] = self.disparity_bad1.compute()
            for name, error in (("zero", truth.abs()), ("mean", (truth - truth.mean()).abs())):
                metrics[f"{name}_disparity/disparity_epe"] = error.mean()
                metrics[f"{name}_disparity/disparity_bad1"] = (error > 1).float().mean()
        self.log_test_metrics(metrics)
        for metric in (self.test_metrics, self.disparity_error, self.disparity_truth):
            metric.reset()
        self.disparity_bad1.reset()
