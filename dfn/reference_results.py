"""The numbers to compare with, copied from ../shared/REFERENCE_SETUP.md (paper Table 1 and
sections 4.1-4.3, and the authors' re-run in their repository's README).

The unit is the loss summed over the 64x64 pixels of one frame, averaged over the predicted frames
and the test sequences: ``test/bce`` and ``test/mse`` in metrics.json.
"""

from __future__ import annotations

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
