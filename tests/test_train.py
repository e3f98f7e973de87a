"""The training entry point on the real configs: composition, smoke runs, resuming, bad input."""

import json
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from dfn.errors import InputError
from dfn.models.predictor import ConvHead, FilterHead
from dfn.run.experiment import fit_and_test
from dfn.tasks.metrics import METRICS
from tests.conftest import EXPERIMENTS, ROOT, run_script, smoke_overrides

PARAMETERS = {  # the authors' counts (../shared/REFERENCE_SETUP.md); steerable: 1-64-128-81 MLP
    "steerable": 18_897,
    "moving_mnist": 637_361,
    "moving_mnist_baseline": 637_443,
    "highway": 368_122,
    "highway_baseline": 368_245,
    "stereo": 464_494,
    "stereo_baseline": 464_509,
    "stereo_scenes": 464_494,  # the stereo model on procedural scenes
    "stereo_scenes_baseline": 464_509,
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


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_run_writes_metrics(compose_cfg, tmp_path, experiment):
    cfg = compose_cfg([f"experiment={experiment}", *smoke_overrides(experiment)])
    metrics = fit_and_test(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["steps"] == 4
    assert written["parameters"] == PARAMETERS[experiment]
    assert written["device"].startswith("CPU")
    for key in EXPECTED_METRICS[experiment.removesuffix("_baseline")]:
        assert key in written, key
    assert all(torch.isfinite(torch.tensor(v)) for k, v in written.items() if k.startswith("test/"))
    assert metrics["steps"] == written["steps"]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_resumed_run_continues_from_the_checkpoint_step(compose_cfg, tmp_path):
    first = compose_cfg(["experiment=steerable", *smoke_overrides("steerable")])
    fit_and_test(first)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    resumed = compose_cfg(
        [
            "experiment=steerable",
            *smoke_overrides("steerable"),
            "trainer.max_steps=6",
            f"ckpt_path={last}",
        ]
    )
    assert fit_and_test(resumed)["steps"] == 6


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
