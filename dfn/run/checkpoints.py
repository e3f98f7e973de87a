"""Checkpoints as a trust boundary: each one says which experiment and model it belongs to, is
written atomically, and is read as plain weights only (``weights_only=True``), so that a file of
unknown origin or of another experiment stops the run with one line instead of a traceback.
This is the one module that loads a checkpoint."""

from __future__ import annotations

import functools
import importlib.metadata
import pickle
import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dfn.errors import InputError
from dfn.files import replacing

IDENTITY = "dfn"  # the checkpoint's key for the block written by CheckpointIdentity


@functools.cache
def code_version() -> dict[str, str | None]:
    """The package version and the git commit of this code (``-dirty`` with uncommitted
    changes); None where unknown: not installed, no git, or not a checkout."""
    try:
        version = importlib.metadata.version("dfn")
    except importlib.metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed copy: a repository above it is not its own
        return {"version": version, "commit": None}

    def git(*args: str) -> str:
        command = ["git", "-C", str(root), *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError):
        return {"version": version, "commit": None}
    return {"version": version, "commit": commit + ("-dirty" if status else "")}


def identity(experiment: str, model: LightningModule) -> dict[str, Any]:
    model_class = type(model)
    return {
        "experiment": experiment,
        "model": f"{model_class.__module__}.{model_class.__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
        **code_version(),
    }


class CheckpointIdentity(Callback):
    """Write the experiment's name, the model's class and parameter count, the package version
    and the git commit into every checkpoint, under ``checkpoint["dfn"]``."""

    def __init__(self, experiment: str) -> None:
        self.experiment = experiment

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict):
        checkpoint[IDENTITY] = identity(self.experiment, pl_module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint all or nothing (``dfn.files.replacing``): a kill or a full disk while
    saving leaves the previous file whole. (Lightning's own save stages the file in the system's
    temporary folder and moves it, which copies, not renames, when that is another file
    system.)"""

    def save_checkpoint(
        self, checkpoint: dict, path: str | Path, storage_options: object = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with replacing(path) as tmp, tmp.open("wb") as f:
            torch.save(checkpoint, f)


def unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in the user's words."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a folder, not a checkpoint file"
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        return e.strerror or str(e)
    if not head:
        return "an empty file"
    if isinstance(error, pickle.UnpicklingError):
        code = re.search(r"GLOBAL ([\w.]+)", str(error))
        if code:
            return f"loading it would run code ({code[1]}); checkpoints are read as weights only"
        if head.startswith(b"\x80"):
            return "a pickle that is not plain weights; checkpoints are read as weights only"
    if head.startswith(b"PK\x03\x04"):
        return "truncated or corrupt (not a complete PyTorch zip archive)"
    return "not a PyTorch checkpoint"


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path``, loaded as plain weights; one InputError for every way it can
    fail to be one."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever the file holds, its failure is the user's to fix
        raise InputError(f"cannot load {path}: {unreadable(path, e)}") from e
    if not isinstance(checkpoint, dict) or not {"state_dict", "global_step"} <= checkpoint.keys():
        raise InputError(f"cannot load {path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def check_checkpoint(
    checkpoint: dict, path: str | Path, experiment: str, model: LightningModule
) -> None:
    """Check that the ``checkpoint`` read from ``path`` belongs to ``experiment`` and fits
    ``model``, before Lightning loads it. Checkpoints written before they carried an identity
    pass when their tensors have the model's shapes."""
    found, expected = checkpoint.get(IDENTITY), identity(experiment, model)
    if found and found["experiment"] != experiment:
        raise InputError(
            f"{path} is a checkpoint of experiment {found['experiment']}, not of {experiment} "
            "(the experiment asked for)"
        )
    if found and any(found[key] != expected[key] for key in ("model", "parameters")):
        raise InputError(
            f"{path} is a checkpoint of experiment {experiment} with a {found['model']} of "
            f"{found['parameters']:,} parameters, but this config builds a {expected['model']} "
            f"of {expected['parameters']:,}: the run was configured differently"
        )
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    stored = {k: list(v.shape) for k, v in checkpoint["state_dict"].items()}
    differ = sorted(k for k in shapes.keys() | stored.keys() if shapes.get(k) != stored.get(k))
    if differ:
        name = differ[0]
        raise InputError(
            f"{path} does not fit experiment {experiment}'s model: {len(differ)} tensors differ "
            f"(e.g. {name}: {stored.get(name, 'absent')} in the file, {shapes.get(name, 'absent')}"
            " in the model); is it a checkpoint of another experiment or config?"
        )


def load_checkpoint(path: str | Path, experiment: str, model: LightningModule) -> dict:
    """The checkpoint at ``path``, read as plain weights and checked to belong to ``experiment``
    and to fit ``model``: how the project opens a checkpoint (one line if it cannot)."""
    checkpoint = read_checkpoint(path)
    check_checkpoint(checkpoint, path, experiment, model)
    return checkpoint
