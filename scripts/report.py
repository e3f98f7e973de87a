"""Collect metrics.json from training, eval and sweep runs into a Markdown report in the shape of
the paper's Table 1, with figures:

    python scripts/report.py outputs/runs/2026-..._moving_mnist outputs/multirun/... \
        --out docs/RESULTS.md

A RUN_DIR is a run folder (it holds metrics.json) or any folder above run folders, such as a sweep
folder. Runs that differ only in their seed form one row: mean ± standard deviation over seeds.
The report opens with the paper's claims (``CLAIMS``), each with the runs that test it and a
verdict computed from their metrics; ``--claims-only`` writes just that section.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import hydra
import matplotlib
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
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
# Data settings that change neither the test data nor how it is scored: where it is cached, how
# fast it loads, how many training batches make an epoch; and the seed, which runs of one
# configuration average over.
NOT_SETUP = ("num_workers", "cache_dir", "seed", "steps_per_epoch")
# Besides data.*, the settings that decide which test windows a run sees and how it is scored.
SETUP_KEYS = (
    "model.num_input",
    "model.num_predicted",
    "trainer.precision",
    "trainer.limit_test_batches",
)


@dataclass
class Run:
    path: Path
    metrics: dict
    config: DictConfig | None
    overrides: list[str]

    @property
    def experiment(self) -> str:
        """The experiment config it composed (its ``experiment=``), not the ``name=`` it may
        have been labelled with; a run composed from another run's config (``resume=``,
        ``run=``) has only the name it recorded."""
        chosen = [o.split("=", 1)[1] for o in self.overrides if o.startswith("experiment=")]
        return chosen[-1] if chosen else self.metrics["experiment"]

    @property
    def job(self) -> str:
        return "eval" if "checkpoint" in self.metrics else "train"

    @property
    def command(self) -> str:
        """The command line that made the run, as a user types it: ``eval.py run=<checkpoint>``
        reaches Hydra, and its record, as ``++run=<folder> ckpt_path=<checkpoint>`` (see
        ``dfn.run.runs.command_line``)."""
        overrides = self.overrides
        if any(o.startswith("++run=") for o in overrides):
            parsed = OverridesParser.create().parse_overrides(overrides)
            checkpoint = next(o.value() for o in parsed if o.key_or_group == "ckpt_path")
            rest = [o for o in overrides if not o.startswith(("++run=", "ckpt_path="))]
            overrides = [f"run={checkpoint}", *rest]
        return shlex.join(["python", f"{self.job}.py", *overrides])

    @property
    def configuration(self) -> tuple[str, ...]:
        """The overrides that change what is trained or evaluated."""
        return tuple(sorted(o for o in self.overrides if not o.lstrip("+~").startswith(PLUMBING)))

    @property
    def setup(self) -> tuple[str, ...]:
        """What its test numbers depend on besides the model, as ``key=value`` from its composed
        config: the data settings (``data.*``: the files, the test set, the sampling), the window
        and the precision. A run without ``.hydra/`` has none: it compares only with such runs."""
        if self.config is None:
            return ()
        keys = [f"data.{k}" for k in self.config.get("data", {}) if k not in NOT_SETUP]
        values = {
            key: OmegaConf.select(self.config, key, throw_on_resolution_failure=False)
            for key in [*keys, *SETUP_KEYS]
        }
        return tuple(sorted(f"{k}={v}" for k, v in values.items()))

    @property
    def checkpoint(self) -> Path | None:
        path = self.metrics.get("checkpoint") or self.metrics.get("best_checkpoint")
        candidates = [Path(path)] if path else []
        candidates.append(self.path / "checkpoints" / "last.ckpt")
        return next((p for p in candidates if p.is_file()), None)


@dataclass
class Row:
    """Runs of one experiment and configuration at one step, differing only in their seed."""

    experiment: str
    job: str
    configuration: tuple[str, ...]
    steps: int | None
    runs: list[Run] = field(default_factory=list)
    label: str = ""  # names the row's figures: "02_moving_mnist"

    @property
    def reference(self) -> PaperResult | None:
        return PAPER_RESULTS.get(self.experiment)

    @property
    def model(self) -> str:
        return "baseline" if self.experiment.endswith("_baseline") else "DFN"

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
        key = (run.experiment, run.job, run.configuration, run.metrics.get("steps"))
        rows.setdefault(key, Row(*key)).runs.append(run)
    order = list(PAPER_RESULTS)
    ordered = sorted(
        rows.values(),
        key=lambda r: (
            order.index(r.experiment) if r.experiment in order else len(order),
            r.experiment,
            r.job == "eval",  # a training run before its evaluations
            r.configuration,
            r.steps or 0,
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
    if row.steps is None:
        return "—"
    schedule = row.reference.iterations if row.reference else None
    short = f" (short; paper {schedule:,})" if schedule and row.steps < schedule else ""
    return f"{row.steps:,}{short}"


def furthest(rows: list[Row]) -> list[Row]:
    """Of the rows of one configuration (a learning curve), the one trained furthest."""
    last: dict[tuple, Row] = {}
    for row in rows:  # ordered by step within a configuration
        last[(row.experiment, row.job, row.configuration)] = row
    return [row for row in rows if any(row is kept for kept in last.values())]


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


@dataclass(frozen=True)
class Bound:
    """A threshold on a DFN run's metric: ``metric OP factor``, or with ``against``,
    ``metric OP factor x`` the smallest of those metrics of the same run (trivial predictors)."""

    metric: str
    op: str  # "<=" or ">="
    factor: float
    against: tuple[str, ...] = ()

    @property
    def rule(self) -> str:
        if not self.against:
            return f"`{self.metric}` {self.op} {self.factor:g}"
        others = ", ".join(f"`{k}`" for k in self.against)
        return f"`{self.metric}` {self.op} {self.factor:g} x min({others})"

    def limit(self, mean: Callable[[str], float | None]) -> float | None:
        values = [mean(k) for k in self.against]
        if None in values:
            return None
        return self.factor * min(values, default=1.0)

    def holds(self, value: float, limit: float) -> bool:
        return value <= limit if self.op == "<=" else value >= limit


@dataclass(frozen=True)
class Claim:
    """A claim of the paper and the rule that decides it from metrics.json files.

    With ``bounds``, each DFN run of ``experiments`` that has their metrics is evidence, shown
    when every bound holds. Without, the claim is "the DFN beats its baseline" on the paper's
    metric of ``paper_experiment``: the runs of each experiment and of the experiment +
    ``_baseline`` that share job, steps and ``Run.setup`` are one comparison, shown when the
    DFN's mean is lower than the baseline's.
    """

    text: str
    source: str  # where the paper makes it
    paper_experiment: str  # in PAPER_RESULTS: the metric, the schedule, the paper's numbers
    experiments: tuple[str, ...]  # the DFN experiments whose runs are evidence
    bounds: tuple[Bound, ...] = ()

    @property
    def reference(self) -> PaperResult:
        return PAPER_RESULTS[self.paper_experiment]

    @property
    def rule(self) -> str:
        if self.bounds:
            return " and ".join(b.rule for b in self.bounds)
        return f"DFN's `{self.reference.metric}` < baseline's on the same test setup and steps"

    @property
    def paper(self) -> str:
        """The paper's numbers for it, DFN vs baseline, or that it gives none."""
        baseline = PAPER_RESULTS.get(f"{self.paper_experiment}_baseline")
        if self.bounds or baseline is None:
            return "no number (qualitative)"
        return (
            f"DFN {number(self.reference.paper)} vs baseline {number(baseline.paper)} "
            f"(authors' re-run {number(self.reference.authors_rerun)} vs "
            f"{number(baseline.authors_rerun)})"
        )


