"""Collect metrics.json from training, eval and sweep runs into a Markdown report in the shape of
the paper's Table 1, with figures:

    python scripts/report.py outputs/runs/2026-..._moving_mnist outputs/multirun/... \
        --out docs/RESULTS.md

A RUN_DIR is a run folder (it holds metrics.json) or any folder above run folders, such as a sweep
folder. Runs that differ only in their seed form one row: mean ± standard deviation over seeds.
Figures go to ``figures/`` beside the report: the metric per predicted frame for the video models,
and for one run of each row the sample predictions and its filters (flow fields, disparity,
steerable filters) on test samples, from its best checkpoint, as the task draws them for
TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import hydra
import matplotlib
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from dfn.errors import InputError  # noqa: E402
from dfn.reference_results import OTHER_MOVING_MNIST, PAPER_RESULTS, PaperResult  # noqa: E402
from dfn.run.cli import reporting_user_errors  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REFERENCE_PREDICTORS = {"copy_last": "copy last frame", "copy_left": "copy left view"}
OTHER_METRICS = {
    "test/ssim": "SSIM",
    "test/psnr": "PSNR (dB)",
    "test/disparity_epe": "disparity EPE (px)",
    "test/zero_disparity/disparity_epe": "zero-disparity EPE",
    "test/mean_disparity/disparity_epe": "mean-disparity EPE",
    "test/relative_mse": "relative MSE",
    "test/filter_cosine": "filter cosine",
}
# Overrides that say where a run lives or which run it is, not what it trains.
PLUMBING = ("seed=", "experiment=", "ckpt_path=", "paths.", "hydra.", "hydra/")


@dataclass
class Run:
    path: Path
    metrics: dict
    config: DictConfig | None
    overrides: list[str]

    @property
    def experiment(self) -> str:
        return self.metrics["experiment"]

    @property
    def job(self) -> str:
        return "eval" if "checkpoint" in self.metrics else "train"

    @property
    def command(self) -> str:
        return shlex.join(["python", f"{self.job}.py", *self.overrides])

    @property
    def configuration(self) -> tuple[str, ...]:
        """The overrides that change what is trained or evaluated."""
        return tuple(sorted(o for o in self.overrides if not o.lstrip("+~").startswith(PLUMBING)))

    @property
    def checkpoint(self) -> Path | None:
        path = self.metrics.get("checkpoint") or self.metrics.get("best_checkpoint")
        candidates = [Path(path)] if path else []
        candidates.append(self.path / "checkpoints" / "last.ckpt")
        return next((p for p in candidates if p.is_file()), None)


@dataclass
class Row:
    """Runs of one experiment and configuration, differing only in their seed."""

    experiment: str
    job: str
    configuration: tuple[str, ...]
    runs: list[Run] = field(default_factory=list)
    label: str = ""  # names the row's figures: "02_moving_mnist"

    @property
    def reference(self) -> PaperResult | None:
        return PAPER_RESULTS.get(self.experiment)

    @property
    def metric(self) -> str:
        return self.reference.metric if self.reference else "test/mse"

    @property
    def name(self) -> str:
        return self.experiment + ("_eval" if self.job == "eval" else "")

    def values(self, key: str) -> list[float]:
        return [r.metrics[key] for r in self.runs if key in r.metrics]

    def summary(self, key: str) -> str:
        return mean_spread(self.values(key))


def find_runs(paths: list[Path]) -> list[Run]:
    runs: dict[Path, Run] = {}  # a run named twice counts once
    for path in paths:
        if not path.is_dir():
            raise InputError(f"{path} is not a folder; give run or sweep folders")
        found = sorted(path.rglob("metrics.json"))
        if not found:
            raise InputError(f"no metrics.json under {path}; is it a finished run or sweep folder?")
        for metrics_path in found:
            folder = metrics_path.parent
            hydra_dir = folder / ".hydra"
            config = OmegaConf.load(hydra_dir / "config.yaml") if hydra_dir.is_dir() else None
            overrides = (
                list(OmegaConf.load(hydra_dir / "overrides.yaml")) if hydra_dir.is_dir() else []
            )
            metrics = json.loads(metrics_path.read_text())
            runs[folder.resolve()] = Run(folder, metrics, config, overrides)
    return list(runs.values())


def group_runs(runs: list[Run]) -> list[Row]:
    """Rows in the paper's Table 1 order, then any other experiments."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        key = (run.experiment, run.job, run.configuration)
        rows.setdefault(key, Row(*key)).runs.append(run)
    order = list(PAPER_RESULTS)
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            order.index(r.experiment) if r.experiment in order else len(order),
            r.experiment,
        ),
    )
    for i, row in enumerate(ordered):
        row.label = f"{i:02d}_{row.name}"
    return ordered


