"""How well can disparity be known from the left view alone, on the procedural test scenes?

    python scripts/stereo_scenes_bounds.py                      # the default scenes
    python scripts/stereo_scenes_bounds.py data.layout=ground   # any data.* override

The stereo model sees only the left view. In the "layers" layout each layer's disparity is drawn
independently of how it looks, so the left view tells only which layer is in front of which. This
renders the test scenes of ``experiment=stereo_scenes`` (same images, seeds and settings) and
scores, on the pixels the stereo task scores, the disparity end-point error and the share of
pixels off by more than 1 px of: the zero and mean disparity predictors; the median disparity of
the pixel's row (what the row alone tells); and an "order oracle" that knows each pixel's layer,
that layer's depth rank in the scene and the number of layers, and predicts the median disparity
of that (rank, number) over the set. Both medians are fitted on the test scenes themselves.
"""

import sys
from pathlib import Path

import hydra
import numpy as np
from hydra import compose, initialize_config_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # run from anywhere

from datamodules.stereo_scenes import EVAL_SEEDS, render_scene  # noqa: E402
from datamodules.stream import sample_rng  # noqa: E402


def grouped_median(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each value's group median."""
    out = np.empty_like(values)
    for group in np.unique(groups):
        members = groups == group
        out[members] = np.median(values[members])
    return out


def main() -> None:
    overrides = sys.argv[1:]
    with initialize_config_dir(str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=stereo_scenes", *overrides])
    data = hydra.utils.instantiate(cfg.data)
    textures, settings = data.textures("test"), data.settings
    truth, row, order = [], [], []
    for i in range(data.hparams.test_size):
        scene = render_scene(textures, sample_rng(EVAL_SEEDS["test"], i), settings)
        y, x = np.mgrid[: settings.size, : settings.size]
        source = x + np.nan_to_num(scene.disparity)
        scored = np.isfinite(scene.disparity) & (source >= 0) & (source <= settings.size - 1)
        truth.append(scene.disparity[scored])
        row.append(y[scored])
        order.append(scene.num_layers * 100 + scene.layer[scored])
    truth, row, order = (np.concatenate(v).astype(np.float64) for v in (truth, row, order))
    predictors = {
        "zero disparity": np.zeros_like(truth),
        "mean disparity": np.full_like(truth, truth.mean()),
        "median of the row": grouped_median(truth, row),
        "order oracle (rank, number of layers)": grouped_median(truth, order),
    }
    print(f"{data.hparams.test_size} test scenes, {settings}, {truth.size} scored pixels")
    print("| predictor | disparity EPE (px) | bad1 (> 1 px) |")
    print("|---|---|---|")
    for name, prediction in predictors.items():
        error = np.abs(prediction - truth)
        print(f"| {name} | {error.mean():.3f} | {(error > 1).mean():.3f} |")


if __name__ == "__main__":
    main()
