"""Trained weights that ship with the project: ``pretrained/<experiment>.pt``.

A file is a Lightning checkpoint cut down to what a model needs: its weights in float32, the
training step, the checkpoint's identity record (``checkpoint["dfn"]``), the model's composed
config and where it was trained; no optimizer state. So ``eval.py pretrained=<experiment>``
tests it like any checkpoint, and ``dfn.pretrained("<experiment>")`` builds the model without
the configs.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from lightning import LightningModule
from omegaconf import OmegaConf

from dfn.errors import InputError
from dfn.run.checkpoints import IDENTITY, AtomicCheckpointIO, check_checkpoint, read_checkpoint
from dfn.run.folder import RunFolder

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"
# What Lightning reads from a checkpoint to test it, besides the weights.
KEPT = ("global_step", "epoch", "pytorch-lightning_version", IDENTITY)


def pretrained_path(experiment: str) -> Path:
    """``pretrained/<experiment>.pt``; one line naming the ones there are if it is not there."""
    path = PRETRAINED / f"{experiment}.pt"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PRETRAINED.glob("*.pt"))) or "none"
        raise InputError(f"pretrained={experiment}: no such weights; pretrained/ has {shipped}")
    return path


def export(checkpoint_path: str | Path, out: str | Path | None = None) -> Path:
    """Write the weights of a run's checkpoint as ``pretrained/<experiment>.pt`` (or ``out``)."""
    checkpoint_path = Path(checkpoint_path)
    checkpoint = read_checkpoint(checkpoint_path)
    run = RunFolder.containing(checkpoint_path.resolve())
    if run is None or IDENTITY not in checkpoint:
        raise InputError(
            f"{checkpoint_path}: not a checkpoint in a run folder with its identity record; "
            f"export takes <run>/checkpoints/<file>.ckpt of a run of this code"
        )
    cfg = run.config
    experiment = checkpoint[IDENTITY]["experiment"]
    weights = {
        name: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in checkpoint["state_dict"].items()
    }
    record = {
        "state_dict": weights,
        **{key: checkpoint[key] for key in KEPT},
        "model_config": OmegaConf.to_container(cfg.model, resolve=True),
        "trained": {"run": run.path.name, "checkpoint": checkpoint_path.name},
    }
    out = Path(out) if out is not None else PRETRAINED / f"{experiment}.pt"
    AtomicCheckpointIO().save_checkpoint(record, out)
    return out


def pretrained_argv(argv: list[str]) -> list[str]:
    """eval.py's ``pretrained=<experiment>``: the experiment's config; ``evaluate`` takes the
    weights from pretrained/, so the record reads as the command did."""
    given = [arg for arg in argv[1:] if arg.startswith("pretrained=")]
    if not given:
        return argv
    experiment = given[-1].partition("=")[2]
    for arg in argv[1:]:
        if arg.partition("=")[0].lstrip("+~") in ("experiment", "ckpt_path", "run"):
            raise InputError(
                f"pretrained={experiment} names the experiment and its weights; leave out {arg}"
            )
    pretrained_path(experiment)  # one line now if there are none
    rest = [arg for arg in argv[1:] if arg not in given]
    # eval.yaml, where the key is, for check_keys
    return [argv[0], "--config-name=eval", f"experiment={experiment}", *given[-1:], *rest]


def load(source: str | Path) -> tuple[LightningModule, dict]:
    """The model in an exported file (``source`` a path) or in ``pretrained/<source>.pt``, in
    eval mode, and the file's record without the weights (its identity, step, origin)."""
    path = Path(source)
    if path.suffix != ".pt" or not path.is_file():
        path = pretrained_path(str(source))
    checkpoint = read_checkpoint(path)
    if "model_config" not in checkpoint or IDENTITY not in checkpoint:
        raise InputError(f"cannot load {path}: not written by scripts/export_pretrained.py")
    model = hydra.utils.instantiate(checkpoint.pop("model_config"))
    check_checkpoint(checkpoint, path, checkpoint[IDENTITY]["experiment"], model)
    model.load_state_dict(checkpoint.pop("state_dict"))
    return model.eval().requires_grad_(False), checkpoint


def pretrained(experiment: str) -> LightningModule:
    """The shipped model of ``experiment`` with its trained weights, in eval mode:
    ``dfn.pretrained("moving_mnist")``."""
    return load(pretrained_path(experiment))[0]
