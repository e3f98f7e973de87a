"""eval.py and the report (dfn/report/, scripts/report.py) on real smoke runs: eval reproduces
the training run's test metrics, the report has every Table 1 row and shows the figures the runs
drew; and the claims' verdicts on run folders made for them."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from dfn.errors import InputError
from dfn.report.paper import PAPER_RESULTS
from dfn.report.results import write_report
from dfn.report.runs import Run, find_runs, mean_spread, number
from dfn.run.checkpoints import read_checkpoint
from dfn.run.experiment import evaluate
from dfn.run.folder import RunFolder
from scripts.error_by_region import region_errors
from tests.conftest import ROOT, run_script, smoke_overrides

# Moving MNIST with 2 input and 2 predicted frames: per-horizon metrics at a tenth of the cost.
SHORT_VIDEO = ["model.num_input=2", "model.num_predicted=2"]
RUNS = {
    "stereo": ["experiment=stereo", *smoke_overrides("stereo")],
    "moving_mnist": ["experiment=moving_mnist", *smoke_overrides("moving_mnist"), *SHORT_VIDEO],
}


def report(run_dirs: list[Path], out: Path, claims_only: bool = False) -> str:
    """The report of ``run_dirs``, as scripts/report.py writes it."""
    return write_report(run_dirs, out, "python scripts/report.py ...", claims_only).read_text()


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
    checkpoint = RunFolder(smoke_runs[name]).resolve(trained["best_checkpoint"])
    cfg = compose_cfg([*RUNS[name], f"ckpt_path={checkpoint}"], config_name="eval")
    metrics = evaluate(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == metrics
    assert RunFolder(tmp_path / "run").resolve(written["checkpoint"]) == checkpoint
    assert written["steps"] == read_checkpoint(checkpoint)["global_step"]
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
    # where the evaluated run is, relative to the evaluation's folder
    evaluation = RunFolder(metrics_path.parent)
    assert evaluation.resolve(metrics["run"]) == run
    assert evaluation.resolve(metrics["checkpoint"]) == run / "checkpoints" / "last.ckpt"
    assert not Path(metrics["checkpoint"]).is_absolute()
    assert metrics["steps"] == 4
    assert metrics["test/copy_left/mse"] == 0.0
    assert metrics["test/mse"] > 0.0
    assert f"Run folder: {metrics_path.parent}" in result.stdout
    config = OmegaConf.load(metrics_path.parent / ".hydra" / "config.yaml")
    assert config.data.test_path == str(test_file) and config.trainer.max_steps == 4  # debug=smoke
    # its record holds the command as it was typed, which the report shows
    (kept,) = find_runs([metrics_path.parent])
    typed = [f"run={run}", f"data.test_path={test_file}", f"paths.log_dir={tmp_path}"]
    assert kept.command == shlex.join(["python", "eval.py", *typed])


def test_report_has_every_table_1_row_and_the_figures_its_runs_drew(smoke_runs, tmp_path):
    out = tmp_path / "R.md"
    result = run_script("scripts/report.py", *map(str, smoke_runs.values()), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"Report: {out}\n"
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
        assert f"**{number(metrics[metric])}**" in row
        assert f"| {PAPER_RESULTS[name].paper} | {PAPER_RESULTS[name].authors_rerun} |" in row
        assert "(short; paper 20,000)" in row
    assert "copy last frame" in text and "copy left view" in text
    figures = {Path(m) for m in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)}
    drawn = {  # the figures the runs' tests drew, copied under their row's label
        f"{label}_{name}.png": smoke_runs[run] / f"{name}.png"
        for label, run, names in (
            ("00_moving_mnist", "moving_mnist", ("ground_truth_vs_prediction", "filter_flow")),
            ("01_stereo", "stereo", ("left_right_prediction", "disparity_vs_ground_truth")),
        )
        for name in names
    }
    assert {p.name for p in figures} == {"horizon_moving_mnist.png", *drawn}
    for name, source in drawn.items():
        assert (tmp_path / "figures" / name).read_bytes() == source.read_bytes()
    with Image.open(tmp_path / "figures" / "horizon_moving_mnist.png") as image:
        assert image.mode == "RGB" and min(image.size) > 32


def test_the_report_builds_no_model(smoke_runs, tmp_path):
    """A kept run folder (docs/runs/): no checkpoint, and a config this checkout could not
    build (data kept on another machine, an option older than the code). The report reads its
    records and the figures its test drew, and builds nothing."""
    moved = tmp_path / "stereo_run"
    shutil.copytree(smoke_runs["stereo"], moved, ignore=shutil.ignore_patterns("checkpoints"))
    config = OmegaConf.load(moved / ".hydra" / "config.yaml")
    OmegaConf.update(config, "data.path", str(tmp_path / "elsewhere"))
    OmegaConf.update(config, "model.predictor.renamed_option", 1, force_add=True)
    OmegaConf.save(config, moved / ".hydra" / "config.yaml")
    text = report([moved], tmp_path / "R.md")
    assert "| 00_stereo |" in text
    assert "![00_stereo_left_right_prediction](figures/00_stereo_left_right_prediction.png)" in text


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

    # an 8x8 map of ones, 2-pixel edges: 2 x 2 x 8 in the columns, 2 x 2 x 4 in the rows
    sums = region_errors(torch.ones(8, 8), border=2)
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
    # the predictors that do not depend on the checkpoint score as in the run's own test
    assert count == 4 and copy_left == pytest.approx(metrics["test/copy_left/mse"], rel=1e-3)
    assert zero == pytest.approx(metrics["test/zero_disparity/disparity_epe"], abs=1e-3)
    assert mean == pytest.approx(metrics["test/mean_disparity/disparity_epe"], abs=1e-3)
    assert epe > 0 and -1 <= correlation <= 1  # the model's: its last checkpoint's
    assert rows["validation (training band)"][0] == 6  # the fixed crops of the training band


# --------------------------------------------------------------------------- claims

CLIP = ["data.path=outputs/data/clip", "data.batch_size=8"]
DISPARITY = {"test/zero_disparity/disparity_epe": 2.8, "test/mean_disparity/disparity_epe": 2.6}


def fake_run(
    root: Path,
    name: str,
    experiment: str,
    overrides: list[str],
    label: str = "",
    defaults: tuple[str, ...] = (),
    **metrics,
) -> Path:
    """A run folder as train.py leaves it, without checkpoints: ``.hydra/`` with the config
    composed from the real files, and metrics.json. ``label``: the run's ``name=``, which
    metrics.json records as its experiment; ``defaults``: overrides composed into the config
    but not on its command, as if the config files' defaults had been those then."""
    overrides = [*overrides, f"name={label}"] if label else overrides
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides, *defaults])
    GlobalHydra.instance().clear()
    hydra_dir = root / name / ".hydra"
    hydra_dir.mkdir(parents=True)
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    command = OmegaConf.create([f"experiment={experiment}", *overrides])
    OmegaConf.save(command, hydra_dir / "overrides.yaml")
    metrics = {"experiment": label or experiment, "parameters": 1, "device": "CPU test", **metrics}
    (root / name / "metrics.json").write_text(json.dumps(metrics))
    return root / name


