"""Predictions you can watch: an animated GIF of test sequences, the ground truth beside each
model's prediction, and the DFN's filters as flow (paper Figure 7).

    python scripts/animate.py moving_mnist moving_mnist_baseline -o docs/figures/moving_mnist.gif
    python scripts/animate.py outputs/my_export.pt --sequences 2 data.test_size=100

Models are the weights in pretrained/ by experiment name, or files written by
scripts/export_pretrained.py; all must be of one video experiment, whose test set (the config's,
with the overrides given) supplies the sequences. Input frames have a grey border, predicted
frames a red one.
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
from dfn.tasks.video import VideoPredictionTask

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


def animation(
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="experiment names or exported .pt files")
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/animation.gif"))
    parser.add_argument("--sequences", type=int, default=3, help="test sequences, one a row")
    parser.add_argument("--fps", type=float, default=4)
    args, overrides = parser.parse_known_args()
    loaded = [load(name) for name in args.models]
    experiments = {r[IDENTITY]["experiment"].removesuffix("_baseline") for _, r in loaded}
    if len(experiments) > 1 or not all(isinstance(m, VideoPredictionTask) for m, _ in loaded):
        raise InputError(
            f"animate.py draws models of one video experiment (moving_mnist, highway) and its "
            f"baseline; got {', '.join(r[IDENTITY]['experiment'] for _, r in loaded)}"
        )
    experiment = loaded[0][1][IDENTITY]["experiment"]
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"experiment={experiment}", f"data.batch_size={args.sequences}", *overrides],
        )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("test")
    frames = next(iter(datamodule.test_dataloader()))
    predictions, flow = {}, None
    with torch.no_grad():
        for model, record in loaded:
            outcome = model.predict(frames)
            predictions[model_label(model, record["global_step"])] = outcome.prediction
            filters = outcome.extras["filters"]
            if flow is None and filters[0] is not None:
                displacement = torch.stack([model.displacement(f) for f in filters], 1)
                flow = flow_to_image(displacement.flatten(0, 1)).unflatten(
                    0, displacement.shape[:2]
                )
    images = animation(frames, predictions, flow, loaded[0][0].num_input)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    duration = round(1000 / args.fps)
    durations = [duration] * (len(images) - 1) + [4 * duration]  # hold the last frame
    images[0].save(args.out, save_all=True, append_images=images[1:], duration=durations, loop=0)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB, {len(images)} frames)")


def model_label(model: VideoPredictionTask, step: int) -> str:
    """DFN or baseline, as the paper names them, and the step its weights were trained to."""
    kind = "DFN" if model.predictor.head.reach is not None else "baseline"
    return f"{kind}, {step:,} it."


if __name__ == "__main__":
    with reporting_user_errors():
        main()
