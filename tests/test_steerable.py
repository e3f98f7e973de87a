"""Steerable filters (paper 4.1): the analytic target, the data, and the task's metrics."""

import functools
import math

import torch
import torch.nn.functional as F

from datamodules.steerable import SPLITS, SteerableDataModule
from dfn.models.generators import MLPFilterGenerator
from dfn.ops.filtering import dynamic_conv
from dfn.tasks.steerable import SteerableFilterTask, gaussian_derivatives, steer, steerable_filter


def test_gaussian_derivative_matches_finite_differences():
    gx, gy = gaussian_derivatives(9, 1.0).double()
    r = torch.arange(9, dtype=torch.float64) - 4
    y, x = torch.meshgrid(r, r, indexing="ij")

    def gauss(dx, dy):
        return torch.exp(-((x + dx) ** 2 + (y + dy) ** 2) / 2) / (2 * math.pi)

    h = 1e-5
    assert torch.allclose(gx, (gauss(h, 0) - gauss(-h, 0)) / (2 * h), atol=1e-6)
    assert torch.allclose(gy, (gauss(0, h) - gauss(0, -h)) / (2 * h), atol=1e-6)
    assert torch.allclose(gx, gy.T)


def test_steerable_filter_interpolates_the_basis():
    gx, gy = gaussian_derivatives()
    filters = steerable_filter(torch.tensor([0.0, math.pi / 2, math.pi, math.pi / 4]))
    assert torch.allclose(filters[0], gx, atol=1e-7)
    assert torch.allclose(filters[1], gy, atol=1e-7)
    assert torch.allclose(filters[2], -gx, atol=1e-7)
    assert torch.allclose(filters[3], (gx + gy) / math.sqrt(2), atol=1e-7)


def test_steer_equals_filtering_each_image_with_its_own_filter():
    images, theta = torch.rand(5, 1, 20, 17), torch.rand(5) * 2 * math.pi
    expected = torch.cat(
        [
            F.conv2d(images[i : i + 1], steerable_filter(theta[i : i + 1]).unsqueeze(1), padding=4)
            for i in range(5)
        ]
    )
    assert torch.allclose(steer(images, theta), expected, atol=1e-6)
    assert torch.allclose(
        dynamic_conv(images, steerable_filter(theta).flatten(1), 9), expected, atol=1e-6
    )


class AnalyticGenerator(torch.nn.Module):
    def forward(self, theta):
        return steerable_filter(theta[:, 0]).flatten(1)


def test_task_metrics_are_perfect_for_the_analytic_filter():
    generator = functools.partial(MLPFilterGenerator, hidden=[64, 128])
    task = SteerableFilterTask(generator, optimizer=torch.optim.Adam)
    assert task.generate_filters(torch.rand(3)).shape == (3, 9, 9)
    assert task.num_parameters == 18_897
    zero_start = MLPFilterGenerator(1, [64, 128], 81, zero_init_output=True)
    assert not zero_start(torch.rand(5, 1)).any()
    task.generator = AnalyticGenerator()
    assert task.filter_cosine().item() > 0.99999
    images, theta = torch.rand(4, 1, 32, 32), torch.rand(4) * 6
    assert torch.allclose(task(images, theta), steer(images, theta), atol=1e-6)
    assert torch.equal(task.target(images, theta), steer(images, theta))


def test_data_splits_use_disjoint_images():
    assert not set(SPLITS["train"]) & set(SPLITS["test"])
    assert not set(SPLITS["val"]) & (set(SPLITS["train"]) | set(SPLITS["test"]))
    dm = SteerableDataModule(batch_size=8, steps_per_epoch=2, val_size=8, test_size=8)
    dm.setup()
    images, theta = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 64, 64) and theta.shape == (8,)
    flat = images.flatten(1)  # standardised crops
    assert torch.allclose(flat.mean(1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(flat.std(1), torch.ones(8), atol=1e-4)
    assert ((0 <= theta) & (theta < 2 * math.pi)).all()
    fresh = SteerableDataModule(batch_size=8, steps_per_epoch=2)
    fresh.setup()
    assert torch.equal(next(iter(fresh.train_dataloader()))[0], images)  # same seed, same stream