def mse(value: float, copy_last: float = 15.0, predictor: str = "copy_last") -> dict:
    return {"test/mse": value, f"test/{predictor}/mse": copy_last}


@pytest.fixture(scope="module")
def claim_runs(tmp_path_factory) -> Path:
    """Run folders that give every verdict, all under one folder."""
    root = tmp_path_factory.mktemp("claims")
    fake_run(root, "hw", "highway", [], steps=900, **mse(2.0))
    fake_run(root, "hw_base", "highway_baseline", [], steps=900, **mse(1.3))
    # the real clip is its own pair (data.path); two seeds of the DFN are averaged; the
    # baseline's loader workers and learning rate are no part of the test setup
    fake_run(root, "clip_s1", "highway", [*CLIP, "seed=1"], steps=1500, **mse(5.0, 9.5))
    fake_run(root, "clip_s2", "highway", [*CLIP, "seed=2"], steps=1500, **mse(5.5, 9.5))
    lr = [*CLIP, "data.num_workers=0", "model.optimizer.lr=1e-4"]
    fake_run(root, "clip_base", "highway_baseline", lr, steps=1500, **mse(6.0, 9.5))
    # comparable with nothing: other steps, other precision
    fake_run(root, "clip_base_700", "highway_baseline", CLIP, steps=700, **mse(7.0, 9.5))
    bf16 = [*CLIP, "trainer.precision=bf16-mixed"]
    fake_run(root, "clip_bf16", "highway", bf16, steps=1500, **mse(4.0, 9.5))
    # Moving MNIST on two test sets: no comparison
    fake_run(root, "mm", "moving_mnist", ["data.test_size=100"], steps=400, **{"test/bce": 600.0})
    fake_run(root, "mm_base", "moving_mnist_baseline", [], steps=400, **{"test/bce": 620.0})
    stereo = {**mse(93.6, 125.7, "copy_left"), "test/disparity_epe": 2.7, **DISPARITY}
    fake_run(root, "st", "stereo", [], steps=1500, **stereo)
    scenes = {**mse(3.0, 9.0, "copy_left"), "test/disparity_epe": 1.4, **DISPARITY}
    # runs labelled with name= are judged by the experiment they composed
    ground = ["data.layout=ground"]
    fake_run(root, "sc", "stereo_scenes", ground, "dfn_600", steps=600, **scenes)
    # made when the layout's default was another: its label names the layout it composed
    old = {**scenes, "test/disparity_epe": 2.0}
    fake_run(
        root, "sc_old", "stereo_scenes", [], defaults=("data.layout=layers",), steps=600, **old
    )
    fake_run(
        root,
        "sc_base",
        "stereo_scenes_baseline",
        ["data.layout=ground"],
        "baseline_600",
        steps=600,
        **mse(3.5, 9.0, "copy_left"),
    )
    steerable = {"test/mse": 1e-4, "test/filter_cosine": 0.999, "test/relative_mse": 0.003}
    fake_run(root, "steer", "steerable", [], steps=5000, **steerable)
    return root


