"""Freshly sampled training data, reproducible by seed.

The authors' "epoch" is a number of freshly sampled batches, not a pass over a dataset. Here a
training sample is a pure function of (seed, global index): the loader hands out the indices of
the stream in order, the dataset draws sample i from ``sample_rng(seed, i)``. Workers and ranks
therefore see exactly the stream an uninterrupted single-process run would, and so does a run
resumed from a checkpoint, mid-epoch too (``StreamLoader``).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from dfn.errors import InputError


def sample_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


class StreamBatches(Sampler[list[int]]):
    """This rank's batches of the stream, from global sample ``consumed`` to the end of its epoch.

    Stream batch k holds the global samples [k B W, (k + 1) B W) (B: batch size, W: world size);
    rank r takes every W-th of them from r. An epoch is ``steps_per_epoch`` stream batches.
    """

    def __init__(self, batch_size: int, steps_per_epoch: int, rank: int = 0, world_size: int = 1):
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.rank = rank
        self.world_size = world_size
        self.consumed = 0  # global samples handed out so far

    def __iter__(self) -> Iterator[list[int]]:
        step = self.batch_size * self.world_size
        first = self.consumed // step
        stop = (first // self.steps_per_epoch + 1) * self.steps_per_epoch
        for k in range(first, stop):
            yield list(range(k * step + self.rank, (k + 1) * step, self.world_size))

    def __len__(self) -> int:
        return self.steps_per_epoch


class StreamLoader(DataLoader):
    """The training stream's DataLoader, which a checkpoint resumes exactly, mid-epoch too.

    It counts the samples it has handed out; Lightning stores ``state_dict()`` in each checkpoint
    and gives it back to ``load_state_dict`` before a resumed run draws its first batch. Each pass
    runs to the next epoch boundary of the stream, so a run stopped mid-epoch (Ctrl-C, SIGTERM,
    ``max_steps``) continues with the batches, and validates at the steps, an uninterrupted run
    would. Epochs are the stream's, not Lightning's epoch counter, which moves on early when
    ``max_steps`` ends a run mid-epoch. Extra keyword arguments go to ``DataLoader``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        steps_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        **kwargs: Any,
    ) -> None:
        self.stream = StreamBatches(batch_size, steps_per_epoch, rank, world_size)
        super().__init__(dataset, batch_sampler=self.stream, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        # Counted as handed out, not as the workers load them ahead.
        for batch in super().__iter__():
            self.stream.consumed += self.stream.batch_size * self.stream.world_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"consumed_samples": self.stream.consumed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.stream.consumed = int(state_dict["consumed_samples"])


def leave_sigterm_to_the_main_process(worker_id: int) -> None:
    """A data worker ignores SIGTERM. A cluster's time limit, ``timeout``, ``docker stop`` or
    systemd signal the whole process group; the main process then finishes its step, saves
    last.ckpt and stops its workers itself, where PyTorch's own handler would let the workers die
    first and take the run with them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check_integers(**settings: tuple[object, int]) -> None:
    """One clear error for the first ``data.NAME=(value, least)`` that is not an integer of at
    least ``least``."""
    for name, (value, least) in settings.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise InputError(f"data.{name}={value!r}; expected an integer >= {least}")


class StreamDataModule(LightningDataModule):
    """Trains on a stream (``steps_per_epoch`` freshly sampled batches an epoch, this rank's
    share of it under DDP) and evaluates on fixed sets served in order.

    Under DDP each rank evaluates a contiguous share of a fixed set (rank 0 the first samples,
    which the figures show). The test metrics are sums reduced across the ranks, so they equal
    one process's over the whole set; a validation loss is the mean of the ranks' means, whose
    shares differ by one sample at most. A set smaller than the number of ranks is served whole
    to every rank.

    Subclasses pass the three settings all of them share to ``__init__``, save their arguments
    with ``save_hyperparameters()`` (``pin_memory`` is optional) and build ``train_set``,
    ``val_set`` and ``test_set`` in ``setup``.
    """

    def __init__(self, batch_size: int, num_workers: int, steps_per_epoch: int) -> None:
        super().__init__()
        check_integers(
            batch_size=(batch_size, 1),
            num_workers=(num_workers, 0),
            steps_per_epoch=(steps_per_epoch, 1),
        )

    def _loader_options(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "num_workers": hp.num_workers,
            "persistent_workers": hp.num_workers > 0,
            "pin_memory": hp.get("pin_memory", False),
            "worker_init_fn": leave_sigterm_to_the_main_process,
        }

    def _rank(self) -> tuple[int, int]:
        """(this process's rank, the number of processes)."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def train_dataloader(self) -> StreamLoader:
        hp = self.hparams
        return StreamLoader(
            self.train_set, hp.batch_size, hp.steps_per_epoch, *self._rank(),
            **self._loader_options(),
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return self._ordered_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._ordered_loader(self.test_set)

    def _ordered_loader(self, dataset: Dataset) -> DataLoader:
        rank, world_size = self._rank()
        size = len(dataset)
        if size >= world_size > 1:
            dataset = Subset(
                dataset, range(rank * size // world_size, (rank + 1) * size // world_size)
            )
        return DataLoader(dataset, batch_size=self.hparams.batch_size, **self._loader_options())
