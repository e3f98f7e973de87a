"""Shared by train.py and eval.py: build a run from its config, fit and test it, and write what it
measured and drew into its folder."""

from __future__ import annotations

import logging
import math
import time
import warnings
from numbers import Number
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from dfn.errors import InputError
from dfn.models.predictor import DynamicFilterPredictor
from dfn.run.checkpoints import (
    AtomicCheckpointIO,
    CheckpointIdentity,
    code_version,
    load_checkpoint,
)
from dfn.run.folder import RunFolder, named_checkpoint
from dfn.run.hardware import choose_precision, device
from dfn.run.pretrained import pretrained_path

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Catch the config mistakes that would otherwise surface as a confusing traceback, be
    ignored, or show up only after hours of training."""

    def get(key: str):
        return OmegaConf.select(cfg, key)

    for key in ("model.optimizer.lr",):
        value = get(key)
        if value is not None and (not isinstance(value, Number) or isinstance(value, bool)):
            raise InputError(f"{key} must be a number, got {value!r}")
    for key in ("data.train_path", "data.test_path"):  # the test file is read after training
        if get(key) is not None and not Path(get(key)).is_file():
            raise InputError(f"{key}={get(key)}: no such file")


def check_reach(datamodule: L.LightningDataModule, model: L.LightningModule) -> None:
    """The model's filter must reach the data's ``max_disparity``.

    A data module whose matching pixels lie up to ``max_disparity`` px apart horizontally (stereo)
    has that attribute; a model that moves pixels with a filter has ``predictor.head.reach``
    (vertical, horizontal). The baseline's ``ConvHead`` has no reach (None): it moves no pixel,
    and is not held to the data's disparities.
    """
    max_disparity = getattr(datamodule, "max_disparity", None)
    predictor = getattr(model, "predictor", None)
    if max_disparity is None or not isinstance(predictor, DynamicFilterPredictor):
        return
    reach = predictor.head.reach
    if reach is not None and reach[1] < max_disparity:
        wide_enough = [2 * reach[0] + 1, 2 * math.ceil(max_disparity) + 1]
        raise InputError(
            f"data.max_disparity={max_disparity}, but the model's filter reaches {reach[1]} px "
            f"horizontally (a 1xK filter reaches (K-1)/2 px): set model.predictor.filtering."
            f"kernel_size={wide_enough} or wider, or lower data.max_disparity"
        )


def quiet_lightning(resuming: bool) -> None:
    """Leave out of a run's output what Lightning prints that is no news about the run: its
    advertisement for its cloud logger, a deprecation warning about its own use of torch's
    pytree (``LeafSpec``), and, for a run resumed in its folder, that the checkpoint folder is not
    empty. tests/test_train.py checks a run's output for them."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(no_advertisement)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if resuming:
        warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")


def no_advertisement(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage()


def build_model(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The data module and the model, in that order, checked against each other."""
    check_config(cfg)
    quiet_lightning(bool(cfg.get("resume")))
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the saved config
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    check_reach(datamodule, model)
    return datamodule, model


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The callbacks, the loggers and the trainer, in that order."""
    # A group entry set to null (callbacks.progress_bar=null) switches that piece off.
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(CheckpointIdentity(cfg.name))  # not a config option: checked on loading
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    precision, why = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    log.info("trainer.precision=%s: %s", precision, why)
    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        precision=precision,
    )


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def test(
    trainer: L.Trainer, model: L.LightningModule, datamodule, ckpt_path: str | None, run: RunFolder
) -> dict:
    """Test the checkpoint ``ckpt_path`` ("best", a file, or None for the weights in memory):
    its metrics, and the names of the figures it drew into the run folder."""
    result = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.is_global_zero:
        run.write_images(model.test_images)
    return {**scalars(result[0]), "figures": [f"{name}.png" for name in model.test_images]}


def finish(trainer: L.Trainer, run: RunFolder, metrics: dict) -> dict:
    """Rank 0 writes metrics.json, with the code's version, and names the run folder."""
    metrics = {**metrics, "code": code_version()}
    if trainer.is_global_zero:
        log.info("metrics: %s", run.write_metrics(metrics))
        print(f"Run folder: {run.path}")
    return metrics


def fit_and_test(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, and write metrics.json and the test's figures in the run
    folder. ``resume=<run>`` continues the run in its folder, from ``cfg.ckpt_path``."""
    run = RunFolder.current()
    datamodule, model = build_model(cfg)
    ckpt_path = run.resume_from(cfg, model)
    trainer = build_trainer(cfg)
    if cfg.get("resume") and trainer.is_global_zero:  # all checked: the folder's records follow
        run.record_resume(cfg)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {
        "experiment": cfg.name,
        "parameters": model.num_parameters,
        "steps": trainer.global_step,
        "train_wall_time_s": round(time.perf_counter() - start, 2),
        "device": device(trainer),
        "precision": trainer.precision,
    }
    if ckpt_path:
        metrics["resumed_from"] = run.record(ckpt_path)
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["val/loss_best"] = float(checkpoint.best_model_score)
        metrics["best_checkpoint"] = run.record(checkpoint.best_model_path)
    if cfg.get("test"):
        best = "best" if metrics.get("best_checkpoint") else None
        metrics.update(test(trainer, model, datamodule, best, run))
    return finish(trainer, run, metrics)


def evaluate(cfg: DictConfig) -> dict:
    """Test a checkpoint on the experiment's test set: ``cfg.ckpt_path``, the one that
    ``cfg.run`` names (a run folder's last.ckpt, or a checkpoint in one), or the weights of
    ``cfg.pretrained`` that ship in pretrained/; write metrics.json."""
    trained = None
    if cfg.get("run"):
        trained, ckpt_path = named_checkpoint(cfg.run, "run")
    elif cfg.get("pretrained"):
        ckpt_path = pretrained_path(cfg.pretrained)
    elif cfg.get("ckpt_path"):
        ckpt_path = Path(cfg.ckpt_path)
    else:
        raise InputError(
            "give the checkpoint to evaluate: run=<run folder>, ckpt_path=<file> or "
            "pretrained=<experiment>"
        )
    run = RunFolder.current()
    datamodule, model = build_model(cfg)
    checkpoint = load_checkpoint(ckpt_path, cfg.name, model)
    trainer = build_trainer(cfg)
    metrics = {
        "experiment": cfg.name,
        "parameters": model.num_parameters,
        "steps": checkpoint["global_step"],
        "checkpoint": run.record(ckpt_path),
        "device": device(trainer),
        "precision": trainer.precision,
    }
    if trained is not None:
        metrics["run"] = run.record(trained.path)
    if cfg.get("pretrained"):
        metrics["pretrained"] = cfg.pretrained
    metrics.update(test(trainer, model, datamodule, str(ckpt_path), run))
    return finish(trainer, run, metrics)
