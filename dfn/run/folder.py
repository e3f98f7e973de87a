"""A run folder as one object: the run's saved config (``.hydra/``), ``metrics.json``, checkpoints,
logs and figures, and the lock that keeps it to one run at a time.

Paths in a run's records are relative, so that a record reads the same on every machine: in
``metrics.json`` relative to the run folder (``checkpoints/step_002000.ckpt``; an evaluation's
``../../runs/<run>``), in ``.hydra/overrides.yaml`` as typed on the command line (relative to
where it was run). Records written before this held absolute paths; they are read as they are.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shlex
import sys
from pathlib import Path
from typing import IO, Any, NamedTuple

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dfn.errors import InputError
from dfn.files import write_text
from dfn.run.checkpoints import load_checkpoint
from dfn.tasks.visualize import write_png

RUN_CONFIG = Path(".hydra") / "config.yaml"  # the composed config Hydra saves in a run folder
OVERRIDES = Path(".hydra") / "overrides.yaml"  # the command line's overrides, as typed
METRICS = "metrics.json"
LAST = Path("checkpoints") / "last.ckpt"
LOCK = ".lock"
# What names a run on the command line (train.py's resume=, eval.py's run=, and the ckpt_path
# dfn/run/cli.py adds): which run, not what it trains.
PLUMBING = ("resume", "run", "ckpt_path")


class Trained(NamedTuple):
    """What a run trained, built again: its data module, its model with the checkpoint's
    weights, and the training step they are from."""

    datamodule: L.LightningDataModule
    model: L.LightningModule
    step: int


class RunFolder:
    """The folder ``path`` of one run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def current(cls) -> RunFolder:
        """The folder of the run that Hydra is running."""
        return cls(HydraConfig.get().runtime.output_dir)

    @classmethod
    def containing(cls, path: str | Path) -> RunFolder | None:
        """The run folder that ``path`` is, or that holds the checkpoint ``path``
        (``<run>/checkpoints/<name>.ckpt``); None if there is none."""
        path = Path(path)
        candidates = [path] if path.is_dir() else [path.parent, path.parent.parent]
        return next((cls(p) for p in candidates if (p / RUN_CONFIG).is_file()), None)

    @staticmethod
    def named_by(value: str) -> str:
        """The run folder that ``run=<value>`` names, by its layout: ``value`` itself, or for a
        checkpoint ``<run>/checkpoints/<name>.ckpt`` (which need not be on this machine)."""
        path = Path(value)
        return str(path.parent.parent if path.suffix == ".ckpt" else path)

    # ------------------------------------------------------------------ the records

    @property
    def config(self) -> DictConfig | None:
        """The run's composed config; None for a folder without one."""
        path = self.path / RUN_CONFIG
        return OmegaConf.load(path) if path.is_file() else None

    @property
    def overrides(self) -> list[str]:
        """The overrides of the command lines that made the run, in order, as typed. (eval.py's
        records before relative paths held ``++run=<folder> ckpt_path=<checkpoint>``, both
        absolute: they read as ``run=<checkpoint>``, relative to the working directory.)"""
        path = self.path / OVERRIDES
        recorded = [str(o) for o in OmegaConf.load(path)] if path.is_file() else []
        if not any(o.startswith("++run=") for o in recorded):
            return recorded
        parsed = OverridesParser.create().parse_overrides(recorded)
        checkpoint = next(o.value() for o in parsed if o.key_or_group == "ckpt_path")
        rest = [o for o in recorded if not o.startswith(("++run=", "ckpt_path="))]
        return [f"run={typed(Path(checkpoint))}", *rest]

    @property
    def metrics(self) -> dict[str, Any]:
        path = self.path / METRICS
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def last_checkpoint(self) -> Path:
        return self.path / LAST

    @property
    def figures(self) -> list[Path]:
        """The figures its test drew, beside metrics.json, in the order it drew them."""
        return [self.path / name for name in self.metrics.get("figures", [])]

    def record(self, path: str | Path) -> str:
        """``path`` as the run's metrics.json holds it: relative to the run folder."""
        return os.path.relpath(Path(path).resolve(), self.path.resolve())

    def resolve(self, recorded: str) -> Path:
        """A path that the run's metrics.json holds: relative to the run folder, or absolute in
        older records."""
        return Path(os.path.normpath(self.path / recorded))

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics`` as metrics.json, all or nothing. Where it exists (a resumed run), its
        content goes to the end of the new one's ``history``: the latest fit at the top level,
        the earlier ones in order below it."""
        earlier = self.metrics
        if earlier:
            metrics = {**metrics, "history": [*earlier.pop("history", []), earlier]}
        text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
        return write_text(self.path / METRICS, text)

    def write_images(self, images: dict[str, Tensor]) -> list[Path]:
        """Images [C, H, W] by name as PNG files beside metrics.json (``filter_flow.png``)."""
        return [write_png(self.path / f"{name}.png", image) for name, image in images.items()]

    # ------------------------------------------------------------------ the model it trained

    def build(self, checkpoint: str | Path | None = None, **data_options: Any) -> Trained:
        """The run's data module (its saved settings, ``data_options`` on top) and model, the
        model with the weights of ``checkpoint`` (its last.ckpt by default), read as weights only
        and checked against the model, in eval mode; and the step the weights are from."""
        cfg = self.config
        if cfg is None:
            raise InputError(f"{self.path}: not a run folder (no {RUN_CONFIG} in it)")
        path = Path(checkpoint) if checkpoint is not None else self.last_checkpoint
        datamodule = hydra.utils.instantiate(cfg.data, **data_options)
        model = hydra.utils.instantiate(cfg.model)
        state = load_checkpoint(path, cfg.name, model)
        model.load_state_dict(state["state_dict"])
        return Trained(datamodule, model.eval(), state["global_step"])

    # ------------------------------------------------------------------ one run at a time

    def lock(self) -> None:
        """Take the folder for this process until it exits: ``.lock`` holds the owner's process
        id and command, under an OS lock that the system releases when the process ends, however
        it ends. A folder that a live run holds stops this one with one line; the lock of a run
        that is gone is taken over, with a note."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = (self.path / LOCK).open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise InputError(
                f"{self.path} is in use by process {owner}; wait for that run to end, or give "
                "this one another folder"
            ) from None
        lock.seek(0)
        gone = lock.read().split(" ", 1)[0]
        if gone:
            print(f"note: {self.path}: took over the lock of process {gone}, which is gone",
                  file=sys.stderr)  # fmt: skip
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()} ({shlex.join(['python', *sys.argv])})\n")
        lock.flush()
        self._lock = lock  # held while the file stays open: for the life of the process
        atexit.register(self.unlock)

    def unlock(self) -> None:
        """Give the folder back: the lock file is emptied and released."""
        if self._lock is not None:
            self._lock.truncate(0)
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ resuming in place

    def resume_from(self, cfg: DictConfig, model: L.LightningModule) -> str | None:
        """The checkpoint ``cfg.ckpt_path`` that the run goes on from (None for a new run),
        before the trainer is built: read as weights only and checked against ``model``, with
        steps left to train. With ``resume=`` (this folder's run, continued in place), this
        session writes its CSV rows to ``csv/resumed_at_step_<step>/``: Lightning's CSVLogger
        deletes the ``metrics.csv`` it finds."""
        path = cfg.get("ckpt_path")
        if not path:
            return None
        step = load_checkpoint(path, cfg.name, model)["global_step"]
        max_steps = cfg.trainer.max_steps
        if 0 <= max_steps <= step:
            raise InputError(
                f"{path} is at step {step}, and trainer.max_steps={max_steps}: nothing is left "
                "to train; give a larger trainer.max_steps"
            )
        for logger in (cfg.get("logger") or {}).values() if cfg.get("resume") else ():
            if logger and str(logger.get("_target_")).endswith(".CSVLogger"):
                logger.version = f"resumed_at_step_{step}"
        return path

    def record_resume(self, cfg: DictConfig) -> None:
        """Keep the folder describing the resumed run, once its config is checked:
        ``.hydra/config.yaml`` becomes the config it continues with, and this command line's
        overrides go at the end of ``.hydra/overrides.yaml`` (which then replays the whole run's
        configuration)."""
        new = [
            o
            for o in HydraConfig.get().overrides.task
            if o.lstrip("+").split("=")[0] not in PLUMBING
        ]
        write_text(self.path / RUN_CONFIG, OmegaConf.to_yaml(cfg))
        write_text(
            self.path / OVERRIDES, OmegaConf.to_yaml(OmegaConf.create([*self.overrides, *new]))
        )


