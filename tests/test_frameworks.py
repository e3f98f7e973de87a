"""Where the project leans on a framework's private behaviour, for want of a public API: each such
adapter is one small function, and these tests fail loudly when a framework release changes
what it relies on."""

import csv
import os
import signal
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from dfn.models.generators import native_bf16
from dfn.run.callbacks import set_logging_step
from dfn.run.cli import config_node, one_line


def refuse(**options):
    raise ValueError(f"refused {options}")


def test_config_node_is_read_from_hydras_message():
    """Hydra 1.3 names the failing node only in its exception's message."""
    cfg = OmegaConf.create(
        {"model": {"_target_": "builtins.dict", "predictor": {"_target_": f"{__name__}.refuse"}}}
    )
    with pytest.raises(InstantiationException) as caught:
        hydra.utils.instantiate(cfg.model)
    assert isinstance(caught.value.__cause__, ValueError)
    assert config_node(caught.value) == "model.predictor", (
        f"Hydra's message format changed; dfn.run.cli.config_node reads it: {caught.value}"
    )


class Tiny(L.LightningModule):
    """Three training steps an epoch and a validation loop, logging its loss every step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).square().mean()
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val", self.layer(batch).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(6, 2), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(2, 2), batch_size=2)


class LoggingStepIsGlobalStep(L.Callback):
    """What dfn.run.callbacks.LastCheckpoint does at each epoch's start."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        set_logging_step(trainer, trainer.global_step)


def fit(folder: Path, max_steps: int, ckpt_path=None, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=CSVLogger(folder, name="", version=""),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(Tiny(), ckpt_path=ckpt_path)
    return trainer


def logged_steps(folder: Path) -> list[int]:
    rows = csv.DictReader((folder / "metrics.csv").open())
    return [int(row["step"]) for row in rows if row.get("loss")]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on workers and batches
@pytest.mark.parametrize("adapter", [False, True])
def test_lightning_logging_step_after_resuming_at_an_epochs_end(tmp_path, adapter):
    """Lightning 2.6, resumed from a checkpoint taken at the end of an epoch, logs the next steps
    one step too late; ``set_logging_step`` (called by LastCheckpoint) puts them back."""
    trainer = fit(tmp_path / "first", max_steps=3)  # one epoch
    assert hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped"), (
        "Lightning renamed the counter that dfn.run.callbacks.set_logging_step writes"
    )
    trainer.save_checkpoint(tmp_path / "epoch.ckpt")
    callbacks = [LoggingStepIsGlobalStep()] if adapter else []
    fit(tmp_path / "resumed", max_steps=6, ckpt_path=tmp_path / "epoch.ckpt", callbacks=callbacks)
    assert logged_steps(tmp_path / "first") == [0, 1, 2]
    if adapter:
        assert logged_steps(tmp_path / "resumed") == [3, 4, 5]
    else:
        assert logged_steps(tmp_path / "resumed") == [4, 5, 6], (
            "Lightning logs the right steps after this resume now: remove set_logging_step and "
            "its call in dfn.run.callbacks.LastCheckpoint"
        )


class KilledWorker(torch.utils.data.Dataset):
    """A data set whose worker the kernel kills (as its out-of-memory killer would)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_by_the_kernel_is_read_from_pytorchs_message():
    """PyTorch tells a worker killed by SIGKILL only in its message, which
    dfn.run.cli.killed_worker reads to say: out of memory, lower data.batch_size or workers."""
    with pytest.raises(RuntimeError) as caught:
        next(iter(torch.utils.data.DataLoader(KilledWorker(), num_workers=1)))
    line = one_line(caught.value)
    assert line is not None and line.startswith("a data loader worker was killed"), (
        f"PyTorch's message changed; dfn.run.cli.killed_worker reads it: {caught.value!r}"
    )


def test_torch_says_whether_its_cpu_convolutions_have_bf16_kernels():
    """dfn.models.generators.native_bf16 asks torch's private mkldnn op."""
    native_bf16.cache_clear()
    assert native_bf16() in (True, False)
