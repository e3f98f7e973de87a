"""Shared by train.py and eval.py: build a run from its config, write its metrics, and report
bad input as one clear line."""

from __future__ import annotations

import json
import logging
import os
import time
from numbers import Number
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dfn.errors import InputError
from dfn.ops.cpp import cpu_model

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
    num_input, num_predicted = get("model.num_input"), get("model.num_predicted")
    for key, value in (("num_input", num_input), ("num_predicted", num_predicted)):
        if get(f"data.{key}") not in (None, value):
            raise InputError(
                f"data.{key}={get(f'data.{key}')} but model.{key}={value}: the data must cut "
                f"the windows the model reads; expected data.{key}={value}"
            )
    window = None if None in (num_input, num_predicted) else num_input + num_predicted
    sequences = str(get("data._target_")).endswith("MovingMNISTDataModule")  # of data.num_frames
    if sequences and window is not None and get("data.num_frames") != window:
        raise InputError(
            f"data.num_frames={get('data.num_frames')}, but a sequence is model.num_input="
            f"{num_input} frames in and model.num_predicted={num_predicted} out: expected "
            f"data.num_frames={window}"
        )


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate in a fixed order: data, model, callbacks, loggers, trainer."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    # A group entry set to null (callbacks.progress_bar=null) switches that piece off.
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    return datamodule, model, trainer


def device_name(trainer: L.Trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{trainer.world_size}"
    processes = f" x{trainer.world_size} processes" if trainer.world_size > 1 else ""
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads{processes}"


def write_metrics(output_dir: str | Path, metrics: dict, name: str = "metrics.json") -> Path:
    """Write ``metrics`` as JSON, all or nothing."""
    path = Path(output_dir) / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


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
    datamodule, model, trainer = build(cfg)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {
        "experiment": cfg.name,
        "parameters": model.num_parameters,
        "steps": trainer.global_step,
        "train_wall_time_s": round(time.perf_counter() - start, 2),
        "device": device_name(trainer),
    }
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
    if not ckpt_path or not Path(ckpt_path).is_file():
        raise InputError(f"ckpt_path must name a checkpoint file, got {ckpt_path!r}")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    datamodule, model, trainer = build(cfg)
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    metrics = {
        "experiment": cfg.name,
        "parameters": model.num_parameters,
        "steps": checkpoint["global_step"],
        "checkpoint": str(Path(ckpt_path).resolve()),
        "device": device_name(trainer),
    }
    test = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics.update(scalars(test[0]))
    return finish(trainer, output_dir, metrics)
