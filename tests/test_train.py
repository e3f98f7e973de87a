"""The training entry point on the real configs: composition, smoke runs, resuming, bad input."""

import csv
import json
import math
import re
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from dfn.errors import InputError
from dfn.models.predictor import ConvHead, FilterHead
from dfn.report.paper import PAPER_RESULTS
from dfn.run.checkpoints import read_checkpoint
from dfn.run.experiment import fit_and_test
from dfn.run.folder import RunFolder
from dfn.tasks.metrics import METRICS
from tests.conftest import EXPERIMENTS, ROOT, run_script, smoke_overrides

# The authors' parameter counts, stated once (dfn/report/paper.py); the procedural stereo
# experiments build the stereo models.
PARAMETERS = {
    e: PAPER_RESULTS[e.replace("stereo_scenes", "stereo")].parameters for e in EXPERIMENTS
}

VIDEO_METRICS = [
    f"test/{p}{m}{h}" for p in ("", "copy_last/") for m in METRICS for h in ("", "_t1", "_t3")
]
EXPECTED_METRICS = {
    "steerable": ["test/mse", "test/relative_mse", "test/filter_cosine"],
    "moving_mnist": VIDEO_METRICS + ["test/bce_t10"],
    "highway": VIDEO_METRICS,
    "stereo": [f"test/{p}{m}" for p in ("", "copy_left/") for m in METRICS],
}
EXPECTED_METRICS["stereo_scenes"] = EXPECTED_METRICS["stereo"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_the_authors_parameter_count(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.name == experiment
    model = hydra.utils.instantiate(cfg.model)
    assert model.num_parameters == PARAMETERS[experiment]
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.hparams.batch_size == cfg.data.batch_size


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_config_picks_the_head_and_print_shows_the_options(compose_cfg, experiment):
    model = hydra.utils.instantiate(compose_cfg([f"experiment={experiment}"]).model)
    text = str(model)
    if experiment == "steerable":
        assert "DynamicConv(kernel_size=(9, 9), softmax=False)" in text
        return
    filtering = {
        "moving_mnist": "kernel_size=(9, 9), softmax=True, dynamic_bias=False, impl='auto'",
        "highway": "kernel_size=(11, 11), softmax=True, dynamic_bias=True, impl='auto'",
        "stereo": "kernel_size=(1, 13), softmax=True, dynamic_bias=True, impl='auto'",
        "stereo_scenes": "kernel_size=(1, 13), softmax=True, dynamic_bias=True, impl='auto'",
    }[experiment.removesuffix("_baseline")]
    head = model.predictor.head
    if experiment.endswith("_baseline"):
        assert isinstance(head, ConvHead) and head.reach is None
        # the authors clipped only the BCE baseline
        assert f"clip_output={experiment == 'moving_mnist_baseline'}" in text
    else:
        assert isinstance(head, FilterHead)
        assert f"DynamicLocalFilter({filtering})" in text


def test_the_filter_implementation_is_a_config_option(compose_cfg):
    cfg = compose_cfg(["experiment=highway", "model.predictor.filtering.impl=shift"])
    assert "impl='shift'" in str(hydra.utils.instantiate(cfg.model))


# The figures each task's test draws into its run folder, beside metrics.json.
FIGURES = {
    "steerable": {"input_target_output", "filters_learned_vs_analytic"},
    "moving_mnist": {"ground_truth_vs_prediction", "filter_flow", "error_per_frame"},
    "moving_mnist_baseline": {"ground_truth_vs_prediction", "error_per_frame"},
    "stereo": {"left_right_prediction", "disparity_vs_ground_truth"},
    "stereo_baseline": {"left_right_prediction"},
}
FIGURES["highway"], FIGURES["highway_baseline"] = (
    FIGURES["moving_mnist"],
    FIGURES["moving_mnist_baseline"],
)
FIGURES["stereo_scenes"], FIGURES["stereo_scenes_baseline"] = (
    FIGURES["stereo"],
    FIGURES["stereo_baseline"],
)


def check_smoke_run(run: Path, experiment: str, returned: dict) -> dict:
    """What a smoke run must have written: metrics.json as fit_and_test returned it, with every
    test metric of its task, finite, each metric per predicted frame averaging to the metric,
    and the figures of its test beside it. Returns metrics.json."""
    written = json.loads((run / "metrics.json").read_text())
    assert written == returned
    assert written["steps"] == 4 and written["parameters"] == PARAMETERS[experiment]
    for key in EXPECTED_METRICS[experiment.removesuffix("_baseline")]:
        assert math.isfinite(written[key]), key
    for key, value in written.items():  # test/bce is the mean of test/bce_t1 ... _tN
        per_frame = [written[k] for k in sorted(written) if re.fullmatch(f"{key}_t\\d+", k)]
        if per_frame:
            assert value == pytest.approx(sum(per_frame) / len(per_frame), rel=1e-5), key
    assert {p.stem for p in RunFolder(run).figures} == FIGURES[experiment]
    return written


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_run_writes_its_metrics_and_figures(compose_cfg, tmp_path, experiment):
    cfg = compose_cfg([f"experiment={experiment}", *smoke_overrides(experiment)])
    written = check_smoke_run(tmp_path / "run", experiment, fit_and_test(cfg))
    assert written["device"].startswith("CPU")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_a_run_from_a_checkpoint_logs_from_the_checkpoint_step_on(compose_cfg, tmp_path):
    """ckpt_path=<checkpoint> in a new run folder: it trains and logs steps 4 and 5 only, from
    where the checkpoint stopped, and says where it came from."""
    overrides = ["experiment=steerable", *smoke_overrides("steerable"), "logger=csv"]
    fit_and_test(compose_cfg(overrides, run="first"))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 4
    resumed = compose_cfg([*overrides, "trainer.max_steps=6", f"ckpt_path={last}"])
    metrics = fit_and_test(resumed)
    assert metrics["steps"] == 6 and metrics["resumed_from"] == "../first/checkpoints/last.ckpt"
    rows = csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open())
    assert sorted(int(r["step"]) for r in rows if r["train/loss"]) == [4, 5]


def test_a_run_and_its_resume_print_no_noise(tmp_path, data_dir):
    """Nothing the project does not control in a run's output: no advertisement, no FLOPs count
    of 0, no deprecation warning of the libraries' own use of each other, no monitored key
    missing, no checkpoint folder "not empty" after a resume in place."""
    run = tmp_path / "run"
    first = run_script(
        "train.py",
        "experiment=steerable",
        *smoke_overrides("steerable"),
        f"hydra.run.dir={run}",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    resumed = run_script("train.py", f"resume={run}", "trainer.max_steps=6")
    for result in (first, resumed):
        assert result.returncode == 0, result.stderr[-3000:]
        output = result.stdout + result.stderr
        assert "SteerableFilterTask: 18,897 parameters" in output  # what it says of the model
        for noise in NOISE:
            assert noise not in output, noise


# What Lightning 2.6 printed in every run before the project silenced it (dfn/run/experiment.py,
# configs/trainer/default.yaml, configs/callbacks/default.yaml).
NOISE = (
    "litlogger",
    "FLOPs",
    "Flops",
    "LeafSpec",
    "could not find the monitored key",
    "exists and is not empty",
    "Skipping setting a default `ModelSummary`",
)


def test_non_numeric_learning_rate_is_refused(compose_cfg):
    cfg = compose_cfg(["experiment=steerable", "model.optimizer.lr=fast"])
    with pytest.raises(InputError, match="model.optimizer.lr must be a number, got 'fast'"):
        fit_and_test(cfg)


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = run_script(
        "train.py", "experiment=steerable", "model.optimizer.lr=fast", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model.optimizer.lr must be a number, got 'fast'"
    )
    assert "Traceback" not in result.stderr


def test_cli_overrides_reach_the_optimizer(compose_cfg):
    cfg = compose_cfg(["experiment=moving_mnist", "model.optimizer.lr=3e-4"])
    model = hydra.utils.instantiate(cfg.model)
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    with open_dict(cfg):
        cfg.model.scheduler = None
    assert isinstance(hydra.utils.instantiate(cfg.model).configure_optimizers(), torch.optim.Adam)


def test_runs_go_under_outputs_in_the_directory_train_py_is_run_from(tmp_path):
    """Hydra makes the run folder before the run starts, so a refused config leaves one there."""
    result = run_script("train.py", "experiment=steerable", "model.optimizer.lr=fast", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run_dir.name.endswith("_steerable") and (run_dir / ".hydra" / "config.yaml").is_file()


def compose_paths(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


@pytest.mark.parametrize("root", ["cwd", "DFN_ROOT", "paths.root_dir"])
def test_runs_sweeps_and_data_go_under_one_outputs_folder(tmp_path, monkeypatch, root):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DFN_ROOT", raising=False)
    overrides = ["experiment=steerable"]
    outputs = tmp_path / "outputs"
    if root == "DFN_ROOT":
        monkeypatch.setenv("DFN_ROOT", str(tmp_path / "env"))
        outputs = tmp_path / "env" / "outputs"
    elif root == "paths.root_dir":
        overrides.append(f"paths.root_dir={tmp_path / 'override'}")
        outputs = tmp_path / "override" / "outputs"
    cfg = compose_paths(overrides)
    run_dir = Path(cfg.hydra.run.dir).resolve()
    assert run_dir.parent == outputs / "runs" and run_dir.name.endswith("_steerable")
    assert Path(cfg.hydra.sweep.dir).resolve().parent == outputs / "multirun"
    assert Path(cfg.paths.data_dir).resolve() == outputs / "data"
