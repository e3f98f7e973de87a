"""Video prediction (paper section 4.2): Moving MNIST and highway driving.

The same recurrent filter-generating network and rollout serve both; the configs choose the
spec, the kernel, the dynamic bias, the frames per step and the loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dfn.errors import InputError
from dfn.models.predictor import DynamicFilterPredictor
from dfn.tasks.base import DFNTask
from dfn.tasks.metrics import PredictionMetrics, binary_cross_entropy
from dfn.tasks.visualize import flow_grid, sequence_grid


def prediction_loss(kind: str, prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over batch, pixels and predicted frames (the authors' training loss)."""
    if kind == "bce":
        return binary_cross_entropy(prediction, target).mean()
    return F.mse_loss(prediction, target)


class VideoPredictionTask(DFNTask):
    """``num_input`` frames in, ``num_predicted`` frames out; batches are [B, T, 1, H, W]."""

    def __init__(
        self,
        predictor: DynamicFilterPredictor,
        num_input: int,
        num_predicted: int,
        loss: Literal["bce", "mse"] = "bce",
        num_logged: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False, ignore=["predictor", "optimizer", "scheduler"])
        if loss not in ("bce", "mse"):
            raise InputError(f"model.loss must be 'bce' or 'mse', got {loss!r}")
        if num_input < predictor.frames_per_step or num_predicted < 1:
            raise InputError(
                f"the model sees {predictor.frames_per_step} frame(s) per step, so it needs "
                f"num_input >= {predictor.frames_per_step} and num_predicted >= 1; got "
                f"num_input={num_input}, num_predicted={num_predicted}"
            )
        self.predictor = predictor
        self.num_input, self.num_predicted = num_input, num_predicted
        self.loss_kind = loss
        self.num_logged = num_logged
        self.test_metrics = PredictionMetrics(["model", "copy_last"], num_predicted)

    def forward(self, context: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        return self.predictor.rollout(context, self.num_predicted)

    def split(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        expected = self.num_input + self.num_predicted
        if frames.dim() != 5 or frames.shape[1] != expected or frames.shape[2] != 1:
            raise InputError(
                f"video batches must be [B, {expected}, 1, H, W] (num_input + num_predicted "
                f"frames), got {tuple(frames.shape)}"
            )
        return frames[:, : self.num_input], frames[:, self.num_input :]

    def training_step(self, frames: Tensor, batch_idx: int) -> Tensor:
        context, target = self.split(frames)
        prediction, _ = self(context)
        loss = prediction_loss(self.loss_kind, prediction, target)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, frames: Tensor, batch_idx: int) -> None:
        context, target = self.split(frames)
        prediction, filters = self(context)
        loss = prediction_loss(self.loss_kind, prediction, target)
        # The paper's unit: the loss summed over the pixels of a frame.
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log(f"val/{self.loss_kind}", loss * target[0, 0].numel(), sync_dist=True)
        if batch_idx == 0:
            self.log_predictions(context, target, prediction, filters)

    def test_step(self, frames: Tensor, batch_idx: int) -> None:
        context, target = self.split(frames)
        prediction, _ = self(context)
        self.test_metrics.update("model", prediction, target)
        self.test_metrics.update("copy_last", context[:, -1:].expand_as(target), target)

    def on_test_epoch_end(self) -> None:
        self.log_test_metrics(self.test_metrics.compute())
        self.test_metrics.reset()

    def log_predictions(self, context, target, prediction, filters) -> None:
        rows = []
        for i in range(min(self.num_logged, len(context))):
            rows += [torch.cat([context[i], target[i]]), torch.cat([context[i], prediction[i]])]
        self.log_image("val/ground_truth_vs_prediction", sequence_grid(rows))
        if filters[0] is not None:
            flows = [self.predictor.head.expected_displacement(f[:1]) for f in filters]
            self.log_image("val/filter_flow", flow_grid(flows))
