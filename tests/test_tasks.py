"""The tasks' validation and test metrics on tiny fixed batches, against the same numbers worked
out here by hand in float64 numpy; the figures validation sends to TensorBoard."""

import functools
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from dfn.models.generators import FilterGenerator, MLPFilterGenerator
from dfn.models.predictor import EPS, ConvHead, DynamicFilterPredictor, FilterHead
from dfn.ops.filtering import DynamicLocalFilter
from dfn.tasks.metrics import DisparityErrors, FrameMetrics, RelativeMSE
from dfn.tasks.steerable import SteerableFilterTask, steerable_filter
from dfn.tasks.stereo import StereoPredictionTask
from dfn.tasks.video import VideoPredictionTask
from tests.test_models import make_predictor


def trainer(logger=False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def loader(batches: list) -> DataLoader:
    """The batches as they are, in order."""
    return DataLoader(batches, batch_size=None)


def numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def video_task(head=FilterHead) -> VideoPredictionTask:
    torch.manual_seed(0)
    return VideoPredictionTask(
        make_predictor(head),
        num_input=2,
        num_predicted=2,
        optimizer=torch.optim.Adam,
    ).eval()


def video_batches() -> list[torch.Tensor]:
    """Three 16x16 sequences of 2 + 2 frames in batches of 2 and 1; in the first, the first
    target frame repeats the last input frame: copy-last predicts it exactly."""
    frames = torch.rand(3, 4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    frames[0, 2] = frames[0, 1]
    return [frames[:2], frames[2:]]


def test_video_metrics_are_the_per_frame_sums_averaged_over_sequences():
    task = video_task()
    batches = video_batches()
    test = trainer().test(task, loader(batches), verbose=False)[0]
    val = trainer().validate(task, loader(batches), verbose=False)[0]

    frames = torch.cat(batches)
    with torch.no_grad():
        prediction, _ = task(frames[:, :2])
    p, t, last = numpy(prediction), numpy(frames[:, 2:]), numpy(frames[:, 1:2])
    clipped = np.clip(p, EPS, 1 - EPS)
    bce = -(t * np.log(clipped) + (1 - t) * np.log(1 - clipped)).sum((2, 3, 4))  # [3, 2]
    copy_mse = ((last - t) ** 2).sum((2, 3, 4))
    with np.errstate(divide="ignore"):  # an exact frame: infinite PSNR
        copy_psnr = np.minimum(10 * np.log10(1 / ((last - t) ** 2).mean((2, 3, 4))), 100.0)
    assert copy_psnr[0, 0] == 100.0  # the cap, not infinity
    expected = {
        "test/bce": bce.mean(),
        "test/bce_t1": bce[:, 0].mean(),
        "test/bce_t2": bce[:, 1].mean(),
        "test/mse": ((p - t) ** 2).sum((2, 3, 4)).mean(),
        "test/copy_last/mse": copy_mse.mean(),
        "test/copy_last/mse_t2": copy_mse[:, 1].mean(),
        "test/copy_last/mae_t1": np.abs(last - t).sum((2, 3, 4))[:, 0].mean(),
        "test/copy_last/psnr": copy_psnr.mean(),
        "test/copy_last/psnr_t1": copy_psnr[:, 0].mean(),
        "val/bce": bce.mean(),  # the validation loss in the paper's unit
        "val/loss": bce.mean() / 256,  # per pixel
    }
    for key, value in expected.items():
        assert {**test, **val}[key] == pytest.approx(value, rel=1e-5), key
    assert len(test) == 2 * 5 * 3  # model and copy_last; bce..psnr; overall, t1, t2
    assert set(val) == {"val/loss", "val/bce"}


def stereo_task(head=FilterHead) -> StereoPredictionTask:
    torch.manual_seed(0)
    generator = functools.partial(
        FilterGenerator, image_size=16, encoder=[8, "8s2", 16], decoder=[8, "up", 8], head=[16]
    )
    predictor = DynamicFilterPredictor(generator, DynamicLocalFilter((1, 5), True, True), head)
    return StereoPredictionTask(predictor, optimizer=torch.optim.Adam).eval()


def stereo_batches() -> list[dict[str, torch.Tensor]]:
    """Three 16x16 pairs in batches of 2 and 1; the disparity is unknown (NaN) in a band, and
    points out of the crop near the edges."""
    g = torch.Generator().manual_seed(2)
    left, right = torch.rand(3, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    disparity = 4 * torch.rand(3, 1, 16, 16, generator=g) - 2
    disparity[:, :, 5:7] = float("nan")
    pairs = {"left": left, "right": right, "disparity": disparity}
    return [{k: v[:2] for k, v in pairs.items()}, {k: v[2:] for k, v in pairs.items()}]


def test_stereo_metrics_score_the_disparity_where_it_can_be_found():
    task = stereo_task()
    batches = stereo_batches()
    test = trainer().test(task, loader(batches), verbose=False)[0]
    val = trainer().validate(task, loader(batches), verbose=False)[0]

    pairs = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    with torch.no_grad():
        prediction, filters = task(pairs["left"])
    p, right, left = numpy(prediction), numpy(pairs["right"]), numpy(pairs["left"])
    offsets = np.arange(5) - 2  # the 1x5 filter's taps, from 2 pixels left to 2 right
    disparity = (numpy(filters) * offsets[None, :, None, None]).sum(1, keepdims=True)
    truth = numpy(pairs["disparity"])
    source = np.arange(16) + truth  # where in the left view each right pixel comes from
    with np.errstate(invalid="ignore"):
        scorable = np.isfinite(truth) & (source >= 0) & (source <= 15)
    assert 0 < scorable.sum() < np.isfinite(truth).sum()
    d, t = disparity[scorable], truth[scorable]
    mse = ((p - right) ** 2).sum((1, 2, 3))
    expected = {
        "test/mse": mse.mean(),
        "test/copy_left/mse": ((left - right) ** 2).sum((1, 2, 3)).mean(),
        "test/disparity_epe": np.abs(d - t).mean(),
        "test/zero_disparity/disparity_epe": np.abs(t).mean(),
        "test/mean_disparity/disparity_epe": np.abs(t - t.mean()).mean(),
        "test/disparity_bad1": (np.abs(d - t) > 1).mean(),
        "test/zero_disparity/disparity_bad1": (np.abs(t) > 1).mean(),
        "test/mean_disparity/disparity_bad1": (np.abs(t - t.mean()) > 1).mean(),
        "val/mse": mse.mean(),
        "val/loss": mse.mean() / 256,
    }
    for key, value in expected.items():
        assert {**test, **val}[key] == pytest.approx(value, rel=1e-5), key
    assert 0 < expected["test/disparity_bad1"] < 1  # some pixels on either side of 1 px
    assert not any(key.endswith("_t1") for key in test)  # one frame: no horizons

    baseline = trainer().test(stereo_task(ConvHead), loader(batches), verbose=False)[0]
    assert "test/copy_left/mse" in baseline and not any("disparity" in k for k in baseline)


def steerable_task() -> SteerableFilterTask:
    torch.manual_seed(0)
    generator = functools.partial(MLPFilterGenerator, hidden=[8])
    task = SteerableFilterTask(generator, optimizer=torch.optim.Adam).eval()
    torch.nn.init.normal_(task.generator.net[-1].bias)  # not the zero filter at angle 0
    return task


def test_steerable_metrics_relate_the_error_to_the_targets_variance():
    task = steerable_task()
    g = torch.Generator().manual_seed(3)
    images, theta = torch.randn(5, 1, 12, 12, generator=g), 6 * torch.rand(5, generator=g)
    batches = [(images[:3], theta[:3]), (images[3:], theta[3:])]
    test = trainer().test(task, loader(batches), verbose=False)[0]
    val = trainer().validate(task, loader(batches), verbose=False)[0]

    with torch.no_grad():
        output, target = numpy(task(images, theta)), numpy(task.target(images, theta))
        angles = torch.arange(8) * (math.pi / 4)
        learned = numpy(task.generate_filters(angles)).reshape(8, -1)
    analytic = numpy(steerable_filter(angles)).reshape(8, -1)
    cosine = (learned * analytic).sum(1) / np.linalg.norm(learned, axis=1)
    cosine /= np.linalg.norm(analytic, axis=1)
    mse = ((output - target) ** 2).mean()
    expected = {
        "test/mse": mse,
        "test/relative_mse": mse / target.var(),
        "test/filter_cosine": cosine.mean(),
        "val/loss": mse,
        "val/filter_cosine": cosine.mean(),
    }
    for key, value in expected.items():
        assert {**test, **val}[key] == pytest.approx(value, rel=1e-5), key
    assert set(test) == {"test/mse", "test/relative_mse", "test/filter_cosine"}


def tensorboard_images(folder) -> set[str]:
    events = [EventAccumulator(str(path)).Reload() for path in folder.rglob("events.*")]
    return {tag for e in events for tag in e.Tags()["images"]}


@pytest.mark.parametrize(
    ("make", "batches", "tags"),
    [
        (video_task, video_batches, {"ground_truth_vs_prediction", "filter_flow"}),
        (
            functools.partial(video_task, functools.partial(ConvHead, clip_output=True)),
            video_batches,
            {"ground_truth_vs_prediction"},
        ),
        (stereo_task, stereo_batches, {"left_right_prediction", "disparity_vs_ground_truth"}),
        (
            steerable_task,
            lambda: [(torch.randn(3, 1, 12, 12), torch.rand(3))],
            {"input_target_output", "filters_learned_vs_analytic"},
        ),
    ],
)
def test_validation_draws_the_tasks_figures_for_tensorboard(tmp_path, make, batches, tags):
    task, batches = make(), batches()
    trainer(logger=TensorBoardLogger(tmp_path)).validate(task, loader(batches), verbose=False)
    assert tensorboard_images(tmp_path) == {f"val/{tag}" for tag in tags}
    with torch.no_grad():
        figures = task.figures(task.outcome(batches[0]))  # as a test draws them for its run
    assert set(figures) == tags
    assert all(image.dim() == 3 and image.shape[0] == 3 for image in figures.values())


def shard_metrics(rank: int, world_size: int, init_file: str) -> dict[str, torch.Tensor]:
    """Each test metric updated with rank ``rank``'s share of a fixed test set and computed,
    in a process group of ``world_size`` processes (one: no group, the whole set)."""
    if world_size > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
        )
    g = torch.Generator().manual_seed(4)
    frames, disparity = torch.rand(2, 4, 2, 1, 8, 8, generator=g), torch.randn(2, 50, generator=g)
    metrics = {
        "frames": FrameMetrics(horizon=2, predictor="copy_last"),
        "disparity": DisparityErrors(),
        "relative": RelativeMSE(),
    }
    shares = [slice(0, 3), slice(3, 4)] if world_size > 1 else [slice(0, 4)]  # uneven
    share = shares[rank]
    metrics["frames"].update(frames[0, share], frames[1, share])
    metrics["relative"].update(frames[0, share], frames[1, share])
    pixels = slice(0, 50 if rank == 0 else 0)  # the second rank finds no scorable pixel
    metrics["disparity"].update(disparity[0, pixels], disparity[1, pixels])
    return {k: v for metric in metrics.values() for k, v in metric.compute().items()}


def _shard_process(rank: int, world_size: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP threads
    metrics = {k: v.item() for k, v in shard_metrics(rank, world_size, init_file).items()}
    Path(f"{out}.{rank}").write_text(json.dumps(metrics))


def test_metrics_reduced_over_two_processes_equal_one_process(tmp_path):
    out = str(tmp_path / "metrics")
    args = (2, str(tmp_path / "init"), out)
    torch.multiprocessing.start_processes(_shard_process, args, nprocs=2, start_method="fork")
    single = shard_metrics(0, 1, "")
    for rank in (0, 1):
        reduced = json.loads(Path(f"{out}.{rank}").read_text())
        assert reduced.keys() == single.keys()
        for key, value in single.items():
            assert reduced[key] == pytest.approx(value.item(), rel=1e-6), (rank, key)
