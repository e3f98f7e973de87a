"""Does a stereo model's disparity carry over from the training band to the test band?

    python scripts/stereo_generalisation.py outputs/runs/<stereo run>

Scores the run's last checkpoint on the fixed validation crops (taken from the training band
of the Middlebury scene) and on the test crops (the disjoint test band): squared error per
frame, the copy-left-view predictor, and the disparity end-point error of the filters beside
the zero- and mean-disparity predictors and the correlation with the ground truth.
"""

import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dfn.run.cli import reporting_user_errors
from dfn.run.folder import RunFolder


def per_frame(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).square().flatten(1).sum(1).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    run = parser.parse_args().run_dir
    with reporting_user_errors():  # the Middlebury scene that ships, whatever data the run read
        data, model, step = RunFolder(run).build(path=None, train_path=None, test_path=None)
    data.setup("fit")
    data.setup("test")
    print(f"{run} at step {step}")
    print("| crops | n | MSE / frame | copy left | EPE (px) | zero | mean | corr. |")
    print("|---|---|---|---|---|---|---|---|")
    splits = [("validation (training band)", data.val_set), ("test band", data.test_set)]
    for name, dataset in splits:
        batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
        with torch.no_grad():
            prediction, filters = model(batch["left"])
        truth, disparity = batch["disparity"], model.disparity(filters)
        valid = model.scorable(truth)
        d, t = disparity[valid], truth[valid]
        print(
            f"| {name} | {len(dataset)} | {per_frame(prediction, batch['right']):.2f} | "
            f"{per_frame(batch['left'], batch['right']):.2f} | {(d - t).abs().mean():.3f} | "
            f"{t.abs().mean():.3f} | {(t - t.mean()).abs().mean():.3f} | "
            f"{torch.corrcoef(torch.stack([d, t]))[0, 1]:.3f} |"
        )


if __name__ == "__main__":
    main()
