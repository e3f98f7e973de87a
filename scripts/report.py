"""Collect metrics.json from training, eval and sweep runs into a Markdown report in the shape of
the paper's Table 1, with the paper's claims judged first, and figures:

    python scripts/report.py outputs/runs/2026-..._moving_mnist outputs/multirun/... \
        --out docs/RESULTS.md

A RUN_DIR is a run folder (it holds metrics.json) or any folder above run folders, such as a sweep
folder. Runs that differ only in their seed form one row: mean ± standard deviation over seeds.
Figures go to figures/ beside the report: the metric per predicted frame of the video models, and
for one run of each row the figures its test drew (sample predictions, filters). The report is
``dfn/report/``; this is its command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dfn.report.results import write_report
from dfn.run.cli import reporting_user_errors


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
        help="write only the claims and their evidence: no Table 1, no figures",
    )
    args = parser.parse_args(argv)
    with reporting_user_errors():
        command = shlex.join(["python", "scripts/report.py", *(argv or sys.argv[1:])])
        path = write_report(args.run_dirs, args.out, command, args.claims_only)
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    main()
