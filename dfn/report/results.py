"""The report: metrics.json of training, eval and sweep runs as Markdown in the shape of the
paper's Table 1, with the paper's claims judged first, and figures. The figures are the runs'
own (their tests drew them into their folders) and, for the video models, the metric per
predicted frame of each configuration, drawn from the metrics; no model is built again."""

from __future__ import annotations

import shutil
import statistics
from datetime import datetime
from pathlib import Path

from dfn.files import replacing, write_text
from dfn.report.claims import REFERENCE_PREDICTORS, claims_section
from dfn.report.paper import OTHER_MOVING_MNIST, PAPER_RESULTS
from dfn.report.runs import Row, find_runs, furthest, group_runs, number, steps_cell
from dfn.run.folder import typed
from dfn.tasks.visualize import error_per_frame, write_png

OTHER_METRICS = {
    "test/ssim": "SSIM",
    "test/psnr": "PSNR (dB)",
    "test/disparity_epe": "disparity EPE (px)",
    "test/zero_disparity/disparity_epe": "zero-disparity EPE",
    "test/mean_disparity/disparity_epe": "mean-disparity EPE",
    "test/relative_mse": "relative MSE",
    "test/filter_cosine": "filter cosine",
}
PER_FRAME = "error_per_frame"  # a run's own figure of it, which the family's figure shows


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
        f"| {row.label} | {row.model} | `{configuration}` "
        f"| {', '.join(f'{p:,}' for p in parameters)} | {steps_cell(row.steps, ref)} "
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
                f"| `{typed(run.path)}` | `{run.command}` | {m.get('device', '—')} "
                f"| {m.get('steps', '—'):,} "
                f"| {'—' if train_time is None else f'{train_time:,.0f} s'} "
                f"| {number(m.get('val/loss_best'))} | {number(m.get(row.metric))} |"
            )
    return lines


def per_frame(metrics: dict, key: str) -> list[float]:
    """``key`` at each predicted frame: ``key_t1``, ``key_t2``, ... as far as they go."""
    values = []
    while f"{key}_t{len(values) + 1}" in metrics:
        values.append(metrics[f"{key}_t{len(values) + 1}"])
    return values


def horizon_figures(rows: list[Row], figures: Path) -> list[Path]:
    """The metric at each predicted frame t+k, one figure per video experiment and its baseline,
    a line per row named by its model and step, and the predictor that copies the last frame."""
    families: dict[str, list[Row]] = {}
    for row in rows:
        if row.values(f"{row.metric}_t1"):
            families.setdefault(row.experiment.removesuffix("_baseline"), []).append(row)
    written = []
    for family, family_rows in families.items():
        names = [f"{row.model}, {row.steps or 0:,} steps" for row in family_rows]
        models = {}
        for name, row in zip(names, family_rows, strict=True):
            curves = [per_frame(r.metrics, row.metric) for r in row.runs]
            label = name if names.count(name) == 1 else f"{name} ({row.label})"
            models[label] = [statistics.mean(values) for values in zip(*curves, strict=True)]
        first = family_rows[0]
        base = first.metric.rsplit("/", 1)[-1]
        trivial = {
            label: per_frame(first.runs[0].metrics, f"test/{predictor}/{base}")
            for predictor, label in REFERENCE_PREDICTORS.items()
        }
        unit = first.reference.metric_label if first.reference else first.metric
        image = error_per_frame(
            models, {k: v for k, v in trivial.items() if v}, unit, f"{family}: {unit}"
        )
        written.append(write_png(figures / f"horizon_{family}.png", image))
    return written


def sample_figures(rows: list[Row], figures: Path) -> dict[str, list[Path]]:
    """For one run of each row that drew them: its test's figures (sample predictions, filters),
    copied beside the report as ``<row label>_<name>.png``."""
    written: dict[str, list[Path]] = {}
    for row in rows:
        drawn = next((r.folder.figures for r in row.runs if r.folder.figures), [])
        for source in (p for p in drawn if p.stem != PER_FRAME):
            with replacing(figures / f"{row.label}_{source.name}") as tmp:
                shutil.copyfile(source, tmp)
            written.setdefault(row.label, []).append(figures / f"{row.label}_{source.name}")
    return written


def write_report(run_dirs: list[Path], out: Path, command: str, claims_only: bool = False) -> Path:
    """The report of the runs in ``run_dirs`` as ``out``, its figures in ``figures/`` beside it;
    ``claims_only``: the claims and their evidence alone."""
    runs = find_runs(run_dirs)
    rows = group_runs(runs)
    devices = sorted({r.metrics.get("device", "unknown") for r in runs})
    short = any("short" in steps_cell(row.steps, row.reference) for row in rows)
    lines = [
        "# Claims" if claims_only else "# Results",
        "",
        f"Generated on {datetime.now():%Y-%m-%d} by `{command}` from {len(runs)} run(s). "
        f"Hardware: {'; '.join(devices)}.",
        "",
        "The unit of the paper's metrics is the loss summed over the 64x64 pixels of a frame, "
        "averaged over the predicted frames and the test sequences. Paper and authors' re-run "
        "values: `dfn/report/paper.py` (from the authors' code and README).",
    ]
    if short:
        lines += [
            "",
            "**Runs marked *short* trained fewer steps than the paper's schedule "
            "(smoke, debug or short CPU runs): their numbers are not comparable with the "
            "paper's. The paper's schedules on one GPU: "
            "`scripts/reproduce.sh`.**",
        ]
    lines += ["", *claims_section(runs)]
    if claims_only:
        return write_text(out, "\n".join(lines))
    figures = out.parent / "figures"
    horizons = horizon_figures(furthest(rows), figures)
    samples = sample_figures(furthest(rows), figures)

    def link(path: Path) -> str:
        return f"![{path.stem}]({path.relative_to(out.parent)})"

    lines += ["## Table 1", "", "Rows are numbered as their figures are.", "", *table_1(rows), ""]
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
    return write_text(out, "\n".join(lines))