def number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def mean_spread(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return number(values[0])
    mean, spread = statistics.mean(values), statistics.stdev(values)
    return f"{number(mean)} ± {number(spread)} (n={len(values)})"


def steps_cell(row: Row) -> str:
    steps = sorted({r.metrics.get("steps") for r in row.runs} - {None})
    text = " / ".join(f"{s:,}" for s in steps) or "—"
    schedule = row.reference.iterations if row.reference else None
    if schedule and steps and max(steps) < schedule:
        text += f" (short; paper {schedule:,})"
    return text


def table_1(rows: list[Row]) -> list[str]:
    """Every experiment of the paper, run or not, then any other experiments."""
    lines = [
        "| Experiment | Model | Configuration | Parameters | Steps | Metric | Ours | Paper "
        "| Authors' re-run | Reference predictors | Other metrics |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for experiment, ref in PAPER_RESULTS.items():
        if not any(row.experiment == experiment for row in rows):
            lines.append(
                f"| {experiment} | {ref.model} | not run | {ref.parameters:,} | — "
                f"| {ref.metric_label} | — | {number(ref.paper)} | {number(ref.authors_rerun)} "
                "| — | — |"
            )
        lines += [table_1_row(row) for row in rows if row.experiment == experiment]
    lines += [table_1_row(row) for row in rows if row.experiment not in PAPER_RESULTS]
    return lines


def table_1_row(row: Row) -> str:
    ref = row.reference
    base = row.metric.rsplit("/", 1)[-1]
    references = [
        f"{label}: {row.summary(f'test/{p}/{base}')}"
        for p, label in REFERENCE_PREDICTORS.items()
        if row.values(f"test/{p}/{base}")
    ]
    others = [f"{label} {row.summary(k)}" for k, label in OTHER_METRICS.items() if row.values(k)]
    parameters = sorted({r.metrics.get("parameters") for r in row.runs} - {None})
    configuration = " ".join(row.configuration) or "defaults"
    if row.job == "eval":
        configuration = f"eval.py {configuration}"
    return (
        f"| {row.label} | {ref.model if ref else '—'} | `{configuration}` "
        f"| {', '.join(f'{p:,}' for p in parameters)} | {steps_cell(row)} "
        f"| {ref.metric_label if ref else row.metric} | **{row.summary(row.metric)}** "
        f"| {number(ref.paper) if ref else '—'} | {number(ref.authors_rerun) if ref else '—'} "
        f"| {'; '.join(references) or '—'} | {'; '.join(others) or '—'} |"
    )


def runs_table(rows: list[Row]) -> list[str]:
    lines = [
        "| Run folder | Command | Device | Steps | Train time | val/loss_best | Metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for run in row.runs:
            m = run.metrics
            train_time = m.get("train_wall_time_s")
            lines.append(
                f"| `{relative(run.path)}` | `{run.command}` | {m.get('device', '—')} "
                f"| {m.get('steps', '—'):,} "
                f"| {'—' if train_time is None else f'{train_time:,.0f} s'} "
                f"| {number(m.get('val/loss_best'))} | {number(m.get(row.metric))} |"
            )
    return lines


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def horizon_figures(rows: list[Row], figures: Path) -> list[Path]:
    """The model's metric at each predicted frame t+k, one figure per video experiment."""
    families: dict[str, list[Row]] = {}
    for row in rows:
        if row.values(f"{row.metric}_t1"):
            families.setdefault(row.experiment.removesuffix("_baseline"), []).append(row)
    written = []
    for family, family_rows in families.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in family_rows:
            horizon = horizon_of(row.runs[0].metrics, row.metric)
            means = [statistics.mean(row.values(f"{row.metric}_t{k}")) for k in horizon]
            ax.plot(horizon, means, marker="o", label=row.label)
        first = family_rows[0]
        base = first.metric.rsplit("/", 1)[-1]
        for predictor, label in REFERENCE_PREDICTORS.items():
            key = f"test/{predictor}/{base}"
            if f"{key}_t1" in first.runs[0].metrics:
                horizon = horizon_of(first.runs[0].metrics, key)
                ax.plot(
                    horizon,
                    [first.runs[0].metrics[f"{key}_t{k}"] for k in horizon],
                    "k--",
                    label=label,
                )
        ax.set_xlabel("predicted frame t+k")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(first.reference.metric_label if first.reference else first.metric)
        ax.set_title(f"{family}: error per predicted frame")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = figures / f"horizon_{family}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def horizon_of(metrics: dict, key: str) -> list[int]:
    k = 1
    while f"{key}_t{k}" in metrics:
        k += 1
    return list(range(1, k))


def task_images(config: DictConfig, checkpoint: Path) -> dict[str, Tensor]:
    """The images the task draws for TensorBoard, on the first test batch, from ``checkpoint``."""
    model = hydra.utils.instantiate(config.model)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    model.eval()
    datamodule = hydra.utils.instantiate(config.data, num_workers=0)
    datamodule.prepare_data()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        return model.figures(model.predict(batch))


def sample_figures(rows: list[Row], figures: Path) -> dict[str, list[Path]]:
    """For one run of each row: its sample predictions and filters as PNGs."""
    written: dict[str, list[Path]] = {}
    for row in rows:
        run = next((r for r in row.runs if r.config is not None and r.checkpoint), None)
        if run is None:
            continue
        paths = written.setdefault(row.label, [])
        for tag, image in task_images(run.config, run.checkpoint).items():
            path = figures / f"{row.label}_{tag.rsplit('/', 1)[-1]}.png"
            save_image(image.float() / 255 if image.dtype == torch.uint8 else image, path)
            paths.append(path)
    return written


def write_report(run_dirs: list[Path], out: Path, command: str) -> Path:
    runs = find_runs(run_dirs)
    rows = group_runs(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = out.parent / "figures"
    figures.mkdir(exist_ok=True)
    horizons = horizon_figures(rows, figures)
    samples = sample_figures(rows, figures)
    devices = sorted({r.metrics.get("device", "unknown") for r in runs})
    short = any("short" in steps_cell(row) for row in rows)

    def link(path: Path) -> str:
        return f"![{path.stem}]({path.relative_to(out.parent)})"

    lines = [
        "# Results",
        "",
        f"Generated on {datetime.now():%Y-%m-%d} by "
        f"`{command}` from "
        f"{len(runs)} run(s). Hardware: {'; '.join(devices)}.",
        "",
        "The unit of the paper's metrics is the loss summed over the 64x64 pixels of a frame, "
        "averaged over the predicted frames and the test sequences. Paper and authors' re-run "
        "values: `dfn/reference_results.py` (from the authors' code and README).",
    ]
    if short:
        lines += [
            "",
            "**Runs marked *short* trained fewer steps than the paper's schedule "
            "(smoke, debug or short CPU runs): their numbers are not comparable with the "
            "paper's. The paper's schedules on one GPU: "
            "`scripts/reproduce.sh`.**",
        ]
    lines += [
        "",
        "## Table 1",
        "",
        "Rows are numbered as their figures are.",
        "",
        *table_1(rows),
        "",
    ]
    if any(r.experiment.startswith("moving_mnist") for r in rows):
        others = ", ".join(f"{k} {v}" for k, v in OTHER_MOVING_MNIST.items())
        lines += [f"Other Moving MNIST results in the paper (BCE per frame): {others}.", ""]
    lines += ["## Runs", "", *runs_table(rows), ""]
    if horizons or samples:
        lines += ["## Figures", ""]
    for path in horizons:
        lines += [link(path), ""]
    for row in rows:
        if row.label in samples:
            lines += [f"### {row.label}: `{' '.join(row.configuration) or 'defaults'}`", ""]
            lines += [link(p) for p in samples[row.label]] + [""]
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", type=Path)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/report/RESULTS.md"),
        help="the Markdown report; figures go to figures/ beside it",
    )
    args = parser.parse_args(argv)
    with reporting_user_errors():
        command = shlex.join(["python", "scripts/report.py", *(argv or sys.argv[1:])])
        path = write_report(args.run_dirs, args.out, command)
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    main()
