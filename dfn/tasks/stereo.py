"""Stereo prediction (paper section 4.3): the right view from the left one.

A horizontal 1x13 dynamic local filter picks, per pixel, where in the left view the right
view's content comes from; its expected horizontal offset is therefore an unsupervised disparity
map, scored against ground truth where the data has it (``test/disparity_epe``, in pixels).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MetricCollection

from dfn.models.predictor import DynamicFilterPredictor
from dfn.tasks.base import DFNTask, Outcome
from dfn.tasks.metrics import DisparityErrors, FrameMetrics
from dfn.tasks.visualize import colorize, sequence_grid


class StereoPredictionTask(DFNTask):
    """Batches are dicts with "left", "right" [B, 1, H, W] and "disparity" (NaN where unknown).
    Scored beside the predictor that copies the left view (``test/copy_left/...``)."""

    loss_kind = "mse"

    def __init__(self, predictor: DynamicFilterPredictor, num_logged: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False, ignore=["predictor", "optimizer", "scheduler"])
        self.predictor = predictor
        self.num_logged = num_logged
        self.test_metrics = MetricCollection(
            {
                "model": FrameMetrics(horizon=1),
                "copy_left": FrameMetrics(horizon=1, predictor="copy_left"),
                "disparity": DisparityErrors(),
            },
            compute_groups=False,
        )

    def forward(self, left: Tensor) -> tuple[Tensor, Tensor | None]:
        prediction, filters, _ = self.predictor.step(left)
        return prediction, filters

    def disparity(self, filters: Tensor | None) -> Tensor | None:
        """The filters' expected horizontal offset, [B, 1, H, W] in pixels."""
        if filters is None:
            return None
        return self.predictor.head.expected_displacement(filters)[:, :1]

    @property
    def reach(self) -> int:
        """The largest disparity the filter can express, in pixels."""
        return self.predictor.head.reach[1]

    @staticmethod
    def scorable(truth: Tensor) -> Tensor:
        """Pixels with known disparity whose match lies inside the crop: elsewhere the filter
        sees only zero padding and cannot find it."""
        x = torch.arange(truth.shape[-1], device=truth.device, dtype=truth.dtype)
        source = x + truth
        return torch.isfinite(truth) & (source >= 0) & (source <= truth.shape[-1] - 1)

    def outcome(self, batch: dict) -> Outcome:
        prediction, filters = self(batch["left"])
        extras = {"left": batch["left"], "filters": filters, "truth": batch["disparity"]}
        return Outcome(prediction, batch["right"], extras)

    def update_test_metrics(self, outcome: Outcome) -> None:
        prediction, right, extras = outcome
        self.test_metrics["model"].update(prediction.unsqueeze(1), right.unsqueeze(1))
        self.test_metrics["copy_left"].update(extras["left"].unsqueeze(1), right.unsqueeze(1))
        disparity, truth = self.disparity(extras["filters"]), extras["truth"]
        if disparity is not None:
            valid = self.scorable(truth)
            self.test_metrics["disparity"].update(disparity[valid], truth[valid])

    def figures(self, outcome: Outcome) -> dict[str, Tensor]:
        prediction, right, extras = outcome
        n = self.num_logged
        rows = [extras["left"][:n], right[:n], prediction[:n]]
        figures = {"left_right_prediction": sequence_grid(rows)}
        disparity = self.disparity(extras["filters"])
        if disparity is not None:
            maps = [disparity[:n], extras["truth"][:n]]
            images = [colorize(m, -self.reach, self.reach) for m in maps]
            figures["disparity_vs_ground_truth"] = sequence_grid(images)
        return figures
