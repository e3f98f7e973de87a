"""Run folders that describe themselves: ``train.py resume=<run>`` continues a run in its own
folder with its saved config, ``eval.py run=<run>`` evaluates it with that config, and the other
overrides on the command line go on top and into the run's record."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import OverrideParseException
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from dfn.errors import InputError
from dfn.run.cli import reporting_user_errors

RUN_CONFIG = Path(".hydra") / "config.yaml"  # the composed config Hydra saves in a run folder
# The key that names a run on the command line -> the config in configs/ that composes it.
RUN_KEYS = {"resume": "resume", "run": "eval_run"}
OPTION = re.compile(r"[\w./-]+")  # a config group option, not a sweep or an interpolation


def run_folder(path: Path) -> Path | None:
    """The run folder that ``path`` is, or that holds the checkpoint ``path``
    (``<run>/checkpoints/<name>.ckpt``); None if there is none."""
    candidates = [path] if path.is_dir() else [path.parent, path.parent.parent]
    return next((folder for folder in candidates if (folder / RUN_CONFIG).is_file()), None)


def hydra_string(value: str) -> str:
    """``value`` quoted for a Hydra override, so that commas, spaces and quotes in a path stay
    in it. Hydra's grammar escapes a quote, and the backslashes before a quote or the end."""
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


def command_line(argv: list[str], key: str, configs: Path) -> list[str]:
    """``argv`` for Hydra, checked. ``key=<run folder, or a checkpoint in one>`` (train.py's
    ``resume``, eval.py's ``run``) becomes the options that compose the run's saved config
    (configs/resume.yaml, configs/eval_run.yaml) from that checkpoint, ``last.ckpt`` for a
    folder; the other overrides apply on top."""
    overrides = [arg for arg in argv[1:] if not arg.startswith("-")]
    check_choices(overrides, configs)
    given = [arg for arg in overrides if arg.startswith(f"{key}=")]
    if not given:
        check_keys(argv, configs)
        return argv
    value = given[-1].partition("=")[2]
    path = Path(value).expanduser().resolve()
    if not path.exists():
        raise InputError(f"{key}={value}: no such run folder or checkpoint")
    run = run_folder(path)
    if run is None:
        raise InputError(f"{key}={value}: not a run folder (no {RUN_CONFIG} in it)")
    checkpoint = path if path.is_file() else run / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise InputError(
            f"{key}={value}: the run has no {checkpoint.relative_to(run)}; it stopped before its "
            "first checkpoint, so start it again"
        )
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
    argv = [
        argv[0],
        f"--config-name={RUN_KEYS[key]}",
        f"hydra.searchpath=[{hydra_string(f'file://{run / RUN_CONFIG.parent}')}]",
        f"++{key}={hydra_string(str(run))}",
        f"ckpt_path={hydra_string(str(checkpoint))}",
        *(arg for arg in argv[1:] if arg not in given),
    ]
    check_keys(argv, configs)
    return argv


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def record_resume(run: Path, cfg: DictConfig) -> None:
    """Keep a resumed run's folder describing it: ``.hydra/config.yaml`` becomes the config it
    continues with, and this command line's overrides go at the end of ``.hydra/overrides.yaml``
    (which then replays the whole run's configuration)."""
    hydra_dir = run / RUN_CONFIG.parent
    plumbing = {*RUN_KEYS, "ckpt_path"}  # what command_line adds
    overrides = HydraConfig.get().overrides.task
    new = [o for o in overrides if o.lstrip("+").split("=")[0] not in plumbing]
    record = hydra_dir / "overrides.yaml"
    earlier = list(OmegaConf.load(record)) if record.is_file() else []
    write_text_atomic(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text_atomic(record, OmegaConf.to_yaml(OmegaConf.create([*earlier, *new])))


def separate_csv_logs(cfg: DictConfig, step: int) -> None:
    """Lightning's CSVLogger deletes the ``metrics.csv`` it finds in its folder, so a run resumed
    in place writes its CSV rows to a folder of their own: ``csv/resumed_at_step_<step>/``."""
    for logger in (cfg.get("logger") or {}).values():
        if logger and str(logger.get("_target_")).endswith(".CSVLogger"):
            logger.version = f"resumed_at_step_{step}"


def resume_command(checkpoint: Path) -> str:
    """The train.py command line that resumes this run from ``checkpoint``."""
    run = run_folder(checkpoint)
    if run is not None:
        target = run if checkpoint == run / "checkpoints" / "last.ckpt" else checkpoint
        return shlex.join(["python", "train.py", f"resume={target}"])
    overrides = ["<overrides>"]  # no saved config (hydra.output_subdir=null): repeat them
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    return shlex.join(["python", "train.py", *overrides, f"ckpt_path={checkpoint}"])


class CreateRunFolder(HydraCallback):
    """Create the run or sweep folder before Hydra does, so that one that cannot be created
    (an unwritable or missing disk, a file in the way) is one line, not a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        create_folder(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        create_folder(config.hydra.sweep.dir, "hydra.sweep.dir")


def create_folder(folder: str, key: str) -> None:
    with reporting_user_errors():
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the run folder {key}={folder}: {e.strerror}") from e