def claims_report(claim_runs: Path, out: Path) -> str:
    """The text of the report's claims section on ``claim_runs``."""
    return report([claim_runs], out, claims_only=True)


def evidence(text: str, claim: str) -> dict[str, list[str]]:
    """A claim's evidence table: its run folders (the last cell) -> the other cells."""
    section = text.split(f"### {claim}\n")[1].split("\n#")[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()]
    return {row[-1]: row[:-1] for row in rows[3:] if row}  # after the header and its rule


def folders(root: Path, *names: str) -> str:
    return "<br>".join(f"`{root / name}`" for name in names)


def test_claims_give_each_verdict_by_the_stated_rules(claim_runs, tmp_path):
    text = claims_report(claim_runs, tmp_path / "C.md")
    assert "## Table 1" not in text and not (tmp_path / "figures").exists()
    summary = table_rows(text.split("\n### ")[0])
    assert {claim: cells[-1] for claim, cells in summary.items() if claim != "Claim"} == {
        "The DFN beats its baseline on Moving MNIST": "**not yet run**",
        "The DFN beats its baseline on highway driving": "**shown in 1 of 2 comparisons**",
        "The DFN beats its baseline on stereo prediction": "**shown**",
        "The stereo filters carry the disparity": "**not shown**",
        "The filter-generating network learns steerable filters": "**shown**",
    }
    rule = summary["The stereo filters carry the disparity"][1]
    assert rule.startswith("`test/disparity_epe` <= 0.5 x min(")

    highway = evidence(text, "The DFN beats its baseline on highway driving")
    assert len(highway) == 4
    simulated = highway[folders(claim_runs, "hw", "hw_base")]
    # the composed settings that tell the simulator's run apart from the clip's
    assert simulated[:2] == ["highway", "train"] and "data.path=None" in simulated[2]
    assert simulated[3] == "900 (short; paper 20,000)"
    assert simulated[-1] == "not shown"
    clip = highway[folders(claim_runs, "clip_s1", "clip_s2", "clip_base")]
    assert clip[2] == f"`{' '.join(sorted(CLIP))} trainer.precision=auto`"
    assert clip[-1] == "shown"
    for alone in ("clip_bf16", "clip_base_700"):  # other precision, other steps: no pair
        assert highway[folders(claim_runs, alone)][-1] == "not yet run"
    mnist = evidence(text, "The DFN beats its baseline on Moving MNIST")
    assert [row[-1] for row in mnist.values()] == ["not yet run", "not yet run"]
    stereo = evidence(text, "The DFN beats its baseline on stereo prediction")
    assert stereo[folders(claim_runs, "st")][-1] == "not yet run"
    assert stereo[folders(claim_runs, "sc", "sc_base")][-1] == "shown"
    assert stereo[folders(claim_runs, "sc", "sc_base")][2] == "`data.layout=ground`"
    assert stereo[folders(claim_runs, "sc_old")][2::5] == ["`data.layout=layers`", "not yet run"]
    disparity = evidence(text, "The stereo filters carry the disparity")
    assert [row[-1] for row in disparity.values()] == ["not shown"] * 3


