"""The runs a report is made of, and its rows: runs of one experiment and configuration at one
step, which differ only in their seed."""

from __future__ import annotations

import shlex
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dfn.errors import InputError
from dfn.report.paper import PAPER_RESULTS, PaperResult
from dfn.run.folder import METRICS, RunFolder

# Overrides that say where a run lives or which seed or checkpoint it took, not what it trains.
NOT_CONFIGURATION = ("seed=", "experiment=", "ckpt_path=", "paths.", "hydra.", "hydra/")
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
    """A finished run as the report reads it: its folder's records."""

    folder: RunFolder

    @property
    def path(self) -> Path:
        return self.folder.path

    @cached_property
    def metrics(self) -> dict:
        return self.folder.metrics

    @cached_property
    def config(self) -> DictConfig | None:
        return self.folder.config

    @cached_property
    def overrides(self) -> list[str]:
        return self.folder.overrides

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
        """The command line that made the run, as it was typed."""
        return shlex.join(["python", f"{self.job}.py", *self.overrides])

    @property
    def configuration(self) -> tuple[str, ...]:
        """The overrides that change what is trained or evaluated; an evaluation's ``run=``
        names the run evaluated (the checkpoint is its step)."""
        kept = [o for o in self.overrides if not o.lstrip("+~").startswith(NOT_CONFIGURATION)]
        named = [f"run={RunFolder.named_by(o[4:])}" if o.startswith("run=") else o for o in kept]
        return tuple(sorted(named))

    @property
    def setup(self) -> dict[str, str]:
        """What its test numbers depend on besides the model, from its composed config: the data
        settings (``data.*``: the files, the test set, the sampling), the window and the
        precision. A run without ``.hydra/`` has none: it compares only with such runs."""
        if self.config is None:
            return {}
        keys = [f"data.{k}" for k in self.config.get("data", {}) if k not in NOT_SETUP]
        setup = {
            key: str(OmegaConf.select(self.config, key, throw_on_resolution_failure=False))
            for key in [*keys, *SETUP_KEYS]
        }
        if "precision" in self.metrics:  # what trainer.precision=auto became on its machine
            setup["trainer.precision"] = str(self.metrics["precision"])
        return setup


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
    """The finished runs in ``paths``: run folders, or folders above them (a sweep's)."""
    runs: dict[Path, Run] = {}  # a run named twice counts once
    for path in paths:
        if not path.is_dir():
            raise InputError(f"{path} is not a folder; give run or sweep folders")
        found = sorted(path.rglob(METRICS))
        if not found:
            raise InputError(f"no {METRICS} under {path}; is it a finished run or sweep folder?")
        for metrics in found:
            runs[metrics.parent.resolve()] = Run(RunFolder(metrics.parent))
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


def furthest(rows: list[Row]) -> list[Row]:
    """Of the rows of one configuration (a learning curve), the one trained furthest."""
    last: dict[tuple, Row] = {}
    for row in rows:  # ordered by step within a configuration
        last[(row.experiment, row.job, row.configuration)] = row
    return [row for row in rows if any(row is kept for kept in last.values())]


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


def steps_cell(steps: int | None, reference: PaperResult | None) -> str:
    """Steps, marked short when fewer than the paper's schedule."""
    if steps is None:
        return "—"
    schedule = reference.iterations if reference else None
    short = f" (short; paper {schedule:,})" if schedule and steps < schedule else ""
    return f"{steps:,}{short}"
