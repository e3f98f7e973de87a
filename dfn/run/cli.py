"""What the command-line entry points share: a run named by its folder (``train.py resume=<run>``,
``eval.py run=<run>``), the run folder taken before Hydra writes into it, and every failure that
is the user's to fix (bad input, a full or read-only disk, too little memory) as one line."""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import InstantiationException, OverrideParseException
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dfn.errors import InputError
from dfn.files import causes
from dfn.run.folder import RUN_CONFIG, RunFolder, named_checkpoint

# The key that names a run on the command line -> the config in configs/ that composes it.
RUN_KEYS = {"resume": "resume", "run": "eval_run"}
OPTION = re.compile(r"[\w./-]+")  # a config group option, not a sweep or an interpolation
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
MEMORY = "lower data.batch_size, or data.num_workers (each worker holds batches of its own)"


def config_node(error: InstantiationException) -> str | None:
    """The config node whose object Hydra failed to build, e.g. ``model.predictor.filtering``.

    Hydra 1.3 has no attribute for it: the node ends the exception's message, after
    ``full_key:``. tests/test_frameworks.py fails if a Hydra release changes that.
    """
    _, found, key = str(error).rpartition("\nfull_key: ")
    return key.strip() if found else None


def killed_worker(error: BaseException) -> bool:
    """Whether ``error`` is PyTorch's report of a DataLoader worker killed by SIGKILL, which on
    Linux is the kernel's out-of-memory killer. PyTorch says so only in the message;
    tests/test_frameworks.py fails if a release changes it."""
    return isinstance(error, RuntimeError) and bool(
        re.search(r"DataLoader worker \(pid [^)]*\) is killed by signal: Killed", str(error))
    )


def one_line(error: BaseException) -> str | None:
    """The line that tells the user what went wrong, for an error that is theirs to fix; None
    for a bug, which keeps its traceback.

    An InputError anywhere in the chain is one, and so is a ValueError that a constructor
    raised while Hydra built it from the config (an op or layer rejecting its options), a disk
    that refuses a write, and memory that runs out.
    """
    node, built = None, False
    for cause in causes(error):
        if isinstance(cause, InputError) or (built and isinstance(cause, ValueError)):
            where = f"{node}: " if node and f"{node}." not in str(cause) else ""
            return f"{where}{cause}"
        if isinstance(cause, OSError) and cause.errno in DISK_ERRORS:
            name = f" {cause.filename}" if cause.filename else ""
            return f"cannot write{name}: {cause.strerror}"
        if isinstance(cause, MemoryError) or type(cause).__name__ == "OutOfMemoryError":
            what = str(cause).split(". ")[0] or type(cause).__name__
            return f"out of memory ({what}): {MEMORY}"
        if killed_worker(cause):
            return f"a data loader worker was killed, most likely out of memory: {MEMORY}"
        built = isinstance(cause, InstantiationException)
        if built:
            node = config_node(cause) or node
    return None


@contextmanager
def reporting_user_errors() -> Iterator[None]:
    """Report a user's error as one line on stderr, exit code 1 (HYDRA_FULL_ERROR=1: traceback)."""
    try:
        yield
    except Exception as e:
        line = one_line(e)
        if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(1) from None