def test_claims_quote_the_numbers_of_the_files(claim_runs, tmp_path):
    text = claims_report(claim_runs, tmp_path / "C.md")

    def value(name: str, key: str) -> float:
        return json.loads((claim_runs / name / "metrics.json").read_text())[key]

    highway = evidence(text, "The DFN beats its baseline on highway driving")
    clip = highway[folders(claim_runs, "clip_s1", "clip_s2", "clip_base")]
    seeds = ("clip_s1", "clip_s2")
    assert clip[4] == f"DFN {mean_spread([value(n, 'test/mse') for n in seeds])}"
    copy_last = mean_spread([value(n, "test/copy_last/mse") for n in seeds])
    baseline = number(value("clip_base", "test/mse"))
    assert clip[5] == f"baseline {baseline}; copy last frame {copy_last}"
    paper, base = PAPER_RESULTS["highway"], PAPER_RESULTS["highway_baseline"]
    assert clip[6] == (
        f"DFN {paper.paper} vs baseline {base.paper} "
        f"(authors' re-run {paper.authors_rerun} vs {base.authors_rerun})"
    )
    scenes = evidence(text, "The stereo filters carry the disparity")[folders(claim_runs, "sc")]
    trivial = [value("sc", k) for k in DISPARITY]
    assert scenes[4] == f"`test/disparity_epe` {number(value('sc', 'test/disparity_epe'))}"
    limit, each = number(0.5 * min(trivial)), ", ".join(map(number, trivial))
    assert scenes[5] == f"<= {limit} = 0.5 x min({each})"
    claim = "The filter-generating network learns steerable filters"
    steerable = evidence(text, claim)[folders(claim_runs, "steer")]
    assert steerable[4] == (
        f"`test/filter_cosine` {number(value('steer', 'test/filter_cosine'))}; "
        f"`test/relative_mse` {number(value('steer', 'test/relative_mse'))}"
    )
    assert steerable[5] == ">= 0.99; <= 0.01"


def test_full_report_on_run_folders_without_checkpoints(claim_runs, tmp_path):
    """As on docs/runs/: metrics.json and .hydra/ only. The figures that need a checkpoint are
    left out; the claims come before Table 1."""
    text = report([claim_runs], tmp_path / "R.md")
    assert text.index("## Claims") < text.index("## Table 1") < text.index("## Runs")
    assert not list((tmp_path / "figures").glob("*.png"))
    command = "python train.py experiment=highway data.path=outputs/data/clip data.batch_size=8"
    assert f"`{command} seed=1`" in text


