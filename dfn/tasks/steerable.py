"""Learning steerable filters (paper section 4.1).

A fully connected network maps an angle theta to a 9x9 filter that a dynamic convolution applies
to the image; the target is the image filtered with the steerable first derivative of a Gaussian,
cos(theta) Gx + sin(theta) Gy, computed here from the batch's images and angles.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection

from dfn.models.generators import MLPFilterGenerator, complete
from dfn.ops.filtering import DynamicConv
from dfn.tasks.base import DFNTask, Outcome
from dfn.tasks.metrics import RelativeMSE
from dfn.tasks.visualize import filter_grid, sequence_grid


def gaussian_derivatives(size: int = 9, sigma: float = 1.0) -> Tensor:
    """The x and y derivatives of a 2-D Gaussian, [2, size, size] (row = y, column = x)."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    g = torch.exp(-(x**2 + y**2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    return torch.stack([-x / sigma**2 * g, -y / sigma**2 * g]).float()


def steerable_filter(theta: Tensor, size: int = 9, sigma: float = 1.0) -> Tensor:
    """cos(theta) Gx + sin(theta) Gy for angles [B] -> filters [B, size, size]."""
    gx, gy = gaussian_derivatives(size, sigma).to(theta.device)
    theta = theta.float().view(-1, 1, 1)
    return torch.cos(theta) * gx + torch.sin(theta) * gy


def steer(images: Tensor, theta: Tensor, size: int = 9, sigma: float = 1.0) -> Tensor:
    """Filter images [B, 1, H, W] with their angle's steerable filter (zero padding).

    Steerability makes this two ordinary convolutions: cos(theta) (Gx * I) + sin(theta) (Gy * I).
    """
    basis = F.conv2d(
        images, gaussian_derivatives(size, sigma).to(images).unsqueeze(1), padding=size // 2
    )
    theta = theta.to(images).view(-1, 1, 1)
    return (torch.cos(theta) * basis[:, 0] + torch.sin(theta) * basis[:, 1]).unsqueeze(1)


class SteerableFilterTask(DFNTask):
    """Batches are (images [B, 1, H, W], angles [B]); the target is ``steer`` of them with the
    analytic filter of ``kernel_size`` taps a side and scale ``sigma``, the size of the filter
    the generator learns (it is built with ``kernel_size**2`` outputs from the one angle)."""

    def __init__(
        self,
        generator: Callable[..., MLPFilterGenerator],
        kernel_size: int = 9,
        sigma: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False, ignore=["generator", "optimizer", "scheduler"])
        self.filtering = DynamicConv(kernel_size)  # checks kernel_size first
        self.generator = complete(
            generator,
            "the task (in_features: the angle; out_features: kernel_size**2 taps)",
            in_features=1,
            out_features=kernel_size**2,
        )
        self.kernel_size = kernel_size
        self.sigma = sigma
        self.test_metrics = MetricCollection({"model": RelativeMSE()})

    def generate_filters(self, theta: Tensor) -> Tensor:
        """Angles [B] -> generated filters [B, k, k]."""
        k = self.kernel_size
        return self.generator(theta.view(-1, 1).float()).view(-1, k, k)

    def forward(self, images: Tensor, theta: Tensor) -> Tensor:
        return self.filtering(images, self.generate_filters(theta).flatten(1))

    def target(self, images: Tensor, theta: Tensor) -> Tensor:
        """The images filtered with their angles' analytic steerable filters."""
        return steer(images, theta, self.kernel_size, self.sigma)

    def outcome(self, batch) -> Outcome:
        images, theta = batch
        return Outcome(self(images, theta), self.target(images, theta), {"images": images})

    def update_test_metrics(self, outcome: Outcome) -> None:
        self.test_metrics["model"].update(outcome.prediction, outcome.target)

    def weight_metrics(self) -> dict[str, Tensor]:
        return {"filter_cosine": self.filter_cosine()}

    def figures(self, outcome: Outcome) -> dict[str, Tensor]:
        output, target, extras = outcome
        scale = 0.5 / target[:8].abs().amax()  # show signed responses around grey
        rows = [extras["images"][:8], 0.5 + scale * target[:8], 0.5 + scale * output[:8]]
        return {
            "input_target_output": sequence_grid(rows),
            "filters_learned_vs_analytic": self.filters_learned_vs_analytic(),
        }

    def test_angles(self, n: int = 8) -> Tensor:
        return torch.arange(n, device=self.device) * (2 * math.pi / n)

    @torch.no_grad()
    def filter_cosine(self) -> Tensor:
        """Mean cosine similarity of generated and analytic filters over 8 evenly spaced angles."""
        theta = self.test_angles()
        learned = self.generate_filters(theta).flatten(1)
        analytic = steerable_filter(theta, self.kernel_size, self.sigma).to(learned).flatten(1)
        return F.cosine_similarity(learned, analytic, dim=1).mean()

    @torch.no_grad()
    def filters_learned_vs_analytic(self) -> Tensor:
        """Learned filters at 0, 45, 90, ... degrees (top row) beside the analytic ones (bottom)."""
        theta = self.test_angles()
        learned = self.generate_filters(theta).flatten(1)
        analytic = steerable_filter(theta.cpu(), self.kernel_size, self.sigma).flatten(1)
        return filter_grid(torch.cat([learned.cpu(), analytic]), self.kernel_size)
