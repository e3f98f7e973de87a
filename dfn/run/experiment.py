"""Shared by train.py and eval.py: build a run from its config, write its metrics, and report
bad input as one clear line."""

from __future__ import annotations

import json
import logging
import math
import time
from numbers import Number
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dfn.errors import InputError
from dfn.models.predictor import DynamicFilterPredictor
from dfn.run.checkpoints import (
    AtomicCheckpointIO,
    CheckpointIdentity,
    check_checkpoint,
    read_checkpoint,
)
from dfn.run.hardware import choose_precision, device
from dfn.run.runs import record_resume, separate_csv_logs, write_text_atomic

log = logging.getLogger(__name__)


# Data settings the data configs interpolate from the model's (configs/data/*.yaml), so that the
# data serves what the model reads; only an override of the data key alone can contradict them.
FOLLOWS_MODEL = {
    "data.num_input": "model.num_input",
    "data.num_predicted": "model.num_predicted",
    "data.image_size": "model.predictor.generator.image_size",
    "data.crop_size": "model.predictor.generator.image_size",
}


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
    for data_key, model_key in FOLLOWS_MODEL.items():
        value, expected = get(data_key), get(model_key)
        if None not in (value, expected) and value != expected:
            raise InputError(
                f"{data_key}={value} but {model_key}={expected}: the data must serve what the "
                f"model reads; expected {data_key}={expected}, or set {model_key}, which it follows"
            )


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


def build(
    cfg: DictConfig, checkpoint: dict | None = None
) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate in a fixed order: data, model, callbacks, loggers, trainer. ``checkpoint``,
    read from ``cfg.ckpt_path``, is checked against the model before anything else is built."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the saved config
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    if checkpoint is not None:
        check_checkpoint(checkpoint, cfg.ckpt_path, cfg.name, model)
    check_reach(datamodule, model)
    # A group entry set to null (callbacks.progress_bar=null) switches that piece off.
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks.append(CheckpointIdentity(cfg.name))  # not a config option: checked on loading
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    precision, why = choose_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    log.info("trainer.precision=%s: %s", precision, why)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        precision=precision,
    )
    return datamodule, model, trainer


def write_metrics(output_dir: str | Path, metrics: dict, name: str = "metrics.json") -> Path:
    """Write ``metrics`` as JSON, all or nothing. Where the file exists (a resumed run), its
    content goes to the end of the new one's ``history``: the latest fit at the top level, the
    earlier ones in order below it."""
    path = Path(output_dir) / name
    if path.is_file():
        earlier = json.loads(path.read_text())
        metrics = {**metrics, "history": [*earlier.pop("history", []), earlier]}
    return write_text_atomic(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def finish(trainer: L.Trainer, output_dir: Path, metrics: dict) -> dict:
    """Rank 0 writes metrics.json and names the run folder."""
    if trainer.is_global_zero:
        log.info("metrics: %s", write_metrics(output_dir, metrics))
        print(f"Run folder: {output_dir}")
    return metrics


def fit_and_test(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, and write metrics.json in the run folder."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    ckpt_path = cfg.get("ckpt_path")
    resumed = read_checkpoint(ckpt_path) if ckpt_path else None
    if cfg.get("resume") and resumed is not None:
        separate_csv_logs(cfg, resumed["global_step"])
    datamodule, model, trainer = build(cfg, resumed)
    if resumed is not None and 0 <= trainer.max_steps <= resumed["global_step"]:
        raise InputError(
            f"{ckpt_path} is at step {resumed['global_step']}, and trainer.max_steps="
            f"{trainer.max_steps}: nothing is left to train; give a larger trainer.max_steps"
        )
    if cfg.get("resume") and trainer.is_global_zero:
        record_resume(output_dir, cfg)
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
        metrics["resumed_from"] = str(Path(ckpt_path).resolve())
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics["val/loss_best"] = float(checkpoint.best_model_score)
        metrics["best_checkpoint"] = checkpoint.best_model_path
    if cfg.get("test"):
        ckpt = "best" if metrics.get("best_checkpoint") else None
        test = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update(scalars(test[0]))
    return finish(trainer, output_dir, metrics)


def evaluate(cfg: DictConfig) -> dict:
    """Test the checkpoint ``cfg.ckpt_path`` on the experiment's test set; write metrics.json."""
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        raise InputError("give the checkpoint to evaluate: run=<run folder> or ckpt_path=<file>")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    checkpoint = read_checkpoint(ckpt_path)
    datamodule, model, trainer = build(cfg, checkpoint)
    metrics = {
        "experiment": cfg.name,
        "parameters": model.num_parameters,
        "steps": checkpoint["global_step"],
        "checkpoint": str(Path(ckpt_path).resolve()),
        "device": device(trainer),
        "precision": trainer.precision,
    }
    for key in ("run", "pretrained"):
        if cfg.get(key):
            metrics[key] = cfg[key]
    test = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics.update(scalars(test[0]))
    return finish(trainer, output_dir, metrics)
