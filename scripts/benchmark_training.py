"""Seconds per full training step (rollout forward, backward, Adam) under settings that keep
the maths, measured in one process against the first setting given.

    python scripts/benchmark_training.py experiment=moving_mnist --batch-size 4 --steps 3
    python scripts/benchmark_training.py experiment=highway --variants fp32,bf16
    python scripts/benchmark_training.py experiment=stereo --variants unfold,shift,cpp --rounds 5
    python scripts/benchmark_training.py --device cuda --batch-size 16 --variants fp32,unfold,bf16

A variant is settings joined by ``+`` (``bf16+channels_last``). Each builds the experiment's real
model from its config (the same seed, the same batch) and runs one warm-up step; then ``--rounds``
rounds each time ``--steps`` steps of every variant, in an order that rotates from round to round,
so that a machine's changing load falls on all of them alike. The table gives the median step
time and the interquartile range of all its steps, the median process CPU time of a step (all
threads), and the speed-up over the first variant: the median, and the range, over the rounds of
the first variant's median step time in that round divided by this one's, and in how many rounds
this one was the faster.

``fp32`` is the float32 model with the config's filter op (``impl="auto"``) and ``channels_last``
off; ``channels_last`` turns it on, as the video and stereo configs do. ``unfold``, ``shift``,
``cpp`` and ``triton`` set the dynamic filter's ``impl`` (``unfold`` is the reference), to show
what each buys in a whole step. ``cuda_graph`` (CUDA only) captures the whole step, Adam included
(``capturable=True``), in one CUDA graph after three warm-up steps on a side stream, and replays
it, copying the batch into the graph's input first: what a step costs without Python and kernel
launches (PyTorch's "whole network capture").
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

from dfn.ops.cpp import cpu_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the settings a variant joins with "+"
SETTINGS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"bf16": True},
    "compile": {"compile": True},
    "unfold": {"impl": "reference"},
    "shift": {"impl": "shift"},
    "cpp": {"impl": "cpp"},
    "triton": {"impl": "triton"},
    "cuda_graph": {"graph": True},
}


def variant_settings(name: str) -> dict:
    settings = {}
    for part in name.split("+"):
        if part not in SETTINGS:
            raise SystemExit(f"unknown setting {part!r} in {name!r}; known: {', '.join(SETTINGS)}")
        settings |= SETTINGS[part]
    return settings


def make_batch(cfg, batch_size: int, device: torch.device) -> object:
    if "num_input" in cfg.model:
        frames = cfg.model.num_input + cfg.model.num_predicted
        return torch.rand(batch_size, frames, 1, 64, 64, device=device)
    left = torch.rand(batch_size, 1, 64, 64, device=device)
    return {"left": left, "right": left.roll(2, -1), "disparity": torch.zeros_like(left)}


def build_model(cfg, device: torch.device, channels_last=False, compile=False, impl=None):
    """The experiment's model from its config (seed 0), set up as a run would set it up."""
    if impl is not None:  # what model.predictor.filtering.impl=... does
        cfg = copy.deepcopy(cfg)
        cfg.model.predictor.filtering.impl = impl
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model).to(device)
    if compile:
        model.predictor.generator.compile()  # as model.predictor.compile=true does
    model.channels_last = channels_last  # what model.channels_last=... does in a run
    model.setup("fit")
    return model


def make_train_step(model, optimizer, autocast=None):
    """One training step on a batch: the loss (under ``autocast``), backward, the update."""

    def train_step(batch) -> None:
        with autocast or nullcontext():
            loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return train_step


def prepare_variant(
    cfg, batch, device: torch.device,
    channels_last=False, bf16=False, compile=False, impl=None, graph=False,
):  # fmt: skip
    """The variant's model, its optimizer and a timed-ready step, after one warm-up step."""
    if graph and device.type != "cuda":
        raise SystemExit("the cuda_graph variant needs --device cuda")
    model = build_model(cfg, device, channels_last, compile, impl)
    optimizer = torch.optim.Adam(model.parameters(), capturable=graph)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None
    train_step = make_train_step(model, optimizer, autocast)

    def step() -> None:
        train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if graph:
        step = captured_step(train_step, batch, device)
    step()  # warm-up (and compilation)
    return step


def time_steps(step, steps: int) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each of ``steps`` steps."""
    times = []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return times


def captured_step(train_step, batch, device: torch.device):
    """``train_step`` captured in a CUDA graph; returns a step that copies ``batch`` into the
    graph's input and replays it."""

    def tensors(inputs) -> list[torch.Tensor]:
        return list(inputs.values()) if isinstance(inputs, dict) else [inputs]

    # the graph reads its input from these tensors
    static = {k: v.clone() for k, v in batch.items()} if isinstance(batch, dict) else batch.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up: autotuning, cuDNN's choices, Adam's state
        for _ in range(3):
            train_step(static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        train_step(static)

    def replay() -> None:
        for target, source in zip(tensors(static), tensors(batch), strict=True):
            target.copy_(source)
        graph.replay()
        torch.cuda.synchronize(device)

    return replay


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


def load_average() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", default=["experiment=moving_mnist"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", default="fp32,channels_last,bf16,bf16+channels_last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    device = torch.device(args.device)
    batch = make_batch(cfg, args.batch_size, device)
    names = args.variants.split(",")
    settings = {name: variant_settings(name) for name in names}
    on_gpu = device.type == "cuda"
    where = f"{cpu_model()}, {args.threads} threads"
    if on_gpu:
        where = torch.cuda.get_device_name(device)
    print(
        f"# {' '.join(args.overrides)}, batch {args.batch_size}, {where}, "
        f"torch {torch.__version__}, {datetime.now():%Y-%m-%d %H:%M}; "
        f"{args.rounds} rounds of {args.steps} steps per variant\n"
        f"- load average before: {load_average()}"
    )
    if on_gpu:  # CUDA context, cuDNN's algorithm search, the allocator: not the first variant's
        prepare_variant(cfg, batch, device)
    steps = {name: prepare_variant(cfg, batch, device, **settings[name]) for name in names}
    # times[name][r]: (wall, CPU) seconds of each step of round r
    times: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(time_steps(steps[name], args.steps))
    print(f"- load average after: {load_average()}\n")
    print(
        "| variant | s / step | IQR | CPU s / step | it / s | speed-up | its range over the rounds "
        "| rounds faster |\n|---|---|---|---|---|---|---|---|"
    )

    def round_medians(name: str) -> list[float]:
        return [statistics.median(wall for wall, _ in round_) for round_ in times[name]]

    for name in names:
        q1, median, q3 = quartiles([wall for round_ in times[name] for wall, _ in round_])
        cpu = statistics.median(c for round_ in times[name] for _, c in round_)
        # against the first variant in the same round, which saw about the same load
        ratios = [f / t for f, t in zip(round_medians(names[0]), round_medians(name), strict=True)]
        faster = "" if name == names[0] else f"{sum(r > 1 for r in ratios)} of {len(ratios)}"
        print(
            f"| {name} | {median:.3f} | {q1:.3f}-{q3:.3f} | {cpu:.3f} | {1 / median:.2f} | "
            f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f} | {faster} |"
        )


if __name__ == "__main__":
    main()