def hydra_string(value: str) -> str:
    """``value`` as a Hydra override's value: as it is when plain, else quoted, so that commas,
    spaces and quotes in a path stay in it. Hydra's grammar escapes a quote, and the backslashes
    before a quote or the end."""
    if OPTION.fullmatch(value):
        return value
    escaped = re.sub(r"(\\*)('|\Z)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def check_choices(overrides: list[str], configs: Path) -> None:
    """A config group option that does not exist (``experiment=moving_mnistt``) is one line."""
    for override in overrides:
        name, _, option = override.partition("=")
        group = configs / name.lstrip("+")
        if name.startswith("hydra") or not group.is_dir() or not OPTION.fullmatch(option):
            continue  # Hydra's own groups take options from its plugins too
        if option != "null" and not (group / f"{option}.yaml").is_file():
            options = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
            raise InputError(f"{override}: no such config; configs/{group.name}/ has {options}")


def check_keys(argv: list[str], configs: Path) -> None:
    """A key that the composed config does not have (``model.optimiser.lr=1``: a typo, or a new
    key without its ``+``) is one line. The config is composed from the config groups chosen;
    values, and sweeps over them, are left to Hydra, as is a sweep over config groups."""
    try:
        overrides = OverridesParser.create().parse_overrides(
            [arg for arg in argv[1:] if not arg.startswith("-")]
        )
    except OverrideParseException:
        return  # Hydra says what is wrong with the syntax
    config_name = next(
        (a.partition("=")[2] for a in argv[1:] if a.startswith("--config-name=")), "train"
    )
    groups = [o for o in overrides if (configs / o.key_or_group).is_dir()]
    if any(o.is_sweep_override() for o in groups):
        return
    composing = [o.input_line for o in groups if o.input_line]
    composing += [o.input_line for o in overrides if o.key_or_group == "hydra.searchpath"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(configs.resolve()), version_base="1.3"):
        cfg = compose(config_name, overrides=composing)
    for override in overrides:
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or key.startswith("hydra") or override in groups:
            continue
        parts = key.split(".")
        for i, part in enumerate(parts):
            node = OmegaConf.select(cfg, ".".join(parts[:i]), throw_on_resolution_failure=False)
            if not isinstance(node, DictConfig):
                break  # inside a list or a value: Hydra's to judge
            if part not in node:
                where = ".".join(parts[:i]) or "the config"
                raise InputError(
                    f"{override.input_line}: {where} has no key {part!r} (it has "
                    f"{', '.join(map(str, node))}); a new key takes a +: +{override.input_line}"
                )
        follows = followed(cfg, key)
        if follows:
            raise InputError(
                f"{override.input_line}: {key} follows {follows} (the config interpolates it, so "
                f"that the data serves what the model reads); set {follows} instead"
            )


def followed(cfg: DictConfig, key: str) -> str | None:
    """The model setting that ``key`` (a data setting, say) takes from the model by
    interpolation in the composed config (``data.num_input: ${model.num_input}``); None if it
    takes none."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    if key.startswith("model.") or not isinstance(node, DictConfig) or name not in node:
        return None
    raw = OmegaConf.to_container(node, resolve=False)[name]
    found = re.fullmatch(r"\$\{(model\.[\w.]+)\}", raw) if isinstance(raw, str) else None
    return found[1] if found else None


def command_line(argv: list[str], key: str, configs: Path) -> list[str]:
    """``argv`` for Hydra, checked. ``key=<run folder, or a checkpoint in one>`` (train.py's
    ``resume``, eval.py's ``run``) becomes the options that compose the run's saved config
    (configs/resume.yaml, configs/eval_run.yaml) with the other overrides on top. The paths stay
    as typed, so that the new run's record reads as the command did."""
    overrides = [arg for arg in argv[1:] if not arg.startswith("-")]
    check_choices(overrides, configs)
    given = [arg for arg in overrides if arg.startswith(f"{key}=")]
    if not given:
        check_keys(argv, configs)
        return argv
    value = given[-1].partition("=")[2]
    run, checkpoint = named_checkpoint(value, key)
    for override in overrides:
        name = override.partition("=")[0].lstrip("+~")
        if name == "ckpt_path":
            raise InputError(
                f"{key}= names the checkpoint ({key}=<run>/checkpoints/<file>.ckpt); "
                f"leave out {override}"
            )
        if (configs / name).is_dir():
            raise InputError(
                f"{override}: {key}= uses the run's composed config, where no config group can be "
                "chosen; set values instead (e.g. trainer.accelerator=gpu)"
            )
    naming = [f"{key}={hydra_string(value)}"]  # eval.py finds the checkpoint from it
    if key == "resume":  # continued in the run's folder, from the checkpoint
        naming = [
            f"resume={hydra_string(str(run.path))}",
            f"ckpt_path={hydra_string(str(checkpoint))}",
        ]
    argv = [
        argv[0],
        f"--config-name={RUN_KEYS[key]}",
        f"hydra.searchpath=[{hydra_string(f'file://{(run.path / RUN_CONFIG.parent).resolve()}')}]",
        *naming,
        *(arg for arg in argv[1:] if arg not in given),
    ]
    check_keys(argv, configs)
    return argv


class TakeRunFolder(HydraCallback):
    """Create the run (or sweep) folder and take its lock before Hydra writes into it, so that a
    folder that cannot be written is one line, not a traceback, and a folder that another run is
    using stops this one before anything of either is overwritten. Under DDP, rank 0 holds it."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        take(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        take(config.hydra.sweep.dir, "hydra.sweep.dir")


def take(folder: str, key: str) -> None:
    with reporting_user_errors():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the run folder {key}={folder}: {e.strerror}") from e
        if rank_zero_only.rank == 0:
            RunFolder(folder).lock()
