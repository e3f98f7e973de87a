"""Weights that ship: export() cuts a run's checkpoint down to float32 weights with the model's
config and identity, dfn.pretrained() rebuilds the model from it, eval.py pretrained=<experiment>
scores it like the run's own checkpoint, and every file in pretrained/ is a trained model of
its experiment."""

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import dfn
import dfn.run.pretrained as shipped
from dfn.errors import InputError
from dfn.report.paper import PAPER_RESULTS
from dfn.run.checkpoints import IDENTITY, identity, read_checkpoint
from dfn.run.experiment import evaluate
from dfn.run.folder import RUN_CONFIG
from dfn.run.pretrained import export, pretrained_argv
from tests.conftest import ROOT, run_script, smoke_overrides

SHIPPED = sorted((ROOT / "pretrained").glob("*.pt"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir) -> Path:
    run = tmp_path_factory.mktemp("run") / "steerable"
    done = run_script(
        "train.py",
        "experiment=steerable",
        *smoke_overrides("steerable"),
        f"hydra.run.dir={run}",
        f"paths.data_dir={data_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.fixture
def pretrained_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(shipped, "PRETRAINED", tmp_path / "pretrained")
    return tmp_path / "pretrained"


def test_export_keeps_the_weights_and_drops_the_training_state(smoke_run, pretrained_dir):
    checkpoint = smoke_run / "checkpoints" / "last.ckpt"
    out = export(checkpoint)
    assert out == pretrained_dir / "steerable.pt"
    original, exported = read_checkpoint(checkpoint), read_checkpoint(out)
    assert "optimizer_states" in original and "optimizer_states" not in exported
    assert exported[IDENTITY] == original[IDENTITY]
    assert exported["global_step"] == original["global_step"] == 4
    assert exported["trained"] == {"run": "steerable", "checkpoint": "last.ckpt"}
    assert exported["state_dict"].keys() == original["state_dict"].keys()
    for name, weight in exported["state_dict"].items():
        assert weight.dtype == torch.float32
        torch.testing.assert_close(weight, original["state_dict"][name].float(), rtol=0, atol=0)

    model = dfn.pretrained("steerable")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(weight, exported["state_dict"][name], rtol=0, atol=0)


def test_eval_of_the_pretrained_file_equals_eval_of_the_checkpoint(
    smoke_run, pretrained_dir, compose_cfg, tmp_path
):
    checkpoint = smoke_run / "checkpoints" / "last.ckpt"
    export(checkpoint)
    argv = pretrained_argv(["eval.py", "pretrained=steerable", *smoke_overrides("steerable")])
    assert argv[1:4] == ["--config-name=eval", "experiment=steerable", "pretrained=steerable"]
    from_file = evaluate(compose_cfg(argv[2:], config_name="eval"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["pretrained"] == "steerable"
    overrides = ["experiment=steerable", *smoke_overrides("steerable"), f"ckpt_path={checkpoint}"]
    from_run = evaluate(compose_cfg(overrides, config_name="eval"))
    scores = {k: v for k, v in from_run.items() if k.startswith("test/")}
    assert scores and {k: from_file[k] for k in scores} == pytest.approx(scores, rel=1e-6)


def test_pretrained_names_what_ships_and_refuses_a_clash(pretrained_dir):
    pretrained_dir.mkdir()
    with pytest.raises(InputError, match=r"pretrained=moving_mnistt: no such weights; .* none"):
        dfn.pretrained("moving_mnistt")
    (pretrained_dir / "steerable.pt").touch()
    with pytest.raises(InputError, match="leave out ckpt_path=x.ckpt"):
        pretrained_argv(["eval.py", "pretrained=steerable", "ckpt_path=x.ckpt"])
    assert pretrained_argv(["eval.py", "run=r"]) == ["eval.py", "run=r"]


def test_the_eval_cli_says_what_ships(tmp_path):
    done = run_script("eval.py", "pretrained=no_such_experiment", cwd=tmp_path)
    assert done.returncode == 1
    assert "error: pretrained=no_such_experiment: no such weights; pretrained/ has" in done.stderr


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_file_is_a_trained_model_of_its_experiment(path, compose_cfg):
    """Small (weights only), of the authors' parameter count, and better on a batch of its
    experiment's test data than the same network untrained."""
    assert path.stat().st_size < 3 * 2**20
    checkpoint = read_checkpoint(path)
    experiment = path.stem
    assert checkpoint[IDENTITY]["experiment"] == experiment
    assert checkpoint[IDENTITY]["parameters"] == PAPER_RESULTS[experiment].parameters
    assert "optimizer_states" not in checkpoint
    model = dfn.pretrained(experiment)

    cfg = compose_cfg([f"experiment={experiment}", *smoke_overrides(experiment)])
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    untrained = hydra.utils.instantiate(checkpoint["model_config"]).eval()
    with torch.no_grad():
        trained_loss, untrained_loss = (
            m.loss(*m.outcome(batch)[:2]).item() for m in (model, untrained)
        )
    assert trained_loss < 0.5 * untrained_loss


def untrained_checkpoint(compose_cfg, experiment: str, overrides: list[str], run: Path) -> Path:
    """A run folder of ``experiment`` (its saved config) with a checkpoint of the network at
    its initial weights, as Lightning and CheckpointIdentity would write it."""
    cfg = compose_cfg([f"experiment={experiment}", *overrides])
    for folder in ("checkpoints", ".hydra"):
        (run / folder).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run / RUN_CONFIG)
    model = hydra.utils.instantiate(cfg.model)
    checkpoint = {
        "state_dict": model.state_dict(),
        "optimizer_states": [],
        "global_step": 0,
        "epoch": 0,
        "pytorch-lightning_version": "2.6",
        IDENTITY: identity(experiment, model),
    }
    torch.save(checkpoint, run / "checkpoints" / "init.ckpt")
    return run / "checkpoints" / "init.ckpt"


def untrained_export(compose_cfg, experiment: str, overrides: list[str], out: Path) -> Path:
    """``experiment``'s network at its initial weights, exported to ``out``."""
    run = out.parent / f"{out.stem}_run"
    return export(untrained_checkpoint(compose_cfg, experiment, overrides, run), out)


def test_export_refuses_a_checkpoint_without_its_run_folder(compose_cfg, tmp_path):
    checkpoint = untrained_checkpoint(compose_cfg, "steerable", [], tmp_path / "run")
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(checkpoint.read_bytes())
    with pytest.raises(InputError, match="not a checkpoint in a run folder with its identity"):
        export(loose, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_animation_refuses_models_of_two_experiments(compose_cfg, tmp_path):
    models = [
        untrained_export(compose_cfg, name, [], tmp_path / f"{name}.pt")
        for name in ("moving_mnist", "stereo_scenes_baseline")
    ]
    done = run_script("scripts/animate.py", *map(str, models), "-o", str(tmp_path / "a.gif"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: animate.py draws models of one experiment; got moving_mnist, stereo_scenes_baseline"
    )
    assert not (tmp_path / "a.gif").exists()


def test_animation_shows_the_input_then_each_models_prediction(compose_cfg, data_dir, tmp_path):
    short = ["model.num_input=2", "model.num_predicted=2"]
    models = [
        untrained_export(compose_cfg, name, short, tmp_path / f"{name}.pt")
        for name in ("moving_mnist", "moving_mnist_baseline")
    ]
    gif = tmp_path / "animation.gif"
    overrides = [*short, "data.test_size=4", "data.val_size=4", f"paths.data_dir={data_dir}"]
    done = run_script("scripts/animate.py", *map(str, models), "-o", str(gif), *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    image = Image.open(gif)
    assert image.n_frames == 4  # 2 input frames, 2 predicted
    frames = []
    for t in range(4):
        image.seek(t)
        frames.append(np.asarray(image.convert("RGB")).astype(int))
    # columns: ground truth, DFN, baseline, DFN flow; a 128-pixel frame (64 x 2) in a 2-pixel
    # border, 2 pixels apart; the first sequence below the 14-pixel line of labels
    assert frames[0].shape[1] == 4 * 134 + 2

    def tile(t: int, c: int) -> np.ndarray:
        return frames[t][18 : 18 + 128, 134 * c + 4 : 134 * c + 4 + 128]

    assert np.array_equal(tile(0, 0), tile(0, 1)) and np.array_equal(tile(0, 0), tile(0, 2))
    assert not np.array_equal(tile(3, 0), tile(3, 1))  # a prediction, not the truth
    assert (tile(0, 3) == 255).all() and not (tile(3, 3) == 255).all()  # flow once predicting


def test_stereo_animation_shows_a_scene_a_frame(compose_cfg, data_dir, tmp_path):
    models = [
        untrained_export(compose_cfg, name, [], tmp_path / f"{name}.pt")
        for name in ("stereo_scenes", "stereo_scenes_baseline")
    ]
    gif = tmp_path / "stereo.gif"
    overrides = ["data.test_size=2", "data.val_size=2", f"paths.data_dir={data_dir}"]
    done = run_script(
        "scripts/animate.py", *map(str, models), "-o", str(gif), "--samples", "2", *overrides
    )
    assert done.returncode == 0, done.stderr[-3000:]
    image = Image.open(gif)
    assert image.n_frames == 2  # a test scene a frame
    # left view, right view, DFN, baseline, DFN disparity, true disparity
    assert image.size[0] == 6 * 134 + 2
