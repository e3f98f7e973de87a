"""Iterations per second of a full training step (rollout forward, backward, Adam) under
several settings that keep the maths, measured in one process against the float32 default.

    python scripts/benchmark_training.py experiment=moving_mnist --batch-size 4 --steps 3
    python scripts/benchmark_training.py experiment=highway --variants fp32,bf16
    python scripts/benchmark_training.py --device cuda --batch-size 16 --variants fp32,unfold,bf16

Each variant builds the experiment's real model from its config (the same seed, the same
batch), runs one warm-up step, then times ``--steps`` steps; the table gives the median step
time and the speed-up over float32. ``unfold`` swaps the dynamic filter's fast implementation
for the unfold reference, to show what the fast op buys in a whole step. ``cuda_graph`` (CUDA
only) captures the whole step, Adam included (``capturable=True``), in one CUDA graph after
three warm-up steps on a side stream, and replays it, copying the batch into the graph's input
first: what a step costs without Python and kernel launches (PyTorch's "whole network capture").
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import hydra
import torch
from hydra import compose, initialize_config_dir

from dfn.run.experiment import PROJECT_ROOT

VARIANTS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"bf16": True},
    "bf16+channels_last": {"bf16": True, "channels_last": True},
    "compile": {"compile": True},
    "bf16+compile": {"bf16": True, "compile": True},
    "unfold": {"impl": "reference"},
    "cuda_graph": {"graph": True},
}


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


def time_variant(
    cfg, batch, steps: int, device: torch.device,
    channels_last=False, bf16=False, compile=False, impl=None, graph=False,
):  # fmt: skip
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
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", default=["experiment=moving_mnist"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", default="fp32,channels_last,bf16,bf16+channels_last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    device = torch.device(args.device)
    batch = make_batch(cfg, args.batch_size, device)
    on_gpu = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if on_gpu else f"{args.threads} threads"
    print(
        f"# {' '.join(args.overrides)}, batch {args.batch_size}, {where}, "
        f"torch {torch.__version__}, median of {args.steps} steps"
    )
    print("| variant | s / step | it / s | speed-up |\n|---|---|---|---|")
    if on_gpu:  # CUDA context, cuDNN's algorithm search, the allocator: not the first variant's
        time_variant(cfg, batch, 1, device)
    reference = None
    for name in args.variants.split(","):
        seconds = time_variant(cfg, batch, args.steps, device, **VARIANTS[name])
        reference = reference or seconds
        print(
            f"| {name} | {seconds:.3f} | {1 / seconds:.2f} | {reference / seconds:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
