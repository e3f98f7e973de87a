"""Run folders that describe themselves and checkpoints as a trust boundary: ``resume=`` and
``run=`` name a run by its folder, a checkpoint says what it belongs to, a file that is not one
of this experiment's checkpoints is one line, and a kill while saving keeps the previous one."""

import errno
import json
import os
import pickle
import shlex
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
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from datamodules.h5 import write_h5_atomic
from dfn.errors import InputError
from dfn.files import write_text
from dfn.run import checkpoints
from dfn.run.checkpoints import AtomicCheckpointIO, check_checkpoint, identity, read_checkpoint
from dfn.run.cli import command_line, one_line
from dfn.run.experiment import fit_and_test
from dfn.run.folder import RUN_CONFIG, RunFolder, named_checkpoint
from tests.conftest import ROOT, run_script, smoke_overrides

CONFIGS = ROOT / "configs"
EXPERIMENTS = ", ".join(sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))


def model_of(experiment: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides])
    GlobalHydra.instance().clear()
    return hydra.utils.instantiate(cfg.model)


def save_checkpoint(path: Path, experiment: str | None, model) -> Path:
    """A checkpoint of ``model``; without an identity block (experiment None), as written before
    checkpoints carried one."""
    checkpoint = {"state_dict": model.state_dict(), "global_step": 1}
    if experiment is not None:
        checkpoint["dfn"] = identity(experiment, model)
    torch.save(checkpoint, path)
    return path


class RunsCode:
    """Pickled, it asks to run a shell command when loaded."""

    def __reduce__(self) -> tuple:
        return os.system, ("touch ran_code",)


