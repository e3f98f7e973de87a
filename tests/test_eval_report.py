"""eval.py and scripts/report.py on real smoke runs: eval reproduces the training run's test
metrics, the report has every Table 1 row and writes its figures."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision.io import decode_png, read_file

from dfn.errors import InputError
from dfn.reference_results import PAPER_RESULTS
from dfn.run.experiment import evaluate
from tests.conftest import ROOT, smoke_overrides

# Moving MNIST with 2 input and 2 predicted frames: per-horizon metrics at a tenth of the cost.
SHORT_VIDEO = ["model.num_input=2", "model.num_predicted=2"]
RUNS = {
    "stereo": ["experiment=stereo", *smoke_overrides("stereo")],
    "moving_mnist": ["experiment=moving_mnist", *smoke_overrides("moving_mnist"), *SHORT_VIDEO],
}


def run_script(script: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def load_script(name: str = "report"):
    """scripts/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> dict[str, list[str]]:
    """A Markdown table's body rows printed by a script: first cell -> the other cells."""
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()]
    return {r[0]: r[1:] for r in rows if r and not r[0].startswith("---")}


def scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """One train.py smoke run per entry of RUNS, run once for this module: name -> run folder."""
    tmp = tmp_path_factory.mktemp("runs")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    jobs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *overrides,
                f"hydra.run.dir={tmp / name}",
                f"paths.log_dir={tmp}",
                f"paths.data_dir={data_dir}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, overrides in RUNS.items()
    }
    for name, job in jobs.items():
        _, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, f"{name}: {stderr[-3000:]}"
    return {name: tmp / name for name in RUNS}