def test_evaluations_of_different_trainings_are_not_averaged(tmp_path):
    """Two checkpoints evaluated on the same test set, told apart only by their command lines
    (here their name= labels), are two comparisons, not one mean of two seeds."""
    scores = {**mse(3.0, 9.0, "copy_left"), **DISPARITY}
    for label, epe in (("from_a", 1.0), ("from_b", 2.0)):
        metrics = {**scores, "test/disparity_epe": epe, "checkpoint": f"{label}.ckpt"}
        fake_run(tmp_path / "runs", label, "stereo_scenes", [], label, steps=600, **metrics)
    text = claims_report(tmp_path / "runs", tmp_path / "C.md")
    rows = evidence(text, "The stereo filters carry the disparity")
    assert sorted(cells[-1] for cells in rows.values()) == ["not shown", "shown"]
    assert all("n=2" not in cells[4] for cells in rows.values())


def test_table_1_averages_seeds_at_one_step_and_keeps_each_step_apart(tmp_path):
    """Checkpoints of one learning curve are rows of their own; seeds at one step are averaged."""
    for name, seed, steps, bce in (("a", 1, 400, 600), ("b", 2, 400, 610), ("c", 1, 800, 550)):
        metrics = {"test/bce": float(bce)}
        fake_run(tmp_path / "runs", name, "moving_mnist", [f"seed={seed}"], steps=steps, **metrics)
    text = report([tmp_path / "runs"], tmp_path / "R.md")
    table = table_rows(text.split("## Table 1")[1].split("## Runs")[0])
    ours = {cells[3]: cells[5] for label, cells in table.items() if label.endswith("_moving_mnist")}
    assert ours == {
        "400 (short; paper 20,000)": "**605 ± 7.071 (n=2)**",
        "800 (short; paper 20,000)": "**550**",
    }


def test_a_setting_that_an_old_record_lacks_is_unknown(tmp_path):
    """A run made before ``data.layout`` existed has no such key in its config: beside runs
    that differ in it, its test setup says the layout is unknown, not today's default."""
    scenes = {**mse(3.0, 9.0, "copy_left"), **DISPARITY, "test/disparity_epe": 1.0}
    fake_run(tmp_path / "runs", "new", "stereo_scenes", ["data.layout=layers"], steps=6, **scenes)
    old = fake_run(tmp_path / "runs", "old", "stereo_scenes", [], steps=6, **scenes)
    config = OmegaConf.load(old / ".hydra" / "config.yaml")
    del config.data["layout"]
    OmegaConf.save(config, old / ".hydra" / "config.yaml")
    rows = evidence(
        claims_report(tmp_path / "runs", tmp_path / "C.md"),
        "The stereo filters carry the disparity",
    )
    assert rows[folders(tmp_path / "runs", "old")][2] == "`data.layout=unknown`"
    assert rows[folders(tmp_path / "runs", "new")][2] == "`data.layout=layers`"


def test_the_setup_takes_the_precision_auto_became(tmp_path):
    """Two runs of trainer.precision=auto on machines that resolved it differently are not
    compared; two that resolved it alike are."""
    runs = [
        fake_run(tmp_path, name, "highway", [], steps=900, precision=precision, **mse(2.0))
        for name, precision in (("xeon", "bf16-mixed"), ("epyc", "32-true"), ("epyc2", "32-true"))
    ]
    xeon, epyc, epyc2 = (Run(RunFolder(path)) for path in runs)
    assert xeon.config.trainer.precision == "auto"
    assert xeon.setup["trainer.precision"] == "bf16-mixed"
    assert epyc.setup != xeon.setup and epyc.setup == epyc2.setup
