"""Video prediction (paper section 4.2): Moving MNIST and highway driving.

The same recurrent filter-generating network and rollout serve both; the configs choose the
spec, the kernel, the dynamic bias, the frames per step and the loss.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection

from dfn.errors import InputError
from dfn.models.predictor import DynamicFilterPredictor, FilterHead
from dfn.tasks.base import DFNTask, Outcome
from dfn.tasks.metrics import FrameMetrics, binary_cross_entropy
from dfn.tasks.visualize import error_per_frame, flow_grid, sequence_grid


def prediction_loss(kind: str, prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over batch, pixels and predicted frames (the authors' training loss)."""
    if kind == "bce":
        return binary_cross_entropy(prediction, target).mean()
    return F.mse_loss(prediction, target)


class VideoPredictionTask(DFNTask):
    """``num_input`` frames in, ``num_predicted`` frames out; batches are [B, T, 1, H, W]. Scored
    beside the predictor that copies the last input frame (``test/copy_last/...``)."""

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
        self.test_metrics = MetricCollection(
            {p: FrameMetrics(num_predicted, p) for p in ("model", "copy_last")},
            compute_groups=False,
        )

    def forward(self, context: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        return self.predictor.rollout(context, self.num_predicted)

    def displacement(self, filters: Tensor) -> Tensor:
        """The filters' expected displacement (x, y) [B, 2, H, W] in pixels."""
        return self.predictor.head.expected_displacement(filters)

    def split(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        expected = self.num_input + self.num_predicted
        if frames.dim() != 5 or frames.shape[1] != expected or frames.shape[2] != 1:
            raise InputError(
                f"video batches must be [B, {expected}, 1, H, W] (num_input + num_predicted "
                f"frames), got {tuple(frames.shape)}"
            )
        return frames[:, : self.num_input], frames[:, self.num_input :]

    def outcome(self, frames: Tensor) -> Outcome:
        context, target = self.split(frames)
        prediction, filters = self(context)
        return Outcome(prediction, target, {"context": context, "filters": filters})

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return prediction_loss(self.loss_kind, prediction, target)

    def update_test_metrics(self, outcome: Outcome) -> None:
        prediction, target, extras = outcome
        self.test_metrics["model"].update(prediction, target)
        self.test_metrics["copy_last"].update(extras["context"][:, -1:].expand_as(target), target)

    def figures(self, outcome: Outcome) -> dict[str, Tensor]:
        prediction, target, extras = outcome
        context, filters = extras["context"], extras["filters"]
        rows = []
        for i in range(min(self.num_logged, len(context))):
            rows += [torch.cat([context[i], target[i]]), torch.cat([context[i], prediction[i]])]
        figures = {"ground_truth_vs_prediction": sequence_grid(rows)}
        if filters[0] is not None:
            figures["filter_flow"] = flow_grid([self.displacement(f[:1]) for f in filters])
        return figures

    def metric_figures(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """The loss per predicted frame t+k, the model's beside copying the last frame."""
        if self.num_predicted == 1:
            return {}
        frames = range(1, self.num_predicted + 1)
        model, copy = ([float(metrics[f"{p}{self.loss_kind}_t{k}"]) for k in frames]
                       for p in ("", "copy_last/"))  # fmt: skip
        label = "DFN" if isinstance(self.predictor.head, FilterHead) else "baseline"
        unit = f"{self.loss_kind.upper()} per frame"
        title = f"{unit} at each predicted frame"
        image = error_per_frame({label: model}, {"copy last frame": copy}, unit, title)
        return {"error_per_frame": image}
