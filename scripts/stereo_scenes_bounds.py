"""How well can disparity be known from the left view alone, on the procedural test scenes?

    python scripts/stereo_scenes_bounds.py                      # the default scenes
    python scripts/stereo_scenes_bounds.py data.layout=ground   # any data.* override
    python scripts/stereo_scenes_bounds.py data.layout=ground --checkpoint RUN/checkpoints/X.ckpt

The stereo model sees only the left view. In the "layers" layout each layer's disparity is drawn
independently of how it looks, so the left view tells only which layer is in front of which. This
renders the test scenes of ``experiment=stereo_scenes`` (same images, seeds and settings) and
scores, on the pixels the stereo task scores, the disparity end-point error and the share of
pixels off by more than 1 px of: the zero and mean disparity predictors; the median disparity of
the pixel's row (what the row alone tells); and an "order oracle" that knows each pixel's layer,
that layer's depth rank in the scene and the number of layers, and predicts the median disparity
of that (rank, number) over the set. Both medians are fitted on the test scenes themselves.
With ``--checkpoint`` (a checkpoint in a run folder, or the folder: its last.ckpt), the filters of
that stereo_scenes run's model are scored the same way. The errors are
also split between the background (the farthest layer; the floor of the ground layout) and the
leaves in front of it.
"""

import argparse
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from datamodules.stereo_scenes import EVAL_SEEDS, render_scene
from datamodules.stream import sample_rng
from dfn.run.cli import reporting_user_errors
from dfn.run.folder import named_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def grouped_median(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each value's group median."""
    out = np.empty_like(values)
    for group in np.unique(groups):
        members = groups == group
        out[members] = np.median(values[members])
    return out


def model_disparity(checkpoint: str, lefts: list[np.ndarray]) -> list[np.ndarray]:
    """The disparity of a stereo run's filters on each left view, [S, S] each."""
    with reporting_user_errors():
        folder, checkpoint = named_checkpoint(checkpoint, "--checkpoint")
        model = folder.build(checkpoint).model
    out = []
    for start in range(0, len(lefts), 50):
        batch = torch.from_numpy(np.stack(lefts[start : start + 50]))[:, None]
        with torch.no_grad():
            _, filters = model(batch)
        out += list(model.disparity(filters)[:, 0].numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.layout=ground")
    parser.add_argument("--checkpoint", help="also score this stereo_scenes run's model")
    args = parser.parse_args()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=stereo_scenes", *args.overrides])
    data = hydra.utils.instantiate(cfg.data)
    textures, settings = data.textures("test"), data.settings
    s, d_max = settings.size, settings.max_disparity
    y, x = np.mgrid[:s, :s]
    scenes = [
        render_scene(textures, sample_rng(EVAL_SEEDS["test"], i), settings)
        for i in range(data.hparams.test_size)
    ]
    scored = []
    for scene in scenes:
        source = x + np.nan_to_num(scene.disparity)
        scored.append(np.isfinite(scene.disparity) & (source >= 0) & (source <= s - 1))
    truth = np.concatenate([c.disparity[m] for c, m in zip(scenes, scored, strict=True)])
    row = np.concatenate([y[m] for m in scored])
    order = np.concatenate(
        [c.num_layers * 100 + c.layer[m] for c, m in zip(scenes, scored, strict=True)]
    )
    if settings.layout == "ground":  # the floor: disparity -d_max + 2 d_max y / (s - 1)
        background = np.abs(truth - (-d_max + 2 * d_max * row / (s - 1))) < 1e-4
    else:  # the farthest layer
        background = order % 100 == 0
    predictors = {
        "zero disparity": np.zeros_like(truth),
        "mean disparity": np.full_like(truth, truth.mean()),
        "median of the row": grouped_median(truth, row),
        "order oracle (rank, number of layers)": grouped_median(truth, order),
    }
    if args.checkpoint is not None:
        maps = model_disparity(args.checkpoint, [c.left for c in scenes])
        predictors[f"model {args.checkpoint}"] = np.concatenate(
            [d[m] for d, m in zip(maps, scored, strict=True)]
        )
    print(
        f"{data.hparams.test_size} test scenes, {settings}, {truth.size} scored pixels, "
        f"{background.mean():.1%} of them on the background"
    )
    print("| predictor | disparity EPE (px) | bad1 (> 1 px) | EPE background | EPE leaves |")
    print("|---|---|---|---|---|")
    for name, prediction in predictors.items():
        error = np.abs(prediction - truth)
        print(
            f"| {name} | {error.mean():.3f} | {(error > 1).mean():.3f} | "
            f"{error[background].mean():.3f} | {error[~background].mean():.3f} |"
        )


if __name__ == "__main__":
    main()