def make_file(kind: str, path: Path) -> Path:
    if kind == "truncated":
        whole = save_checkpoint(path, "steerable", model_of("steerable")).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "random bytes":
        path.write_bytes(bytes(range(7, 256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "code in a checkpoint":
        torch.save({"state_dict": {}, "global_step": 1, "x": RunsCode()}, path)
    elif kind == "code in a pickle":
        path.write_bytes(pickle.dumps(RunsCode(), protocol=4))
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "a folder":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated or corrupt (not a complete PyTorch zip archive)"),
        ("random bytes", "not a PyTorch checkpoint"),
        ("empty", "an empty file"),
        (
            "code in a checkpoint",
            "loading it would run code (posix.system); checkpoints are read as weights only",
        ),
        (
            "code in a pickle",
            "a pickle that is not plain weights; checkpoints are read as weights only",
        ),
        ("a tensor", "not a Lightning checkpoint (no state_dict)"),
        ("a folder", "a folder, not a checkpoint file"),
        ("missing", "no such file"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_refused_with_its_reason(
    tmp_path, monkeypatch, kind, reason
):
    monkeypatch.chdir(tmp_path)
    path = make_file(kind, tmp_path / "x.ckpt")
    with pytest.raises(InputError) as error:
        read_checkpoint(path)
    assert str(error.value) == f"cannot load {path}: {reason}"
    assert not (tmp_path / "ran_code").exists()


@pytest.mark.parametrize(
    ("saved", "asked", "message"),
    [
        (
            ("moving_mnist", "moving_mnist", []),
            ("highway", []),
            "{path} is a checkpoint of experiment moving_mnist, not of highway "
            "(the experiment asked for)",
        ),
        (
            ("steerable", "steerable", []),
            ("steerable", ["model.generator.hidden=[64,64]"]),
            "{path} is a checkpoint of experiment steerable with a "
            "dfn.tasks.steerable.SteerableFilterTask of 18,897 parameters, but this config "
            "builds a dfn.tasks.steerable.SteerableFilterTask of {parameters:,}: the run was "
            "configured differently",
        ),
        (
            (None, "moving_mnist", []),  # written before checkpoints carried an identity
            ("highway", []),
            "{path} does not fit experiment highway's model: ",
        ),
        ((None, "steerable", []), ("steerable", []), None),
    ],
)
def test_a_checkpoint_of_another_experiment_or_config_is_refused(tmp_path, saved, asked, message):
    experiment, built, overrides = saved
    path = save_checkpoint(tmp_path / "x.ckpt", experiment, model_of(built, *overrides))
    checkpoint = read_checkpoint(path)
    model = model_of(asked[0], *asked[1])
    if message is None:
        check_checkpoint(checkpoint, path, asked[0], model)  # its tensors fit: accepted
        return
    with pytest.raises(InputError) as error:
        check_checkpoint(checkpoint, path, asked[0], model)
    expected = message.format(path=path, parameters=model.num_parameters)
    assert str(error.value).startswith(expected)


def test_a_finished_run_is_not_trained_again(compose_cfg, tmp_path):
    overrides = ["experiment=steerable", *smoke_overrides("steerable"), "test=false"]
    fit_and_test(compose_cfg(overrides))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["dfn"]["experiment"] == "steerable"
    with pytest.raises(InputError) as error:
        fit_and_test(compose_cfg([*overrides, f"ckpt_path={last}"]))
    assert str(error.value) == (
        f"{last} is at step 4, and trainer.max_steps=4: nothing is left to train; give a larger "
        "trainer.max_steps"
    )


# --------------------------------------------------------------------------- naming a run


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run folder as train.py leaves it, its name awkward for a command line."""
    run = tmp_path / "run\\ 1, 'b'"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=steerable"])
    GlobalHydra.instance().clear()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    for name in ("last.ckpt", "step_000002.ckpt"):
        (run / "checkpoints" / name).touch()
    return run


@pytest.mark.parametrize(
    ("script", "key", "target", "checkpoint"),
    [
        ("train.py", "resume", ".", "last.ckpt"),
        ("train.py", "resume", "checkpoints/step_000002.ckpt", "step_000002.ckpt"),
        ("eval.py", "run", ".", "last.ckpt"),
    ],
)
def test_a_run_folder_composes_its_own_config(run_folder, script, key, target, checkpoint):
    argv = command_line([script, f"{key}={run_folder / target}", "seed=7"], key, CONFIGS)
    assert argv[1] == f"--config-name={'resume' if key == 'resume' else 'eval_run'}"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(argv[1].split("=")[1], overrides=argv[2:], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.name == "steerable" and cfg.seed == 7  # the run's config, the override on top
    if key == "resume":  # continued in the run's folder, from the checkpoint
        assert cfg.resume == str(run_folder)
        assert cfg.ckpt_path == str(run_folder / "checkpoints" / checkpoint)
        assert cfg.hydra.run.dir == str(run_folder) and cfg.hydra.output_subdir is None
    else:  # as typed, which the new run's record keeps; eval.py finds the checkpoint from it
        assert cfg.run == str(run_folder / target) and cfg.ckpt_path is None
        assert named_checkpoint(cfg.run, "run")[1] == run_folder / "checkpoints" / checkpoint


@pytest.mark.parametrize(
    ("key", "arguments", "message"),
    [
        ("resume", ["resume={tmp}/none"], "resume={tmp}/none: no such run folder or checkpoint"),
        ("run", ["run={run}/checkpoints"], "run={run}/checkpoints: not a run folder (no .hydra/"),
        (
            "resume",
            ["resume={run}", "trainer=gpu"],
            "trainer=gpu: resume= uses the run's composed config, where no config group can be "
            "chosen; set values instead (e.g. trainer.accelerator=gpu)",
        ),
        (
            "resume",
            ["resume={run}", "ckpt_path={run}/checkpoints/last.ckpt"],
            "resume= names the checkpoint (resume=<run>/checkpoints/<file>.ckpt); leave out "
            "ckpt_path={run}/checkpoints/last.ckpt",
        ),
        (
            "resume",
            ["resume={unfinished}"],
            "resume={unfinished}: the run has no checkpoints/last.ckpt; it stopped before its "
            "first checkpoint, so start it again",
        ),
        ("run", ["data=movingmnist"], "data=movingmnist: no such config; configs/data/ has "),
        (
            "resume",
            ["resume={run}", "trainer.max_stepz=3"],
            "trainer.max_stepz=3: trainer has no key 'max_stepz' (it has _target_, ",
        ),
        (
            "resume",
            ["experiment=highway", "+data.new=1", "model.predictor.filtering.kernel_sise=3"],
            "model.predictor.filtering.kernel_sise=3: model.predictor.filtering has no key "
            "'kernel_sise' (it has ",
        ),
    ],
)
def test_a_run_that_cannot_be_named_is_one_line(run_folder, tmp_path, key, arguments, message):
    unfinished = tmp_path / "unfinished"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_bytes((run_folder / RUN_CONFIG).read_bytes())
    names = {"tmp": tmp_path, "run": run_folder, "unfinished": unfinished}
    with pytest.raises(InputError) as error:
        command_line(["train.py", *(a.format(**names) for a in arguments)], key, CONFIGS)
    assert str(error.value).startswith(message.format(**names))


@pytest.mark.parametrize(
    "arguments",
    [
        ["experiment=highway", "+data.new=1", "~data.num_workers", "trainer.max_steps=3"],
        ["-m", "experiment=steerable", "seed=1,2", "data.crop_size=33,65", "logger=[csv]"],
        ["-m", "experiment=steerable,highway", "data.crop_size=33"],  # Hydra judges each job
    ],
)
def test_keys_the_config_has_pass(arguments):
    assert command_line(["train.py", *arguments], "resume", CONFIGS) == ["train.py", *arguments]


# --------------------------------------------------------------------------- from the command line


@pytest.fixture(scope="module")
def cli_failures(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, str, Path]]:
    """Each case of CLI_FAILURES run through its script at once: name -> (result, the error line
    expected, the folder where nothing may be written)."""
    tmp = tmp_path_factory.mktemp("cli")
    files = {
        "truncated": make_file("truncated", tmp / "truncated.ckpt"),
        "moving_mnist": save_checkpoint(tmp / "mm.ckpt", "moving_mnist", model_of("moving_mnist")),
        "folder": make_file("a folder", tmp / "folder.ckpt"),
        "file": make_file("empty", tmp / "a_file"),
        "not_a_run": make_file("a folder", tmp / "not_a_run"),
    }
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    jobs = {}
    for name, (script, arguments, expected) in CLI_FAILURES.items():
        outputs = tmp / name.replace(" ", "_") / "outputs"
        arguments = [a.format(**files) for a in arguments]
        if not arguments[0].startswith(("resume=", "run=")):  # those take the run's paths
            arguments.append(f"paths.log_dir={outputs}")
        command = [sys.executable, str(ROOT / script), *arguments]
        job = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        jobs[name] = job, expected.format(**files), outputs
    results = {}
    for name, (job, expected, outputs) in jobs.items():
        _, stderr = job.communicate(timeout=300)
        result = subprocess.CompletedProcess(job.args, job.returncode, stderr=stderr)
        results[name] = result, expected, outputs
    return results


# name -> (script, its arguments, the one line it must print); {file} names a file of the fixture
CLI_FAILURES = {
    "corrupt checkpoint": (
        "train.py",
        ["experiment=moving_mnist", "ckpt_path={truncated}"],
        "error: cannot load {truncated}: truncated or corrupt (not a complete PyTorch zip archive)",
    ),
    "checkpoint of another experiment": (
        "eval.py",
        ["experiment=highway", "ckpt_path={moving_mnist}"],
        "error: {moving_mnist} is a checkpoint of experiment moving_mnist, not of highway "
        "(the experiment asked for)",
    ),
    "checkpoint path is a folder": (
        "train.py",
        ["experiment=steerable", "ckpt_path={folder}"],
        "error: cannot load {folder}: a folder, not a checkpoint file",
    ),
    "run folder cannot be created": (
        "train.py",
        ["experiment=steerable", "hydra.run.dir={file}/run"],
        "error: cannot create the run folder hydra.run.dir={file}/run: Not a directory",
    ),
    "missing experiment": (
        "train.py",
        ["experiment=moving_mnistt"],
        f"error: experiment=moving_mnistt: no such config; configs/experiment/ has {EXPERIMENTS}",
    ),
    "misspelt key": (
        "train.py",
        ["experiment=steerable", "model.optimiser.lr=1"],
        "error: model.optimiser.lr=1: model has no key 'optimiser' (it has _target_, kernel_size, "
        "sigma, generator, optimizer, scheduler); a new key takes a +: +model.optimiser.lr=1",
    ),
    "run folder without a config": (
        "train.py",
        ["resume={not_a_run}"],
        "error: resume={not_a_run}: not a run folder (no .hydra/config.yaml in it)",
    ),
}


@pytest.mark.parametrize("name", list(CLI_FAILURES))
def test_command_line_failure_is_one_line(cli_failures, name):
    result, expected, outputs = cli_failures[name]
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.splitlines() == [expected]
    assert not list(outputs.rglob("metrics.json")) and not list(outputs.rglob("*.ckpt"))


# --------------------------------------------------------------------------- saving


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"state_dict": {}, "global_step": 1}, path)

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left") as error:
        io_plugin.save_checkpoint({"state_dict": {}, "global_step": 2}, path)
    monkeypatch.undo()
    assert error.value.filename == str(path)  # named, however deep the write failed
    assert read_checkpoint(path)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


# train.py, killed halfway through writing last.ckpt at step 4 (the one at step 2 is on disk).
DIE_SAVING = """
import io, os, runpy, signal, sys
import torch

save = torch.save


def dying_save(obj, f):
    if ".last.ckpt." in getattr(f, "name", "") and obj["global_step"] == 4:
        buffer = io.BytesIO()
        save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, f)


torch.save = dying_save
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def train_smoke_run(script: str, run: Path, log_dir: Path, data_dir: Path):
    """A 4-step steerable run in ``run``: train.py, run by ``script`` (which wraps what it
    does, DIE_SAVING say)."""
    overrides = [
        "experiment=steerable",
        *smoke_overrides("steerable"),
        "test=false",
        f"hydra.run.dir={run}",
        f"paths.log_dir={log_dir}",
        f"paths.data_dir={data_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-c", script, *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_while_saving_resumes_from_the_previous_checkpoint(tmp_path, data_dir):
    """SIGKILL in the middle of writing last.ckpt: the previous last.ckpt stays whole, and
    ``train.py resume=<run folder>`` continues the run from it, in the same folder."""
    run, outputs = tmp_path / "run", tmp_path / "outputs"
    killed = train_smoke_run(DIE_SAVING, run, outputs, data_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    (left,) = (run / "checkpoints").glob(".last.ckpt.*.tmp")  # what the kill left
    assert left.stat().st_size > 0
    assert read_checkpoint(last)["global_step"] == 2

    resumed = run_script("train.py", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Run folder: {run}" in resumed.stdout
    assert read_checkpoint(last)["global_step"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["resumed_from"] == "checkpoints/last.ckpt"
    assert not outputs.exists()  # no other run folder


def test_the_commit_is_left_out_where_git_is_missing(tmp_path, monkeypatch):
    checkpoints.code_version.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run
    try:
        assert checkpoints.code_version() == {"version": "0.1.0", "commit": None}
    finally:
        checkpoints.code_version.cache_clear()


# train.py, whose disk fills up while it writes last.ckpt at step 4 (the one at step 2 is on disk).
DISK_FULL_SAVING = DIE_SAVING.replace(
    "os.kill(os.getpid(), signal.SIGKILL)", "raise OSError(28, os.strerror(28))"
)


def test_a_full_disk_while_training_is_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, data_dir
):
    run = tmp_path / "run"
    full = train_smoke_run(DISK_FULL_SAVING, run, tmp_path, data_dir)
    last = run / "checkpoints" / "last.ckpt"
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: cannot write {last}: No space left on device"]
    assert read_checkpoint(last)["global_step"] == 2
    assert not list(run.glob("checkpoints/.*.tmp")) and not (run / "metrics.json").exists()


@pytest.mark.parametrize("writer", ["checkpoint", "metrics", "data cache", "figure"])
def test_every_write_of_the_project_is_all_or_nothing_and_names_its_file(
    tmp_path, monkeypatch, writer
):
    """The disk refuses the new file (here: when it is flushed, where a full disk shows up):
    the previous file stays whole, no temporary file is left, and the error is one line that
    names the file."""
    run = RunFolder(tmp_path)
    writers = {
        "checkpoint": (
            "last.ckpt",
            lambda value: AtomicCheckpointIO().save_checkpoint(
                {"state_dict": {}, "global_step": value}, tmp_path / "last.ckpt"
            ),
            lambda path: read_checkpoint(path)["global_step"],
        ),
        "metrics": (
            "metrics.json",
            lambda value: write_text(tmp_path / "metrics.json", json.dumps({"steps": value})),
            lambda path: json.loads(path.read_text())["steps"],
        ),
        "data cache": (
            "cache.h5",
            lambda value: write_h5_atomic(tmp_path / "cache.h5", {"x": np.full(3, value)}),
            lambda path: int(read_frames_of(path)),
        ),
        "figure": (
            "filter_flow.png",
            lambda value: run.write_images({"filter_flow": torch.full((3, 4, 4), value)}),
            lambda path: Image.open(path).getpixel((0, 0))[0],
        ),
    }
    name, write, read = writers[writer]
    write(1)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as error:
        write(2)
    monkeypatch.undo()
    assert one_line(error.value) == f"cannot write {tmp_path / name}: No space left on device"
    assert read(tmp_path / name) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def read_frames_of(path: Path) -> float:
    with h5py.File(path) as f:
        return f["x"][0]


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (OSError(errno.EROFS, "Read-only file system", "out/m.json"), "cannot write out/m.json: "),
        (OSError(errno.EACCES, "Permission denied", "out/.lock"), "cannot write out/.lock: "),
        (MemoryError("Unable to allocate 9.8 GiB"), "out of memory (Unable to allocate 9.8 GiB)"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried"), "out of memory (CUDA out of memory)"),
        (RuntimeError("DataLoader worker (pid 7) is killed by signal: Killed. "), "a data loader"),
    ],
)
def test_a_disk_or_memory_that_runs_out_is_one_line(error, line):
    assert one_line(error).startswith(line)
    if "memory" in one_line(error) or "data loader" in line:
        assert one_line(error).endswith("lower data.batch_size, or data.num_workers (each worker "
                                        "holds batches of its own)")  # fmt: skip
    assert one_line(RuntimeError("a bug")) is None  # keeps its traceback


# --------------------------------------------------------------------------- one run at a time


def test_a_second_run_into_a_folder_in_use_stops_at_once(tmp_path, data_dir):
    """The first run holds the folder (here: stopped right after taking it); a second train.py
    into it stops with one line naming it and the first run, and the first ends intact."""
    run = tmp_path / "run"
    common = [f"hydra.run.dir={run}", f"paths.log_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    first_overrides = ["experiment=steerable", *smoke_overrides("steerable"), "test=false"]
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *first_overrides, *common],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = run / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text() and (run / RUN_CONFIG).is_file()):
        assert time.monotonic() < deadline and first.poll() is None, "the first run did not start"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # it holds the folder, whatever a slow machine does
    try:
        second = run_script("train.py", "experiment=steerable", "seed=7", *common)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=300)
    assert second.returncode == 1
    command = shlex.join(["python", str(ROOT / "train.py"), *first_overrides, *common])
    assert second.stderr.splitlines() == [
        f"error: {run} is in use by process {first.pid} ({command}); wait for that run to end, or "
        "give this one another folder"
    ]
    assert first.returncode == 0, stderr[-3000:]
    recorded = [*first_overrides, *common[1:]]  # Hydra records hydra.run.dir elsewhere
    assert list(OmegaConf.load(run / ".hydra" / "overrides.yaml")) == recorded
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert lock.read_text() == ""  # given back


def test_the_lock_of_a_run_that_is_gone_is_taken_over_with_a_note(tmp_path, capsys):
    (tmp_path / ".lock").write_text("4194304 (python train.py experiment=steerable)\n")
    folder = RunFolder(tmp_path)
    folder.lock()
    try:
        assert capsys.readouterr().err == (
            f"note: {tmp_path}: took over the lock of process 4194304, which is gone\n"
        )
        assert (tmp_path / ".lock").read_text().startswith(f"{os.getpid()} (python ")
    finally:
        folder.unlock()
