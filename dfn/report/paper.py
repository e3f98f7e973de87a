"""What the paper reports and claims: its numbers, copied from ../shared/REFERENCE_SETUP.md (paper
Table 1 and sections 4.1-4.3, and the authors' re-run in their repository's README), and the rule
that decides each of its claims from the metrics of runs.

The unit is the loss summed over the 64x64 pixels of one frame, averaged over the predicted frames
and the test sequences: ``test/bce`` and ``test/mse`` in metrics.json. The parameter counts are
stated here only: the tests check the configs against them, the report quotes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperResult:
    """One row of the paper's results for an experiment (a config in configs/experiment/)."""

    model: str  # "DFN" or "baseline", as the paper names it
    metric: str  # the metrics.json key in the paper's unit
    metric_label: str
    parameters: int  # the authors' parameter count
    iterations: int  # the authors' training schedule
    paper: float | None = None
    authors_rerun: float | None = None


BCE = ("test/bce", "BCE per frame")
SQUARED_ERROR = ("test/mse", "squared error per frame")

# The paper's Table 1 order; steerable filters (section 4.1) have no number in the paper.
PAPER_RESULTS: dict[str, PaperResult] = {
    "moving_mnist_baseline": PaperResult("baseline", *BCE, 637_443, 20_000, 432.5, 434.8),
    "moving_mnist": PaperResult("DFN", *BCE, 637_361, 20_000, 285.2, 282.3),
    "highway_baseline": PaperResult("baseline", *SQUARED_ERROR, 368_245, 20_000, 15.97, 15.08),
    "highway": PaperResult("DFN", *SQUARED_ERROR, 368_122, 20_000, 13.54, 13.39),
    "stereo_baseline": PaperResult("baseline", *SQUARED_ERROR, 464_509, 20_000, 1.68, 1.70),
    "stereo": PaperResult("DFN", *SQUARED_ERROR, 464_494, 20_000, 0.52, 1.35),
    "steerable": PaperResult("DFN", "test/mse", "MSE per pixel", 18_897, 5_000),
}

# Other Moving MNIST results in the same unit (BCE in nats per frame), from the paper's Table 1.
OTHER_MOVING_MNIST: dict[str, float] = {
    "FC-LSTM": 341.2,
    "Conv-LSTM": 367.1,
    "Spatio-temporal video autoencoder": 179.8,
    "Video Pixel Networks": 87.6,
}


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
    ``_baseline`` that share job, steps and test setup are one comparison, shown when the DFN's
    mean is lower than the baseline's.
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