def named_checkpoint(value: str, key: str) -> tuple[RunFolder, Path]:
    """The run folder and the checkpoint that ``key=value`` names on the command line (train.py's
    ``resume=``, eval.py's ``run=``): a run folder (its last.ckpt) or a checkpoint in one; one
    line for each way it is not."""
    path = Path(value).expanduser()
    if not path.exists():
        raise InputError(f"{key}={value}: no such run folder or checkpoint")
    run = RunFolder.containing(path)
    if run is None:
        raise InputError(f"{key}={value}: not a run folder (no {RUN_CONFIG} in it)")
    checkpoint = path if path.is_file() else run.last_checkpoint
    if not checkpoint.is_file():
        raise InputError(
            f"{key}={value}: the run has no {LAST}; it stopped before its first checkpoint, so "
            "start it again"
        )
    return run, checkpoint


def resume_command(checkpoint: Path) -> str:
    """The train.py command line that resumes a run from ``checkpoint``: by its folder, relative
    to the working directory where it lies under it."""
    run = RunFolder.containing(checkpoint)
    if run is not None:
        target = run.path if checkpoint == run.last_checkpoint else checkpoint
        return shlex.join(["python", "train.py", f"resume={typed(target)}"])
    overrides = ["<overrides>"]  # no saved config (hydra.output_subdir=null): repeat them
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    return shlex.join(["python", "train.py", *overrides, f"ckpt_path={typed(checkpoint)}"])


def typed(path: Path) -> str:
    """``path`` as a user types it: relative to the working directory where it lies under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
