"""Predictions you can watch: an animated GIF of test samples, the ground truth beside each
model's prediction, and what the DFN's filters carry: the flow of a video (paper Figure 7), the
disparity of a stereo pair.

    python scripts/animate.py moving_mnist moving_mnist_baseline -o docs/figures/moving_mnist.gif
    python scripts/animate.py stereo_scenes stereo_scenes_baseline -o docs/figures/stereo.gif
    python scripts/animate.py outputs/my_export.pt --samples 2 data.test_size=100

Models are the weights in pretrained/ by experiment name, or files written by
scripts/export_pretrained.py; all must be of one experiment (and its baseline), whose test set
(the config's, with the overrides given) supplies the samples. Video: a row per sequence, a GIF
frame per time step. Stereo: a GIF frame per test scene. What the model sees has a grey border,
what it predicts a red one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import flow_to_image, make_grid

from dfn.errors import InputError
from dfn.run.checkpoints import IDENTITY
from dfn.run.cli import reporting_user_errors
from dfn.run.pretrained import load
from dfn.tasks.stereo import StereoPredictionTask
from dfn.tasks.video import VideoPredictionTask
from dfn.tasks.visualize import colorize

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCALE = 2  # pixels per frame pixel: 64x64 frames become 128x128
BORDER = {"input": (128, 128, 128), "predicted": (220, 40, 40)}


def gray(frame: Tensor) -> Tensor:
    """[1, H, W] in [0, 1] -> [3, H, W] uint8."""
    return (frame.float().clamp(0, 1) * 255).round().to(torch.uint8).expand(3, -1, -1)


def tile(image: Tensor, kind: str) -> Tensor:
    """[3, H, W] uint8, scaled by SCALE, in a 2-pixel border of the frame's kind."""
    image = image.repeat_interleave(SCALE, 1).repeat_interleave(SCALE, 2)
    framed = torch.tensor(BORDER[kind], dtype=torch.uint8).view(3, 1, 1)
    framed = framed.expand(3, image.shape[1] + 4, image.shape[2] + 4).clone()
    framed[:, 2:-2, 2:-2] = image
    return framed


def labelled(grid: Tensor, labels: list[str], caption: str) -> Image.Image:
    """The grid under a line of column labels, over a line of ``caption``."""
    body = Image.fromarray(grid.permute(1, 2, 0).numpy())
    image = Image.new("RGB", (body.width, body.height + 28), (255, 255, 255))
    image.paste(body, (0, 14))
    draw = ImageDraw.Draw(image)
    column = body.width / len(labels)
    for i, label in enumerate(labels):
        draw.text((i * column + 4, 1), label, fill=(0, 0, 0))
    draw.text((4, body.height + 15), caption, fill=(0, 0, 0))
    return image


def video_animation(
    frames: Tensor, predictions: dict[str, Tensor], flow: Tensor | None, num_input: int
) -> list[Image.Image]:
    """GIF frames: a row per sequence of ``frames`` [N, T, 1, H, W]; columns: the ground truth,
    each model's frames (the input, then its predictions [N, T - num_input, 1, H, W]), and the
    flow [N, T - num_input, 2, H, W] of the first model's filters, if it has filters."""
    labels = ["ground truth", *predictions, *(["DFN flow"] if flow is not None else [])]
    images = []
    for t in range(frames.shape[1]):
        kind = "input" if t < num_input else "predicted"
        tiles = []
        for i in range(frames.shape[0]):
            row = [gray(frames[i, t])]
            for predicted in predictions.values():
                row.append(gray(frames[i, t] if t < num_input else predicted[i, t - num_input]))
            if flow is not None:
                blank = torch.full((3, *frames.shape[-2:]), 255, dtype=torch.uint8)
                row.append(blank if t < num_input else flow[i, t - num_input])
            tiles += [tile(image, kind) for image in row]
        grid = make_grid(torch.stack(tiles), nrow=len(labels), padding=2, pad_value=255)
        images.append(labelled(grid, labels, f"frame {t + 1}: {kind}"))
    return images


def stereo_animation(
    batch: dict, predictions: dict[str, Tensor], disparity: Tensor | None, reach: int | None
) -> list[Image.Image]:
    """GIF frames, a test scene each: the left view, the right view, each model's right view,
    and the disparity the first model's filters carry beside the ground truth."""
    labels = ["left view", "right view", *predictions]
    maps = []
    if disparity is not None:
        labels += ["DFN disparity", "true disparity"]
        maps = [colorize(m, -reach, reach) for m in (disparity, batch["disparity"])]
    images = []
    for i in range(len(batch["left"])):
        row = [tile(gray(batch["left"][i]), "input"), tile(gray(batch["right"][i]), "input")]
        row += [tile(gray(p[i]), "predicted") for p in predictions.values()]
        row += [tile(gray(m[i]), "predicted") for m in maps]
        grid = make_grid(torch.stack(row), nrow=len(labels), padding=2, pad_value=255)
        images.append(labelled(grid, labels, f"test scene {i + 1}"))
    return images


def test_batch(experiment: str, size: int, overrides: list[str]):
    """The first ``size`` samples of the experiment's test set (the config's, with overrides)."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment={experiment}", f"data.batch_size={size}", *overrides]
        )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="experiment names or exported .pt files")
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/animation.gif"))
    parser.add_argument("--samples", type=int, default=3, help="video: rows; stereo: frames")
    parser.add_argument("--fps", type=float, default=4)
    args, overrides = parser.parse_known_args()
    loaded = [load(name) for name in args.models]
    names = [record[IDENTITY]["experiment"] for _, record in loaded]
    if len({name.removesuffix("_baseline") for name in names}) > 1:
        raise InputError(f"animate.py draws models of one experiment; got {', '.join(names)}")
    batch = test_batch(names[0], args.samples, overrides)
    predictions, filtered = {}, None  # the first model with filters, and its outcome
    with torch.no_grad():
        for model, record in loaded:
            outcome = model.outcome(batch)
            predictions[model_label(model, record["global_step"])] = outcome.prediction
            if filtered is None and model.predictor.head.reach is not None:
                filtered = model, outcome
    first = loaded[0][0]
    if isinstance(first, VideoPredictionTask):
        flow = None
        if filtered is not None:
            model, outcome = filtered
            displacement = torch.stack(
                [model.displacement(f) for f in outcome.extras["filters"]], 1
            )
            flow = flow_to_image(displacement.flatten(0, 1))  # one colour scale for all frames
            flow = flow.unflatten(0, displacement.shape[:2])
        images = video_animation(batch, predictions, flow, first.num_input)
    elif isinstance(first, StereoPredictionTask):
        disparity = reach = None
        if filtered is not None:
            model, outcome = filtered
            disparity, reach = model.disparity(outcome.extras["filters"]), model.reach
        images = stereo_animation(batch, predictions, disparity, reach)
    else:
        raise InputError(f"animate.py draws video and stereo models, not {names[0]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    duration = round(1000 / args.fps)
    durations = [duration] * (len(images) - 1) + [4 * duration]  # hold the last frame
    images[0].save(args.out, save_all=True, append_images=images[1:], duration=durations, loop=0)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {len(images)} frames)")


def model_label(model: VideoPredictionTask | StereoPredictionTask, step: int) -> str:
    """DFN or baseline, as the paper names them, and the step its weights were trained to."""
    kind = "DFN" if model.predictor.head.reach is not None else "baseline"
    return f"{kind}, {step:,} it."


if __name__ == "__main__":
    with reporting_user_errors():
        main()