TRIVIAL_DISPARITY = ("test/zero_disparity/disparity_epe", "test/mean_disparity/disparity_epe")
CLAIMS = (
    Claim(
        "The DFN beats its baseline on Moving MNIST", "Table 1", "moving_mnist", ("moving_mnist",)
    ),
    Claim("The DFN beats its baseline on highway driving", "section 4.2", "highway", ("highway",)),
    Claim(
        "The DFN beats its baseline on stereo prediction",
        "section 4.3",
        "stereo",
        ("stereo", "stereo_scenes"),
    ),
    Claim(
        "The stereo filters carry the disparity",
        "section 4.3, Figure 7",
        "stereo",
        ("stereo", "stereo_scenes"),
        bounds=(Bound("test/disparity_epe", "<=", 0.5, TRIVIAL_DISPARITY),),
    ),
    Claim(
        "The filter-generating network learns steerable filters",
        "section 4.1, Figure 4",
        "steerable",
        ("steerable",),
        bounds=(Bound("test/filter_cosine", ">=", 0.99), Bound("test/relative_mse", "<=", 0.01)),
    ),
)
SHOWN, NOT_SHOWN, NOT_RUN = "shown", "not shown", "not yet run"


@dataclass
class Evidence:
    """One comparison for a claim: DFN runs of one configuration, which differ in their seed
    only, and the baseline runs of the same experiment, job, steps and test setup; what was
    measured and the verdict."""

    experiment: str
    job: str
    steps: int | None
    dfn: list[Run] = field(default_factory=list)
    baseline: list[Run] = field(default_factory=list)
    measured: str = "—"
    against: str = "—"
    verdict: str = NOT_RUN
    setup: str = "defaults"


