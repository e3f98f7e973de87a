"""When things go wrong: bad input is one clear line and exit 1 with nothing half-written, a
non-finite loss stops the run and keeps the last good checkpoint, Ctrl-C and SIGTERM save
last.ckpt, a resumed run continues exactly, and a killed cache generation is regenerated."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hydra
import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from lightning import Callback
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import datamodules.moving_mnist as mm
from datamodules.h5 import read_frames, write_h5_atomic
from datamodules.stream import StreamLoader
from dfn.errors import InputError
from dfn.run.checkpoints import read_checkpoint
from dfn.run.cli import command_line, reporting_user_errors
from dfn.run.experiment import check_reach, fit_and_test
from dfn.tasks.steerable import SteerableFilterTask
from tests.conftest import ROOT, compose_config, run_script, smoke_overrides

CONFIGS = ROOT / "configs"
LAST = Path("checkpoints") / "last.ckpt"


@pytest.fixture
def compose_run(tmp_path, data_dir):
    """compose_run(name, overrides): the config of a run in the folder tmp_path/name/run."""

    def _compose(name: str, overrides: list[str]):
        (tmp_path / name).mkdir()
        return compose_config(overrides, tmp_path / name, data_dir)

    yield _compose
    GlobalHydra.instance().clear()


def train_py(cfg, capsys) -> tuple[int | str | None, str]:
    """Run as train.py does; returns (exit code, None if it finished) and what went to stderr."""
    capsys.readouterr()
    try:
        with reporting_user_errors():
            fit_and_test(cfg)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return None, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The one line an InputError becomes; nothing of a traceback around it."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def assert_nothing_written(run: Path) -> None:
    assert not (run / "metrics.json").exists()
    assert not list(run.glob("checkpoints/*.ckpt"))


def logged(run: Path, key: str) -> dict[int, float]:
    rows = csv.DictReader((run / "csv" / "metrics.csv").open())
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


class SignalAt(Callback):
    """Sends ``signum`` to this process ``times`` times once ``step`` training steps are done."""

    def __init__(self, step: int, signum: int, times: int = 1) -> None:
        self.step, self.signum, self.times = step, signum, times

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def add_callback(cfg, **signal_at) -> None:
    with open_dict(cfg):
        cfg.callbacks.signal_at = {"_target_": f"{__name__}.SignalAt", **signal_at}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["experiment=moving_mnist", "model.predictor.filtering.kernel_size=8"],
            "model.predictor.filtering: kernel_size must be odd and positive, got 8",
        ),
        (
            ["experiment=steerable", "model.kernel_size=0"],
            "model: kernel_size must be odd and positive, got 0",
        ),
        (
            ["experiment=steerable", "+model.generator.out_features=80"],
            "model: out_features=80 is set in the config, but the task (in_features: the "
            "angle; out_features: kernel_size**2 taps) derives it (out_features=81); remove it",
        ),
        (
            ["experiment=moving_mnist", "+model.predictor.generator.out_channels=80"],
            "model.predictor: out_channels=80 is set in the config, but the predictor",
        ),
        (
            ["experiment=moving_mnist", "model.predictor.generator.image_size=32"],
            "data.image_size=32; Moving MNIST frames are 64x64",
        ),
        (
            ["experiment=stereo", "data.max_disparity=8"],
            "data.max_disparity=8, but the model's filter reaches 6 px horizontally (a 1xK "
            "filter reaches (K-1)/2 px): set model.predictor.filtering.kernel_size=[1, 17] or "
            "wider, or lower data.max_disparity",
        ),
        (
            ["experiment=stereo_scenes", "data.max_disparity=6.5"],
            "data.max_disparity=6.5, but the model's filter reaches 6 px horizontally (a 1xK "
            "filter reaches (K-1)/2 px): set model.predictor.filtering.kernel_size=[1, 15] or "
            "wider, or lower data.max_disparity",
        ),
        (
            ["experiment=highway", "model.num_input=1"],
            "needs num_input >= 2 and num_predicted >= 1; got num_input=1",
        ),
        (["experiment=stereo", "data.batch_size=0"], "data.batch_size=0; expected an integer >= 1"),
        (
            ["experiment=steerable", "data.steps_per_epoch=0"],
            "data.steps_per_epoch=0; expected an integer >= 1",
        ),
        (
            ["experiment=steerable", "callbacks.last_checkpoint.every_n_train_steps=-1"],
            "callbacks.last_checkpoint.every_n_train_steps=-1; expected an integer >= 0",
        ),
        (
            ["experiment=highway", "data.num_workers=-1"],
            "data.num_workers=-1; expected an integer >= 0",
        ),
        (
            ["experiment=moving_mnist", "data.batch_size=true"],
            "data.batch_size=True; expected an integer >= 1",
        ),
        (
            ["experiment=moving_mnist", "data.test_path=/nonexistent/mnist_test_seq.npy"],
            "data.test_path=/nonexistent/mnist_test_seq.npy: no such file",
        ),
    ],
)
def test_config_mistakes_are_one_line_before_training(
    compose_cfg, tmp_path, capsys, overrides, message
):
    code, stderr = train_py(compose_cfg(overrides), capsys)
    assert code == 1
    assert message in error_line(stderr)
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize(
    ("override", "model_key"),
    [
        ("data.num_predicted=11", "model.num_predicted"),
        ("data.crop_size=48", "model.predictor.generator.image_size"),
        ("data.image_size=32", "model.predictor.generator.image_size"),
    ],
)
def test_a_data_setting_that_follows_the_model_is_set_through_the_model(override, model_key):
    """configs/data/*.yaml take what the model reads from the model's settings, by
    interpolation; setting the data's copy alone is one line naming the model's."""
    experiment = {"data.crop_size": "stereo", "data.image_size": "highway"}.get(
        override.split("=")[0], "moving_mnist"
    )
    with pytest.raises(InputError) as error:
        command_line(["train.py", f"experiment={experiment}", override], "resume", CONFIGS)
    key = override.split("=")[0]
    assert str(error.value) == (
        f"{override}: {key} follows {model_key} (the config interpolates it, so that the data "
        f"serves what the model reads); set {model_key} instead"
    )


def test_the_sequence_length_is_stated_once(compose_cfg, tmp_path, capsys):
    """The data follows the model's num_input and num_predicted: data.num_frames is no key any
    more, a longer sequence just works, and a fixed test file of another length is one line."""
    with pytest.raises(ConfigCompositionException, match="num_frames"):
        compose_cfg(["experiment=moving_mnist", "data.num_frames=21"])
    cfg = compose_cfg(["experiment=moving_mnist", "model.num_predicted=11"])
    assert hydra.utils.instantiate(cfg.data).num_frames == 21
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, np.zeros((20, 4, 64, 64), np.uint8))  # time-major, as Srivastava's file
    cfg = compose_cfg(
        ["experiment=moving_mnist", "model.num_predicted=11", f"data.test_path={path}"]
    )
    code, stderr = train_py(cfg, capsys)
    assert code == 1
    assert "no axis of 21 frames (num_input + num_predicted)" in error_line(stderr)
    assert_nothing_written(tmp_path / "run")


def test_the_baseline_is_not_held_to_a_filter_reach(compose_cfg):
    """A ConvHead moves no pixel: data.max_disparity beyond the filter it stands in for is fine;
    a filter wide enough passes too."""
    for overrides in (
        ["experiment=stereo_baseline", "data.max_disparity=8"],
        [
            "experiment=stereo",
            "data.max_disparity=8",
            "model.predictor.filtering.kernel_size=[1,17]",
        ],
    ):
        cfg = compose_cfg(overrides)
        check_reach(hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.model))


def test_bad_data_before_training_is_one_line(compose_cfg, tmp_path, capsys):
    empty = tmp_path / "no_mnist"
    empty.mkdir()
    cfg = compose_cfg(["experiment=moving_mnist", f"data.mnist_root={empty}"])
    code, stderr = train_py(cfg, capsys)
    assert code == 1
    line = error_line(stderr)
    assert f"mnist_root={empty}" in line and "train-images-idx3-ubyte" in line
    assert_nothing_written(tmp_path / "run")


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((3, 8, 8), np.int16), "has dtype int16; expected uint8 or float in [0, 1]"),
        (np.full((3, 8, 8), 2.0, np.float32), "expected finite values in [0, 1]"),
        (np.full((3, 8, 8), np.nan, np.float32), "expected finite values in [0, 1]"),
    ],
)
def test_hdf5_frames_of_a_wrong_dtype_or_range_are_refused(tmp_path, array, problem):
    path = write_h5_atomic(tmp_path / "frames.h5", {"highway_L": array})
    with pytest.raises(InputError, match=problem.replace("[", r"\[").replace("]", r"\]")) as error:
        read_frames(path, "highway_L")
    assert f"{path}:highway_L" in str(error.value)


def test_full_error_shows_the_traceback(compose_cfg, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(InputError, match="model.optimizer.lr"), reporting_user_errors():
        fit_and_test(compose_cfg(["experiment=steerable", "model.optimizer.lr=fast"]))


def test_corrupt_data_file_through_the_cli(tmp_path):
    """A truncated HDF5 file: one line naming it, exit 1, no metrics or checkpoints written."""
    path = write_h5_atomic(
        tmp_path / "pairs.h5",
        {
            "highway_L": np.zeros((4, 64, 64), np.uint8),
            "highway_R": np.zeros((4, 64, 64), np.uint8),
        },
    )
    path.write_bytes(path.read_bytes()[:3000])
    result = run_script(
        "train.py",
        "experiment=stereo",
        f"data.train_path={path}",
        f"data.test_path={path}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    )
    assert result.returncode == 1
    line = error_line(result.stderr)
    assert f"cannot read {path}: corrupt or truncated HDF5 file" in line
    assert not list((tmp_path / "outputs").rglob("metrics.json"))
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))


# --------------------------------------------------------------------------- faults in training


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    compose_cfg, tmp_path, capsys, monkeypatch
):
    training_step = SteerableFilterTask.training_step

    def diverging_step(self, batch, batch_idx):
        loss = training_step(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss

    monkeypatch.setattr(SteerableFilterTask, "training_step", diverging_step)
    cfg = compose_cfg(
        [
            "experiment=steerable",
            *smoke_overrides("steerable"),
            "data.steps_per_epoch=2",
            "trainer.max_steps=6",
        ]
    )
    code, stderr = train_py(cfg, capsys)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert code == 1
    assert error_line(stderr).startswith(
        f"error: train/loss is nan at step 3; stopped before the update, the last good "
        f"checkpoint is kept: {last}. A lower model.optimizer.lr usually helps"
    )
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 2  # saved after the validation of epoch 1
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def process_group(leader: int) -> list[int]:
    """The processes of ``leader``'s process group."""
    group = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == leader:  # after the name: state, ppid, pgrp
            group.append(int(stat.parent.name))
    return group


def test_sigterm_to_the_process_group_with_data_workers_saves_last_ckpt(tmp_path, data_dir):
    """What a cluster's time limit, ``timeout``, ``docker stop`` and systemd do: SIGTERM to the
    run's whole process group, its data workers included. The workers leave it to the main
    process: the step finishes, last.ckpt is saved, the resume command printed, exit 143; and
    the run resumes from it."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    overrides = [
        "experiment=steerable",
        *smoke_overrides("steerable"),
        "data.num_workers=2",
        "data.steps_per_epoch=50",
        "trainer.max_steps=100000",
        "callbacks.last_checkpoint.every_n_train_steps=5",
        f"hydra.run.dir={run}",
        f"paths.log_dir={tmp_path}",
        f"paths.data_dir={data_dir}",
    ]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job of a cluster or a shell has
    )
    last = run / LAST
    deadline = time.monotonic() + 200
    while not last.is_file():  # the first periodic save: training, with its workers up
        assert time.monotonic() < deadline and first.poll() is None, "no checkpoint was saved"
        time.sleep(0.1)
    assert len(process_group(first.pid)) >= 3  # the run and its two data workers
    os.killpg(first.pid, signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 143, stderr[-3000:]
    step = read_checkpoint(last)["global_step"]
    assert f"Stopped by SIGTERM at step {step}; saved {last}\n" in stderr
    assert f"Resume with: python train.py resume={run}\n" in stderr
    assert "Traceback" not in stderr

    resumed = run_script("train.py", f"resume={run}", f"trainer.max_steps={step + 2}", "test=false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == step + 2


def test_second_ctrl_c_stops_at_once_without_saving(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg(
        [
            "experiment=steerable",
            *smoke_overrides("steerable"),
            "data.steps_per_epoch=2",
            "trainer.max_steps=6",
        ]
    )
    add_callback(cfg, step=1, signum=signal.SIGINT, times=2)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, stderr = train_py(cfg, capsys)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C after a KeyboardInterrupt
    assert code == 1
    assert "Stopped at once at step 1: no checkpoint was saved" in stderr
    assert_nothing_written(tmp_path / "run")


def uses_stream_loader(cfg) -> bool:
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    return isinstance(datamodule.train_dataloader(), StreamLoader)


@pytest.mark.parametrize(
    ("experiment", "steps_per_epoch", "stop"),
    [
        ("steerable", 2, "max_steps"),  # mid-epoch: max_steps=3, then resumed to 6
        ("steerable", 3, "SIGINT"),  # at the end of an epoch, by Ctrl-C
        ("highway", 2, "SIGTERM"),  # mid-epoch, by SIGTERM
        ("steerable", 2, "killed"),  # killed at step 3 without saving, after the periodic save
    ],
)
def test_resumed_run_continues_exactly(
    compose_run, tmp_path, capsys, experiment, steps_per_epoch, stop
):
    """6 steps straight == 3 steps, stop, resume from last.ckpt to 6: the same weights, optimizer
    and LR schedule, the same logged losses and learning rates at the same steps."""
    overrides = [
        f"experiment={experiment}",
        *smoke_overrides(experiment),
        "logger=csv",
        "test=false",
        f"data.steps_per_epoch={steps_per_epoch}",
    ]
    if experiment == "highway":  # a small video model on a small clip: 2 frames in, 1 out
        clip = np.random.default_rng(0).integers(0, 256, (24, 64, 64), dtype=np.uint8)
        path = write_h5_atomic(tmp_path / "clip.h5", {"highway_L": clip})
        overrides += [
            "model.num_input=2",
            "model.num_predicted=1",
            f"data.train_path={path}",
            f"data.test_path={path}",
        ]
    if experiment == "steerable":
        overrides += ["model.scheduler.step_size=2"]  # the LR changes within the run
    straight = compose_run("straight", [*overrides, "trainer.max_steps=6"])
    # an exact resume needs the position in the stream, which the StreamLoader saves
    assert uses_stream_loader(straight), (
        "the train_dataloader is no datamodules.stream.StreamLoader"
    )
    assert train_py(straight, capsys)[0] is None

    if stop == "max_steps":
        first = compose_run("first", [*overrides, "trainer.max_steps=3"])
        assert train_py(first, capsys)[0] is None
    elif stop == "killed":  # the periodic last.ckpt; a second Ctrl-C stops at once, unsaved
        periodic = "callbacks.last_checkpoint.every_n_train_steps=1"
        first = compose_run("first", [*overrides, "trainer.max_steps=6", periodic])
        add_callback(first, step=3, signum=signal.SIGINT, times=2)
        handler = signal.getsignal(signal.SIGINT)
        try:
            code, stderr = train_py(first, capsys)
        finally:
            signal.signal(signal.SIGINT, handler)
        assert code == 1
        assert "Stopped at once at step 3" in stderr
    else:
        first = compose_run("first", [*overrides, "trainer.max_steps=6"])
        add_callback(first, step=3, signum=getattr(signal, stop))
        code, stderr = train_py(first, capsys)
        assert code == 128 + getattr(signal, stop)
        assert f"Stopped by {'Ctrl-C' if stop == 'SIGINT' else 'SIGTERM'} at step 3" in stderr
        assert f"Resume with: python train.py resume={tmp_path / 'first' / 'run'}\n" in stderr
    runs = [tmp_path / name / "run" for name in ("straight", "first", "resumed")]
    last = runs[1] / "checkpoints" / "last.ckpt"
    # one file, which the periodic save and ModelCheckpoint's after each epoch overwrite
    assert [p.name for p in last.parent.glob("last*")] == ["last.ckpt"]
    assert read_checkpoint(last)["global_step"] == 3
    resumed = compose_run("resumed", [*overrides, "trainer.max_steps=6", f"ckpt_path={last}"])
    assert train_py(resumed, capsys)[0] is None

    a, b = (read_checkpoint(run / "checkpoints" / "last.ckpt") for run in (runs[0], runs[2]))
    assert a["global_step"] == b["global_step"] == 6
    for name, weight in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], weight)
    torch.testing.assert_close(b["optimizer_states"], a["optimizer_states"])
    assert b["lr_schedulers"] == a["lr_schedulers"]
    for key in ("train/loss", "lr-Adam"):
        # A kill loses the loss of the step the periodic save ends: Lightning logs it after the
        # callbacks' on_train_batch_end, where the checkpoint was written.
        lost = {2} if stop == "killed" and key == "train/loss" else set()
        steps = [s for s in range(6) if s not in lost]
        whole, halves = logged(runs[0], key), {**logged(runs[1], key), **logged(runs[2], key)}
        assert sorted(whole) == list(range(6)) and sorted(halves) == steps, key
        np.testing.assert_allclose([halves[s] for s in steps], [whole[s] for s in steps], rtol=1e-5)


def tensorboard_scalars(run: Path, tag: str) -> dict[int, float]:
    """What TensorBoard shows for ``tag`` in the run: every session's event files together."""
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def csv_losses(path: Path) -> dict[int, str]:
    """The training losses a CSVLogger wrote to ``path``: step -> value as written."""
    with path.open(newline="") as file:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(file) if r["train/loss"]}


def test_resumed_by_its_folder_continues_exactly_in_place(compose_run, tmp_path, capsys):
    """6 steps straight == 3 steps, then ``train.py resume=<run folder> trainer.max_steps=6``:
    composed from the run's saved config, in the same folder, with the same weights, optimizer,
    LR schedule and logged losses; the folder's record grows instead of being replaced."""
    overrides = [
        "experiment=steerable",
        *smoke_overrides("steerable"),
        "data.steps_per_epoch=2",
        "model.scheduler.step_size=2",
        "test=false",
        "logger=[tensorboard,csv]",
    ]
    straight = compose_run("straight", [*overrides, "trainer.max_steps=6"])
    assert train_py(straight, capsys)[0] is None
    first = compose_run("first", [*overrides, "trainer.max_steps=3"])
    assert train_py(first, capsys)[0] is None
    whole, run = tmp_path / "straight" / "run", tmp_path / "first" / "run"

    argv = command_line(["train.py", f"resume={run}", "trainer.max_steps=6"], "resume", CONFIGS)
    config_name = argv[1].removeprefix("--config-name=")
    resumed = compose_config(argv[2:], tmp_path / "first", straight.paths.data_dir, config_name)
    assert resumed.hydra.run.dir == str(run) and resumed.ckpt_path == str(run / LAST)
    assert train_py(resumed, capsys)[0] is None

    a, b = (read_checkpoint(folder / LAST) for folder in (whole, run))
    assert a["global_step"] == b["global_step"] == 6
    for name, weight in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], weight)
    torch.testing.assert_close(b["optimizer_states"], a["optimizer_states"])
    assert b["lr_schedulers"] == a["lr_schedulers"]
    for tag in ("train/loss", "lr-Adam"):
        straight_log, halves = (tensorboard_scalars(r, tag) for r in (whole, run))
        assert sorted(halves) == sorted(straight_log) == list(range(6)), tag
        expected = list(straight_log.values())
        np.testing.assert_allclose([halves[s] for s in straight_log], expected, rtol=1e-5)
    # the CSV rows of both sessions are kept, each session's in its own file
    straight_csv = csv_losses(whole / "csv" / "metrics.csv")
    halves_csv = [run / "csv" / "metrics.csv", run / "csv" / "resumed_at_step_3" / "metrics.csv"]
    assert [sorted(csv_losses(path)) for path in halves_csv] == [[0, 1, 2], [3, 4, 5]]
    assert {k: v for path in halves_csv for k, v in csv_losses(path).items()} == straight_csv

    record = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    assert list(record) == [*overrides, "trainer.max_steps=3", "trainer.max_steps=6"]
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.max_steps == 6
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["resumed_from"] == str(LAST)
    assert [earlier["steps"] for earlier in metrics["history"]] == [3]


# --------------------------------------------------------------------------- the data stream


class Indices(torch.utils.data.Dataset):
    def __getitem__(self, index: int) -> int:
        return index


def batches(loader, count: int | None = None) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch.tolist())
        if count is not None and len(out) == count:
            break
    return out


def test_stream_loader_resumes_mid_epoch_and_keeps_epoch_boundaries():
    # 3 batches of 2 an epoch: batch b of epoch e holds samples 6e + 2b and 6e + 2b + 1.
    stream = [[6 * e + 2 * b, 6 * e + 2 * b + 1] for e in range(3) for b in range(3)]
    loader = StreamLoader(Indices(), batch_size=2, steps_per_epoch=3)
    assert len(loader) == 3
    assert batches(loader) + batches(loader) == stream[:6]  # one epoch a pass
    stopped = StreamLoader(Indices(), batch_size=2, steps_per_epoch=3)
    assert batches(stopped) + batches(stopped, 1) == stream[:4]  # 1 batch into epoch 2
    resumed = StreamLoader(Indices(), batch_size=2, steps_per_epoch=3)
    resumed.load_state_dict(stopped.state_dict())
    assert batches(resumed) == stream[4:6]  # the rest of that epoch, no more
    assert batches(resumed) == stream[6:9]  # then the next epoch


def test_stream_loader_workers_and_ranks_share_one_stream():
    single = batches(StreamLoader(Indices(), batch_size=4, steps_per_epoch=2))
    workers = StreamLoader(Indices(), batch_size=4, steps_per_epoch=2, num_workers=2)
    assert batches(workers) == single
    ranks = [batches(StreamLoader(Indices(), 2, 2, rank=r, world_size=2)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks, strict=True)] == single
    # Counted as handed out, not as loaded ahead by the workers.
    partial = StreamLoader(Indices(), batch_size=4, steps_per_epoch=2, num_workers=2)
    batches(partial, 1)
    assert partial.state_dict() == {"consumed_samples": 4}


# --------------------------------------------------------------------------- cached data


def test_killed_cache_generation_is_regenerated(tmp_path):
    """SIGKILL halfway through writing a generated set: no cache file appears, and the next run
    generates it again instead of reading a partial file."""
    pool = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    path = tmp_path / "moving_mnist_test.h5"
    create_dataset = h5py.Group.create_dataset

    def dying_create_dataset(group, name, data):
        dataset = create_dataset(group, name, shape=data.shape, dtype=data.dtype)
        dataset[: len(data) // 2] = data[: len(data) // 2]
        group.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # the child dies writing
        try:
            h5py.Group.create_dataset = dying_create_dataset
            mm.load_or_generate(path, pool, seed=7, size=6, num_frames=20, count=6)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not path.exists()
    assert list(tmp_path.glob(f".{path.name}.*.tmp"))  # what the kill left: never read

    frames = mm.load_or_generate(path, pool, seed=7, size=6, num_frames=20, count=6)
    expected = mm.render_sequences(pool, 7, 6, 20)
    np.testing.assert_array_equal(frames, expected)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f[mm.CACHE_KEY][()], expected)
