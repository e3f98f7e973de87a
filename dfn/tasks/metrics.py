"""Test metrics in the paper's unit: errors summed over the pixels of one frame.

Table 1 reports the BCE summed over the 64x64 pixels of a frame, averaged over the predicted frames
and the test sequences; MSE and MAE follow OpenSTL's per-frame-summed convention. SSIM and PSNR
come from torchmetrics; a frame predicted exactly (the copy-last baseline, when both digits
happen to stand where they stood) has infinite PSNR, so per-frame PSNR is capped at ``PSNR_CAP``
dB before averaging.

Each metric below is a torchmetrics ``Metric`` whose states are sums, reduced over the processes
by ``compute``, which returns the metric's values by their name under ``test/``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.utilities import dim_zero_cat

from dfn.models.predictor import EPS

METRICS = ("bce", "mse", "mae", "ssim", "psnr")
PSNR_CAP = 100.0  # dB: an MSE of 1e-10 of the data range squared
# Per-pixel errors of a disparity map (prediction - truth); each is averaged over the scorable
# pixels of the test set for the model (test/disparity_epe) and for the zero- and mean-disparity
# predictors (test/zero_disparity/disparity_epe, test/mean_disparity/disparity_epe).
DISPARITY_ERRORS = {
    "disparity_epe": torch.abs,
    "disparity_bad1": lambda error: (error.abs() > 1).float(),  # share off by more than 1 px
}


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


class FrameMetrics(Metric):
    """``frame_metrics`` of one predictor averaged over the test sequences: over a sequence's
    predicted frames (``bce``) and, when it predicts more than one, at each frame t+k
    (``bce_t1``, ...). ``predictor`` prefixes the names (``copy_last/bce``); the model's own
    metrics have none."""

    full_state_update = False

    def __init__(self, horizon: int, predictor: str = "model") -> None:
        super().__init__()
        self.horizon = horizon
        self.name_prefix = "" if predictor == "model" else f"{predictor}/"
        # sums over the sequences of [the mean over the frames, frame 1, ..., frame T]
        self.add_state("sums", torch.zeros(len(METRICS), horizon + 1), dist_reduce_fx="sum")
        self.add_state("sequences", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """prediction, target [B, T, C, H, W] in [0, 1]."""
        values = torch.stack(list(frame_metrics(prediction, target).values()))  # [M, B, T]
        per_sequence = torch.cat([values.mean(2, keepdim=True), values], 2)
        # summed over the sequences as contiguous rows: in the order torchmetrics' MeanMetric
        # sums, so the means are bit for bit those of a MeanMetric per key
        self.sums += per_sequence.transpose(1, 2).contiguous().sum(2)
        self.sequences += values.shape[1]

    def compute(self) -> dict[str, Tensor]:
        means = self.sums / self.sequences
        frames = range(1, self.horizon + 1) if self.horizon > 1 else []
        out = {}
        for metric, row in zip(METRICS, means, strict=True):
            out[self.name_prefix + metric] = row[0]
            out |= {f"{self.name_prefix}{metric}_t{k}": row[k] for k in frames}
        return out


class DisparityErrors(Metric):
    """``DISPARITY_ERRORS`` of a disparity map and of the zero- and mean-disparity predictors,
    averaged over the scorable pixels of the test set. The mean disparity is the test set's, so
    the pixels' disparities are kept until ``compute``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("disparity", [], dist_reduce_fx="cat")
        self.add_state("truth", [], dist_reduce_fx="cat")

    def update(self, disparity: Tensor, truth: Tensor) -> None:
        """The disparity [N] and its ground truth [N] at the scorable pixels, in pixels."""
        self.disparity.append(disparity.float())
        self.truth.append(truth.float())

    def compute(self) -> dict[str, Tensor]:
        disparity, truth = dim_zero_cat(self.disparity), dim_zero_cat(self.truth)
        if not truth.numel():
            return {}
        predictors = {"": disparity, "zero_disparity/": 0.0, "mean_disparity/": truth.mean()}
        return {
            f"{predictor}{name}": error(prediction - truth).mean()
            for predictor, prediction in predictors.items()
            for name, error in DISPARITY_ERRORS.items()
        }


class RelativeMSE(Metric):
    """The mean squared error per pixel (``mse``) and that error relative to the variance of the
    target (``relative_mse``: 0 is perfect, 1 is as good as predicting the mean)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("squared_error", "target", "target_squared", "samples"):
            self.add_state(name, torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """prediction, target [B, ...]: each sample's mean over its pixels counts once."""
        self.squared_error += (prediction - target).square().flatten(1).mean(1).sum()
        self.target += target.flatten(1).mean(1).sum()
        self.target_squared += target.square().flatten(1).mean(1).sum()
        self.samples += target.shape[0]

    def compute(self) -> dict[str, Tensor]:
        mse, mean, mean_sq = (
            x / self.samples for x in (self.squared_error, self.target, self.target_squared)
        )
        return {"mse": mse, "relative_mse": mse / (mean_sq - mean**2)}