def mean_of(runs: list[Run], key: str) -> float | None:
    values = [r.metrics[key] for r in runs if key in r.metrics]
    return statistics.mean(values) if values else None


def spread_of(runs: list[Run], key: str) -> str:
    return mean_spread([r.metrics[key] for r in runs if key in r.metrics])


def claim_evidence(claim: Claim, runs: list[Run]) -> list[Evidence]:
    """The claim's comparisons among ``runs``, each judged, in a fixed order. Runs of one
    experiment, job, steps and test setup are compared; the DFN runs among them are averaged
    only where their configurations are the same (seeds), so that checkpoints of different
    trainings that one command line evaluated apart stay apart."""
    groups: dict[tuple, tuple[dict[tuple, list[Run]], list[Run]]] = {}
    for run in runs:
        experiment = run.experiment.removesuffix("_baseline")
        is_dfn = experiment == run.experiment
        if experiment not in claim.experiments or (claim.bounds and not is_dfn):
            continue
        key = (experiment, run.job, run.metrics.get("steps"), run.setup)
        dfn, baseline = groups.setdefault(key, ({}, []))
        if is_dfn:
            dfn.setdefault(run.configuration, []).append(run)
        else:
            baseline.append(run)
    comparisons = [
        Evidence(*key[:3], dfn=runs, baseline=baseline)
        for key, (dfn, baseline) in groups.items()
        for runs in list(dfn.values()) or [[]]
    ]
    judge = judge_bounds if claim.bounds else judge_pair
    evidence = [item for item in comparisons if judge(claim, item)]
    label_setups(evidence)
    return sorted(evidence, key=lambda e: (e.experiment, e.setup, e.job, e.steps or 0))


def judge_pair(claim: Claim, item: Evidence) -> bool:
    metric = claim.reference.metric
    base = metric.rsplit("/", 1)[-1]
    scored = item.dfn or item.baseline  # the trivial predictors score the same test set
    trivial = [
        f"{label} {spread_of(scored, f'test/{predictor}/{base}')}"
        for predictor, label in REFERENCE_PREDICTORS.items()
        if mean_of(scored, f"test/{predictor}/{base}") is not None
    ]
    item.measured = f"DFN {spread_of(item.dfn, metric)}"
    item.against = "; ".join([f"baseline {spread_of(item.baseline, metric)}", *trivial])
    dfn, baseline = mean_of(item.dfn, metric), mean_of(item.baseline, metric)
    if dfn is None or baseline is None:
        item.verdict = NOT_RUN
    else:
        item.verdict = SHOWN if dfn < baseline else NOT_SHOWN
    return True


