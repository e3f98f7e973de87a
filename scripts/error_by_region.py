"""Where in the frame does a video model make its errors: at the edges, or inside?

    python scripts/error_by_region.py outputs/runs/<highway run> outputs/runs/<baseline run>

Tests each run's last checkpoint on its test set (the run's own data settings) and splits the
squared error per predicted frame into the ``--border`` columns at the left and right edges, the
rows at the top and bottom edges (corners counted once, with the columns) and the inside, beside
the predictor that copies the last input frame. A filter of the previous frame cannot bring in
content that enters the view at an edge (its taps see zero padding there); this shows how much
of a model's error that is.
"""

import argparse
from pathlib import Path

import torch

from dfn.run.cli import reporting_user_errors
from dfn.run.folder import RunFolder


def region_errors(squared: torch.Tensor, border: int) -> dict[str, float]:
    """A mean squared error map [H, W] summed over the frame and over each region."""
    columns = squared[:, :border].sum() + squared[:, -border:].sum()
    rows = squared[:border, border:-border].sum() + squared[-border:, border:-border].sum()
    total = squared.sum()
    sums = {"total": total, "edge columns": columns, "edge rows": rows}
    sums["inside"] = total - columns - rows
    return {name: float(value) for name, value in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--border", type=int, default=5, help="edge width in pixels (5)")
    args = parser.parse_args()
    print("| run (predictor) | step | windows | total | edge columns | edge rows | inside |")
    print("|---" * 7 + "|")
    for run in args.run_dirs:
        with reporting_user_errors():
            data, model, step = RunFolder(run).build(num_workers=0)
        data.setup("test")
        errors = {"model": 0.0, "copy last": 0.0}  # squared error maps [H, W], summed
        frames_seen = 0
        with torch.no_grad():
            for frames in data.test_dataloader():
                context, target = model.split(frames)
                prediction, _ = model(context)
                errors["model"] = errors["model"] + (prediction - target).square().sum((0, 1, 2))
                last = context[:, -1:]
                errors["copy last"] = errors["copy last"] + (last - target).square().sum((0, 1, 2))
                frames_seen += target.shape[0] * target.shape[1]
        for predictor, total in errors.items():
            sums = region_errors(total / frames_seen, args.border).values()
            row = [f"{run.name} ({predictor})", step, len(data.test_set)]
            print("| " + " | ".join(map(str, row + [f"{v:.3f}" for v in sums])) + " |")


if __name__ == "__main__":
    main()
