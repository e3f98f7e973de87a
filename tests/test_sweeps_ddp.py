"""Sweeps and scale-out on existing engines: a seed sweep summarised by the report, a 2-trial Optuna
search, a 2-process DDP run (gloo on CPU), the SLURM launcher config."""

import json
import re
import statistics
from types import SimpleNamespace

import hydra
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from dfn.report.runs import number
from dfn.run.checkpoints import read_checkpoint
from dfn.run.experiment import evaluate, fit_and_test
from dfn.run.folder import RunFolder
from tests.conftest import run_script, smoke_overrides
from tests.test_eval_report import SHORT_VIDEO, report, scores


def test_seed_sweep_gets_one_folder_per_job_and_a_mean_and_spread(tmp_path, data_dir):
    result = run_script(
        "train.py",
        "-m",
        "experiment=steerable",
        *smoke_overrides("steerable"),
        "seed=1,2",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("*_steerable")
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert [p.parent.name for p in jobs] == ["0", "1"]
    mse = [json.loads(p.read_text())["test/mse"] for p in jobs]
    assert mse[0] != mse[1]  # the seeds train differently

    text = report([sweep], tmp_path / "report" / "R.md")
    (row,) = [line for line in text.splitlines() if line.startswith("| 00_steerable ")]
    spread = f"{number(statistics.mean(mse))} ± {number(statistics.stdev(mse))}"
    assert f"**{spread} (n=2)**" in row
    assert "seed=" not in row  # the seed is what the row averages over


def test_optuna_search_runs_two_trials(tmp_path, data_dir):
    result = run_script(
        "train.py",
        "hparams_search=moving_mnist_optuna",
        "experiment=moving_mnist",
        *smoke_overrides("moving_mnist"),
        *SHORT_VIDEO,
        "trainer.max_steps=2",
        "hydra.sweeper.n_trials=2",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").glob("*_moving_mnist")
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(trials) == 2
    searched = {"model.optimizer.lr", "model.predictor.filtering.kernel_size", "generator_width"}
    for job in ("0", "1"):
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        assert searched <= {o.split("=")[0] for o in overrides}
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t["val/loss_best"] for t in trials))
    assert set(best["best_params"]) == searched


@pytest.mark.parametrize("experiment", ["steerable", "stereo", "moving_mnist"])
def test_each_rank_draws_its_own_training_stream(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}", *smoke_overrides(experiment)])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    first = []
    for rank in (0, 1):
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        batch = next(iter(datamodule.train_dataloader()))
        first.append(batch["left"] if isinstance(batch, dict) else batch[0])
    assert not torch.equal(*first)


def evaluation_samples(datamodule, loader: str, rank: int, world_size: int) -> torch.Tensor:
    """The first input of every sample that rank ``rank`` of ``world_size`` evaluates."""
    datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
    batches = list(getattr(datamodule, loader)())
    firsts = [
        b["left"] if isinstance(b, dict) else b[0] if isinstance(b, list) else b for b in batches
    ]
    return torch.cat(firsts)


@pytest.mark.parametrize("experiment", ["steerable", "stereo", "moving_mnist", "highway"])
def test_ranks_evaluate_contiguous_shares_of_the_fixed_sets(compose_cfg, experiment):
    cfg = compose_cfg([f"experiment={experiment}", *smoke_overrides(experiment)])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    datamodule.setup("test")
    for loader in ("val_dataloader", "test_dataloader"):
        whole = evaluation_samples(datamodule, loader, 0, 1)
        if len(whole) >= 2 or loader == "test_dataloader":  # smoke highway validates one window
            shares = [evaluation_samples(datamodule, loader, rank, 2) for rank in (0, 1)]
            assert min(len(share) for share in shares) == len(whole) // 2 >= 1
            torch.testing.assert_close(torch.cat(shares), whole, rtol=0, atol=0)
        # more ranks than samples: each rank evaluates the whole set
        torch.testing.assert_close(
            evaluation_samples(datamodule, loader, 3, len(whole) + 1), whole, rtol=0, atol=0
        )


def test_two_process_ddp_run_matches_a_single_process_run(compose_cfg, tmp_path, data_dir):
    """Two processes of batch 2 take the stream's batches of 4 between them and average their
    gradients: the weights and the test metrics are those of one process at batch 4, to float
    rounding. (With SGD: Adam's first steps divide each gradient by its own size, so that the
    rounding of a gradient near zero moves its weight by the whole learning rate.)"""
    sgd = ["model.optimizer._target_=torch.optim.SGD"]
    overrides = ["experiment=steerable", *smoke_overrides("steerable"), *sgd]
    result = run_script(
        "train.py",
        *overrides,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={tmp_path / 'ddp'}",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = fit_and_test(compose_cfg([*overrides, "data.batch_size=4"]))
    assert ddp["steps"] == single["steps"] == 4
    assert ddp["device"].endswith("x2 processes")
    assert scores(ddp) == pytest.approx(scores(single), rel=1e-5)
    trained = [read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
               for run in (tmp_path / "ddp", tmp_path / "run")]  # fmt: skip
    for name, weight in trained[1].items():
        torch.testing.assert_close(trained[0][name], weight, rtol=1e-5, atol=1e-6)
    # only rank 0 reports: one run folder line, one process's TensorBoard files
    assert len(re.findall(r"^Run folder: ", result.stdout, re.MULTILINE)) == 1
    writers = {p.name.split(".")[-2] for p in (tmp_path / "ddp" / "tensorboard").glob("events.*")}
    assert len(writers) == 1
    # test metrics reduced over both ranks equal one process testing the same checkpoint
    best = RunFolder(tmp_path / "ddp").resolve(ddp["best_checkpoint"])
    cfg = compose_cfg([*overrides, f"ckpt_path={best}"], config_name="eval", run="eval")
    assert scores(ddp) == pytest.approx(scores(evaluate(cfg)), rel=1e-5)


def test_slurm_launcher_config_composes(compose_cfg):
    cfg = compose_cfg(
        [
            "experiment=moving_mnist",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_node=4",
            "hydra.launcher.tasks_per_node=4",
            "trainer=ddp",
            "trainer.devices=4",
        ]
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == (
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (
        "gpu",
        4,
        4,
    )
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 4