@pytest.mark.parametrize("name", list(RUNS))
def test_eval_reproduces_the_training_runs_test_metrics(smoke_runs, compose_cfg, tmp_path, name):
    trained = json.loads((smoke_runs[name] / "metrics.json").read_text())
    checkpoint = trained["best_checkpoint"]
    cfg = compose_cfg([*RUNS[name], f"ckpt_path={checkpoint}"], config_name="eval")
    metrics = evaluate(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == pytest.approx(metrics)
    assert written["checkpoint"] == str(Path(checkpoint).resolve())
    assert written["steps"] == torch.load(checkpoint, weights_only=True)["global_step"]
    assert written["parameters"] == trained["parameters"]
    assert scores(written) == pytest.approx(scores(trained), rel=1e-5)
    if name == "moving_mnist":  # per-horizon metrics for each predicted frame
        assert {"test/bce_t1", "test/bce_t2", "test/copy_last/bce_t2"} <= written.keys()


def test_eval_refuses_a_missing_checkpoint(compose_cfg, tmp_path):
    missing = tmp_path / "none.ckpt"
    cfg = compose_cfg(["experiment=stereo", f"ckpt_path={missing}"], config_name="eval")
    with pytest.raises(InputError, match=f"cannot load {missing}: no such file"):
        evaluate(cfg)
    with pytest.raises(InputError, match=r"give the checkpoint to evaluate: run=<run folder>"):
        evaluate(compose_cfg(["experiment=stereo"], config_name="eval"))


def test_eval_by_run_folder_with_another_test_set(smoke_runs, tmp_path):
    """eval.py run=<run folder>: the run's own config and last checkpoint, with no experiment or
    training overrides repeated; data.test_path=... on top reaches the data (a test file whose
    right view IS the left view)."""
    frames = np.random.default_rng(0).random((3, 64, 80), dtype=np.float32)
    test_file = tmp_path / "test.h5"
    with h5py.File(test_file, "w") as f:
        f["highway_L"], f["highway_R"] = frames, frames
    run = smoke_runs["stereo"].resolve()
    result = run_script(
        "eval.py", f"run={run}", f"data.test_path={test_file}", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_path,) = (tmp_path / "eval").glob("*_stereo/metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["run"] == str(run)
    assert metrics["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert metrics["steps"] == 4
    assert metrics["test/copy_left/mse"] == 0.0
    assert metrics["test/mse"] > 0.0
    assert f"Run folder: {metrics_path.parent}" in result.stdout
    config = OmegaConf.load(metrics_path.parent / ".hydra" / "config.yaml")
    assert config.data.test_path == str(test_file) and config.trainer.max_steps == 4  # debug=smoke


def test_report_has_every_table_1_row_and_its_figures(smoke_runs, tmp_path):
    report = load_script()
    out = report.main([str(p) for p in smoke_runs.values()] + ["--out", str(tmp_path / "R.md")])
    text = out.read_text()
    section = text.split("## Table 1")[1].split("## Runs")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")][1:]
    # every experiment of the paper: those not run, and the two runs numbered as their figures
    not_run = {line.split("|")[1].strip() for line in table if "| not run |" in line}
    assert not_run == set(PAPER_RESULTS) - {"moving_mnist", "stereo"}
    run = [line.split("|")[1].strip() for line in table if "| not run |" not in line]
    assert run == ["00_moving_mnist", "01_stereo"]
    for name, label in (("moving_mnist", "00_moving_mnist"), ("stereo", "01_stereo")):
        metrics = json.loads((smoke_runs[name] / "metrics.json").read_text())
        row = next(line for line in table if line.startswith(f"| {label} "))
        metric = PAPER_RESULTS[name].metric
        assert f"**{report.number(metrics[metric])}**" in row
        assert f"| {PAPER_RESULTS[name].paper} | {PAPER_RESULTS[name].authors_rerun} |" in row
        assert "(short; paper 20,000)" in row
    assert "copy last frame" in text and "copy left view" in text
    figures = {Path(m) for m in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)}
    assert {p.name for p in figures} >= {
        "horizon_moving_mnist.png",
        "00_moving_mnist_ground_truth_vs_prediction.png",
        "00_moving_mnist_filter_flow.png",
        "01_stereo_left_right_prediction.png",
        "01_stereo_disparity_vs_ground_truth.png",
    }
    for path in figures:
        image = decode_png(read_file(str(tmp_path / path)))
        assert image.shape[0] in (3, 4) and min(image.shape[1:]) > 32


def test_error_by_region_splits_a_runs_test_error(smoke_runs):
    result = run_script("scripts/error_by_region.py", str(smoke_runs["moving_mnist"]))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        name: [float(c) for c in cells[2:]]
        for name, cells in table_rows(result.stdout).items()
        if name.startswith("moving_mnist (")
    }
    metrics = json.loads((smoke_runs["moving_mnist"] / "metrics.json").read_text())
    # the copy-last predictor's total is the run's test/copy_last/mse, whatever the checkpoint
    assert rows["moving_mnist (copy last)"][0] == pytest.approx(
        metrics["test/copy_last/mse"], rel=1e-3
    )
    assert rows["moving_mnist (model)"][3] > 0  # inside: where the digits are

    regions = load_script("error_by_region")
    # an 8x8 map of ones, 2-pixel edges: 2 x 2 x 8 in the columns, 2 x 2 x 4 in the rows
    sums = regions.region_errors(torch.ones(8, 8), border=2)
    assert sums == {"total": 64.0, "edge columns": 32.0, "edge rows": 16.0, "inside": 16.0}


def test_stereo_generalisation_scores_a_runs_two_bands(smoke_runs):
    result = run_script("scripts/stereo_generalisation.py", str(smoke_runs["stereo"]))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        name: [float(c) for c in cells]
        for name, cells in table_rows(result.stdout).items()
        if name in ("validation (training band)", "test band")
    }
    assert len(rows) == 2
    metrics = json.loads((smoke_runs["stereo"] / "metrics.json").read_text())
    count, _, copy_left, epe, zero, mean, correlation = rows["test band"]
    # copying the left view does not depend on the checkpoint: the run's own test number
    assert count == 4 and copy_left == pytest.approx(metrics["test/copy_left/mse"], rel=1e-3)
    assert min(epe, zero, mean) > 0 and -1 <= correlation <= 1
    assert rows["validation (training band)"][0] == 6  # the fixed crops of the training band