def judge_bounds(claim: Claim, item: Evidence) -> bool:
    """Judge a DFN comparison by the claim's bounds; False when its runs lack their metrics
    (stereo on data without ground-truth disparity), so that it is no evidence."""

    def mean(key: str) -> float | None:
        return mean_of(item.dfn, key)

    measured, against, holds = [], [], []
    for bound in claim.bounds:
        value, limit = mean(bound.metric), bound.limit(mean)
        if value is None or limit is None:
            return False
        measured.append(f"`{bound.metric}` {spread_of(item.dfn, bound.metric)}")
        trivial = ", ".join(number(mean(k)) for k in bound.against)
        against.append(
            f"{bound.op} {number(limit)}"
            + (f" = {bound.factor:g} x min({trivial})" if trivial else "")
        )
        holds.append(bound.holds(value, limit))
    item.measured, item.against = "; ".join(measured), "; ".join(against)
    item.verdict = SHOWN if all(holds) else NOT_SHOWN
    return True


def claim_verdict(evidence: list[Evidence]) -> str:
    """Shown when every decided comparison shows it, not shown when none does."""
    decided = [e.verdict for e in evidence if e.verdict != NOT_RUN]
    shown = decided.count(SHOWN)
    if not decided:
        return NOT_RUN
    if shown in (0, len(decided)):
        return decided[0]
    return f"shown in {shown} of {len(decided)} comparisons"


def evidence_steps(claim: Claim, item: Evidence) -> str:
    if item.steps is None:
        return "—"
    schedule = claim.reference.iterations
    return f"{item.steps:,}" + (f" (short; paper {schedule:,})" if item.steps < schedule else "")


def label_setups(evidence: list[Evidence]) -> None:
    """Name each comparison's test setup: the overrides that set it, as the DFN's (or the
    baseline's) command gave them, and the composed settings left unsaid that tell it apart from
    the other comparisons of its experiment on the same data module, such as a default that has
    changed since the run was made."""
    ignored = tuple(f"data.{key}=" for key in NOT_SETUP)
    modules: dict[tuple, list[tuple[Evidence, list[str], dict[str, str]]]] = {}
    for item in evidence:
        run = (item.dfn or item.baseline)[0]
        said = [
            o
            for o in run.configuration
            if o.lstrip("+~").startswith(("data.", "data=", "trainer.prec"))
            and not o.lstrip("+~").startswith(ignored)
        ]
        setup = dict(entry.split("=", 1) for entry in run.setup)
        modules.setdefault((item.experiment, setup.get("data._target_")), []).append(
            (item, said, setup)
        )
    for items in modules.values():
        keys = sorted({key for _, _, setup in items for key in setup})
        varying = [key for key in keys if len({setup.get(key) for _, _, setup in items}) > 1]
        for item, said, setup in items:
            named = {o.lstrip("+~").split("=", 1)[0] for o in said}
            said = said + [f"{k}={setup[k]}" for k in varying if k in setup and k not in named]
            item.setup = f"`{' '.join(said)}`" if said else "defaults"


