"""Per-frame metrics in the paper's unit: errors summed over the pixels of one frame.

Table 1 reports the BCE summed over the 64x64 pixels of a frame, averaged over the predicted frames
and the test sequences; MSE and MAE follow OpenSTL's per-frame-summed convention. SSIM and PSNR
come from torchmetrics; a frame predicted exactly (the copy-last baseline, when both digits
happen to stand where they stood) has infinite PSNR, so per-frame PSNR is capped at ``PSNR_CAP``
dB before averaging. ``PredictionMetrics`` averages all of them, overall and per horizon, with
torchmetrics' ``MeanMetric`` so they reduce correctly across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from dfn.models.predictor import EPS

METRICS = ("bce", "mse", "mae", "ssim", "psnr")
PSNR_CAP = 100.0  # dB: an MSE of 1e-10 of the data range squared


def binary_cross_entropy(prediction: Tensor, target: Tensor) -> Tensor:
    """Elementwise BCE with the prediction clipped to [eps, 1 - eps], as the authors did."""
    p = prediction.float().clamp(EPS, 1.0 - EPS)
    return -(target * p.log() + (1.0 - target) * (1.0 - p).log())


def frame_metrics(prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
    """prediction, target [B, T, C, H, W] in [0, 1] -> each metric as [B, T]."""
    with torch.autocast(target.device.type, enabled=False):  # SSIM's filtering in bf16 breaks it
        return _frame_metrics(prediction.float(), target.float())


def _frame_metrics(prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
    b, t = target.shape[:2]
    pred, targ = prediction.flatten(0, 1), target.flatten(0, 1)
    per_frame = {
        "bce": binary_cross_entropy(pred, targ).flatten(1).sum(1),
        "mse": (pred - targ).square().flatten(1).sum(1),
        "mae": (pred - targ).abs().flatten(1).sum(1),
        "ssim": structural_similarity_index_measure(
            pred.clamp(0, 1), targ, data_range=1.0, reduction="none"
        ),
        "psnr": peak_signal_noise_ratio(
            pred.clamp(0, 1), targ, data_range=1.0, reduction="none", dim=(1, 2, 3)
        ).clamp(max=PSNR_CAP),
    }
    return {name: value.view(b, t) for name, value in per_frame.items()}


class PredictionMetrics(nn.Module):
    """Running means of ``frame_metrics`` for named predictors, overall and per horizon t+k."""

    def __init__(self, predictors: list[str], horizon: int, metrics=METRICS) -> None:
        super().__init__()
        self.metrics, self.horizon = tuple(metrics), horizon
        self.means = nn.ModuleDict({key: MeanMetric() for key in self._keys(predictors)})

    def _keys(self, predictors: list[str]) -> list[str]:
        keys = []
        for predictor in predictors:
            for m in self.metrics:
                keys.append(f"{predictor}/{m}")
                if self.horizon > 1:
                    keys += [f"{predictor}/{m}_t{k}" for k in range(1, self.horizon + 1)]
        return keys

    @torch.no_grad()
    def update(self, predictor: str, prediction: Tensor, target: Tensor) -> None:
        for m, values in frame_metrics(prediction, target).items():
            if m not in self.metrics:
                continue
            self.means[f"{predictor}/{m}"].update(values.mean(1))
            if self.horizon > 1:
                for k in range(self.horizon):
                    self.means[f"{predictor}/{m}_t{k + 1}"].update(values[:, k])

    def compute(self) -> dict[str, Tensor]:
        return {key: mean.compute() for key, mean in self.means.items() if mean.update_count}

    def reset(self) -> None:
        for mean in self.means.values():
            mean.reset()
