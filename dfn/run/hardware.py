"""What this machine trains with: ``trainer.precision=auto`` picks the fastest precision that keeps
the maths, and ``ScheduleEstimate`` says, once the first steps are timed, how long the schedule
will take here.

On a CPU, bf16-mixed is the fast path only where the CPU has bf16 matrix units (AMX or
AVX512-BF16: 1.8 against 5.9 s a Moving MNIST step on an earlier session's Xeon with AMX);
elsewhere bf16 is emulated (the generator's convolutions as float32 ones of bf16-rounded
operands) and slower than float32 (docs/PERFORMANCE.md). A GPU trains in float32, as the paper did.
"""

from __future__ import annotations

import logging
import time

import torch
from lightning import Callback, LightningModule, Trainer

from dfn.ops.cpp import cpu_info, cpu_model

log = logging.getLogger(__name__)

BF16_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with bf16 arithmetic


def bf16_unit() -> str | None:
    """The CPU's bf16 arithmetic (a flag of ``BF16_UNITS``), None where it has none."""
    flags = cpu_info().get("flags", "").split()
    return next((unit for unit in BF16_UNITS if unit in flags), None)


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def choose_precision(precision: str, accelerator: str) -> tuple[str, str]:
    """``trainer.precision`` for Lightning, and why: ``auto`` becomes bf16-mixed on a CPU with
    bf16 units, else 32-true; any other value is kept."""
    if str(precision) != "auto":
        return str(precision), "as configured"
    if uses_gpu(accelerator):
        return "32-true", "a GPU trains in float32, as the paper did"
    unit = bf16_unit()
    if unit is not None:
        return "bf16-mixed", f"this CPU has bf16 units ({unit})"
    return "32-true", "this CPU has no bf16 units (amx_bf16, avx512_bf16), which bf16 would emulate"


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it above 1: 40 s, 12 min, 7.5 h, 3.2 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


class ScheduleEstimate(Callback):
    """Time ``timed`` training steps after ``warmup`` and say, in one line, what the run trains
    with and how long the rest of ``trainer.max_steps`` takes at that pace (validation not
    included)."""

    def __init__(self, warmup: int = 3, timed: int = 5) -> None:
        self.warmup, self.timed = warmup, timed
        self.start: float | None = None
        self.first_step = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start, self.first_step = None, trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        done = trainer.global_step - self.first_step
        if done == self.warmup:
            self.start = time.perf_counter()
        elif self.start is not None and done == self.warmup + self.timed:
            step = (time.perf_counter() - self.start) / self.timed
            self.start = None
            if trainer.is_global_zero and trainer.max_steps > 0:
                left = trainer.max_steps - trainer.global_step
                log.info(
                    "%s: %s, %s s a step, so the %s steps to trainer.max_steps=%s take about %s",
                    device(trainer),
                    trainer.precision,
                    f"{step:.2f}",
                    f"{left:,}",
                    f"{trainer.max_steps:,}",
                    duration(left * step),
                )


def device(trainer: Trainer) -> str:
    """The device a run trains on, as metrics.json records it."""
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return f"{torch.cuda.get_device_name(root)} x{trainer.world_size}"
    processes = f" x{trainer.world_size} processes" if trainer.world_size > 1 else ""
    return f"CPU {cpu_model()}, {torch.get_num_threads()} threads{processes}"
