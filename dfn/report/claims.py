"""The paper's claims judged on runs: each claim's comparisons, their verdicts, and the section of
the report that shows them. The claims and their rules are in ``dfn/report/paper.py``."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from dfn.report.paper import CLAIMS, PAPER_RESULTS, Claim
from dfn.report.runs import NOT_SETUP, Run, mean_spread, number, steps_cell
from dfn.run.folder import typed

SHOWN, NOT_SHOWN, NOT_RUN = "shown", "not shown", "not yet run"
REFERENCE_PREDICTORS = {"copy_last": "copy last frame", "copy_left": "copy left view"}
# A setting that a run's record does not hold (it was made before the setting existed), where
# the runs it is compared with differ in it: its value is not known.
UNKNOWN = "unknown"


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


def paper_numbers(claim: Claim) -> str:
    """The paper's numbers for a claim, DFN vs baseline, or that it gives none."""
    baseline = PAPER_RESULTS.get(f"{claim.paper_experiment}_baseline")
    if claim.bounds or baseline is None:
        return "no number (qualitative)"
    dfn = claim.reference
    return (
        f"DFN {number(dfn.paper)} vs baseline {number(baseline.paper)} "
        f"(authors' re-run {number(dfn.authors_rerun)} vs {number(baseline.authors_rerun)})"
    )


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
        key = (experiment, run.job, run.metrics.get("steps"), tuple(sorted(run.setup.items())))
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


def label_setups(evidence: list[Evidence]) -> None:
    """Name each comparison's test setup: the overrides that set it, as the DFN's (or the
    baseline's) command gave them, and the composed settings left unsaid that tell it apart from
    the other comparisons of its experiment on the same data module, such as a default that has
    changed since the run was made. A setting that a run's record lacks (made before the setting
    existed) is ``unknown``: today's default need not be the one its code had."""
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
        setup = run.setup
        modules.setdefault((item.experiment, setup.get("data._target_")), []).append(
            (item, said, setup)
        )
    for items in modules.values():
        keys = sorted({key for _, _, setup in items for key in setup})
        varying = [key for key in keys if len({setup.get(key) for _, _, setup in items}) > 1]
        for item, said, setup in items:
            named = {o.lstrip("+~").split("=", 1)[0] for o in said}
            said = said + [f"{k}={setup.get(k, UNKNOWN)}" for k in varying if k not in named]
            item.setup = f"`{' '.join(said)}`" if said else "defaults"


CLAIM_RULES = (
    "Each claim of the paper, the runs given to this report that test it, and a verdict computed "
    "from their `metrics.json` files by the rule beside it (`CLAIMS` in `dfn/report/paper.py`). "
    "*The DFN beats its baseline*: the runs of an experiment and of its `_baseline` are compared "
    "only when they are of the same job (a training run tests its best-validation checkpoint, an "
    "`eval.py` run the checkpoint it was given), stopped at the same step, and share the test "
    "setup: every `data.*` setting (files, test set, sampling; not the loader's workers, the "
    "epoch length, the cache folder or the seed), the window and the precision, as the run's "
    "`.hydra/config.yaml` composed them (a setting its record lacks is *unknown*). Runs of one "
    "comparison that differ only in their seed are averaged. A "
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
        paper = paper_numbers(claim)
        lines.append(
            f"| {claim.text} | {claim.source}: {paper} | {claim.rule} "
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
            details.append(f"| {names} | — | — | — | — | — | {paper} | {NOT_RUN} | none |")
        for item in evidence:
            folders = "<br>".join(f"`{typed(r.path)}`" for r in item.dfn + item.baseline)
            details.append(
                f"| {item.experiment} | {item.job} | {item.setup} "
                f"| {steps_cell(item.steps, claim.reference)} | {item.measured} | {item.against} "
                f"| {paper} | {item.verdict} | {folders} |"
            )
    return [*lines, *details, ""]