CLAIM_RULES = (
    "Each claim of the paper, the runs given to this report that test it, and a verdict computed "
    "from their `metrics.json` files by the rule beside it (`CLAIMS` in `scripts/report.py`). "
    "*The DFN beats its baseline*: the runs of an experiment and of its `_baseline` are compared "
    "only when they are of the same job (a training run tests its best-validation checkpoint, an "
    "`eval.py` run the checkpoint it was given), stopped at the same step, and share the test "
    "setup: every `data.*` setting (files, test set, sampling; not the loader's workers, the "
    "epoch length, the cache folder or the seed), the window and the precision, as the run's "
    "`.hydra/config.yaml` composed them. Runs of one comparison that differ only in their seed "
    "are averaged. A "
    "comparison is *shown* when the DFN's mean error is lower than the baseline's, *not shown* "
    "when it is not, and *not yet run* when one side is missing. A threshold claim is judged on "
    "each DFN comparison that has its metrics. A claim is *shown* when all its decided "
    "comparisons show it, *not shown* when none does, and *not yet run* when none is decided. "
    "Steps marked *short* are fewer than the paper's schedule: such a verdict is about the "
    "short run, not the paper's."
)


def claims_section(runs: list[Run]) -> list[str]:
    """Each claim of ``CLAIMS`` with its verdict, then the comparisons behind each."""
    lines = [
        "## Claims",
        "",
        CLAIM_RULES,
        "",
        "| Claim | Paper | Rule | Verdict |",
        "|---|---|---|---|",
    ]
    details = []
    for claim in CLAIMS:
        evidence = claim_evidence(claim, runs)
        lines.append(
            f"| {claim.text} | {claim.source}: {claim.paper} | {claim.rule} "
            f"| **{claim_verdict(evidence)}** |"
        )
        details += [
            "",
            f"### {claim.text}",
            "",
            "| Experiment | Job | Test setup | Steps | Measured | Against | Paper | Verdict "
            "| Runs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        if not evidence:
            names = ", ".join(claim.experiments)
            details.append(f"| {names} | — | — | — | — | — | {claim.paper} | {NOT_RUN} | none |")
        for item in evidence:
            folders = "<br>".join(f"`{relative(r.path)}`" for r in item.dfn + item.baseline)
            details.append(
                f"| {item.experiment} | {item.job} | {item.setup} "
                f"| {evidence_steps(claim, item)} | {item.measured} | {item.against} "
                f"| {claim.paper} | {item.verdict} | {folders} |"
            )
    return [*lines, *details, ""]


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
        try:
            images = task_images(run.config, run.checkpoint)
        except Exception as e:
            # A kept run (docs/runs/) whose data is elsewhere, or whose config or checkpoint
            # predates this code: its numbers stand, only its figures are left out.
            error = " ".join(str(e).split())  # one line
            print(f"report: no sample figures for {row.label}: {error}", file=sys.stderr)
            continue
        paths = written.setdefault(row.label, [])
        for tag, image in images.items():
            path = figures / f"{row.label}_{tag.rsplit('/', 1)[-1]}.png"
            save_image(image.float() / 255 if image.dtype == torch.uint8 else image, path)
            paths.append(path)
    return written


def write_report(run_dirs: list[Path], out: Path, command: str, claims_only: bool = False) -> Path:
    runs = find_runs(run_dirs)
    rows = group_runs(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    devices = sorted({r.metrics.get("device", "unknown") for r in runs})
    short = any("short" in steps_cell(row) for row in rows)
    lines = [
        "# Claims" if claims_only else "# Results",
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
    lines += ["", *claims_section(runs)]
    if claims_only:
        out.write_text("\n".join(lines))
        return out
    figures = out.parent / "figures"
    figures.mkdir(exist_ok=True)
    horizons = horizon_figures(furthest(rows), figures)
    samples = sample_figures(furthest(rows), figures)

    def link(path: Path) -> str:
        return f"![{path.stem}]({path.relative_to(out.parent)})"

    lines += [
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
    parser.add_argument(
        "--claims-only",
        action="store_true",
        help="write only the claims and their evidence: no Table 1, no figures, no checkpoints",
    )
    args = parser.parse_args(argv)
    with reporting_user_errors():
        command = shlex.join(["python", "scripts/report.py", *(argv or sys.argv[1:])])
        path = write_report(args.run_dirs, args.out, command, args.claims_only)
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    main()
