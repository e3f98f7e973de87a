"""Seconds per full training step (forward, backward, Adam) of an experiment as ``train.py`` runs
it, beside variants that each name what they change, measured in one process; and the step's
model TFLOP/s beside a matmul's, measured in the same process.

    python scripts/benchmark_training.py experiment=moving_mnist trainer.precision=bf16-mixed
    python scripts/benchmark_training.py experiment=moving_mnist --variants=-channels_last,+compile
    python scripts/benchmark_training.py experiment=stereo --variants impl=reference,impl=shift
    python scripts/benchmark_training.py experiment=moving_mnist --profile
    python scripts/benchmark_training.py --device cuda --variants +cuda_graph

The first row is the configuration that the overrides compose, built as ``train.py`` builds it:
``hydra.utils.instantiate(cfg.model)`` (so the filter's ``impl`` and ``model.predictor.compile``
as configured), ``setup("fit")`` (``model.channels_last``), the trainer's precision as a run
resolves it (``auto``: ``dfn.run.hardware.choose_precision``; ``bf16-mixed``: the loss under
``torch.autocast`` in bfloat16, as Lightning runs it), Adam, and
``data.batch_size`` unless ``--batch-size`` is given. Each other variant is a list of changes
separated by spaces: a Hydra override (``model.predictor.filtering.impl=reference``) or a short
name for one: ``+channels_last``/``-channels_last``, ``+compile``/``-compile``,
``precision=32-true``/``precision=bf16-mixed``, ``impl=reference|shift|cpp|triton``; or one of
how the benchmark runs it: ``threads=N`` (its steps with N CPU threads instead of ``--threads``),
``+cuda_graph`` (CUDA only), which captures the whole step, Adam included (``capturable=True``),
in one CUDA graph after three warm-up steps on a side stream and replays it: what a step costs
without Python and kernel launches. The batch is random frames of the experiment's shape.

Each variant runs two untimed warm-up steps (compilation, allocations); then ``--rounds`` rounds
each time ``--steps`` steps of every variant, in an order that rotates from round to round, so that
a machine's changing load falls on all of them alike. The table gives the median step time and the
interquartile range of all its steps, the median process CPU time of a step (all threads), the
model TFLOP/s, its ratio to the matmul (the median over the rounds of the ratio in the round), and
the speed-up over the first variant: the median, and the range, over the rounds of the first
variant's median step time in that round divided by this one's, and in how many rounds this one
was the faster.

Model FLOPs: three times those of the convolutions and matmuls the first variant's forward runs
(the backward computes an input and a weight gradient of each, each as many FLOPs as the
forward), counted by ``torch.utils.flop_counter`` on a float32 forward of the batch. The matmul:
2048 x 2048 x 2048 in float32 and, where the device has bfloat16 kernels
(``dfn.models.generators.native_bf16`` on CPU), in bfloat16, with the same threads, the best of
five at the start of each round; the ratio is to the faster of the two.

``--profile`` times one more step of the first variant under ``torch.profiler`` and, on CPU,
oneDNN's verbose log, and prints where its time went: the convolutions' forward, backward-data
and backward-weights passes by oneDNN kernel, with their TFLOP/s, and oneDNN's layout reorders
(from oneDNN's own timings), the
dynamic filter, the optimizer, dtype and layout copies, the other tensor ops, and the rest
(Python, autograd, dispatch): the wall time no op accounts for.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from dfn.models.generators import native_bf16
from dfn.ops.cpp import cpu_model
from dfn.run.hardware import choose_precision

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# short names for the Hydra overrides a variant makes
SHORT = {
    "+channels_last": "model.channels_last=true",
    "-channels_last": "model.channels_last=false",
    "+compile": "model.predictor.compile=true",
    "-compile": "model.predictor.compile=false",
    "precision=": "trainer.precision=",
    "impl=": "model.predictor.filtering.impl=",
}
GRAPH = "+cuda_graph"  # not config settings: how the benchmark runs the step
THREADS = "threads="
PRECISIONS = ("32-true", "32", "bf16-mixed")


def variant_overrides(variant: str) -> tuple[list[str], bool, int | None]:
    """A variant's Hydra overrides, whether it captures the step in a CUDA graph, and the CPU
    threads it runs with (None: ``--threads``)."""
    overrides, graph, threads = [], False, None
    for change in variant.split():
        if change == GRAPH:
            graph = True
            continue
        if change.startswith(THREADS):
            threads = int(change[len(THREADS) :])
            continue
        for short, override in SHORT.items():
            if change == short or (short.endswith("=") and change.startswith(short)):
                change = override + change[len(short) :]
                break
        if "=" not in change:
            known = ", ".join([*SHORT, GRAPH, THREADS])
            raise SystemExit(f"unknown change {change!r} in {variant!r}: {known}, or key=value")
        overrides.append(change)
    return overrides, graph, threads


def compose_cfg(overrides: list[str], device: torch.device) -> DictConfig:
    """The composed config, its trainer.precision resolved as a run resolves it (``auto``)."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    cfg.trainer.precision, _ = choose_precision(cfg.trainer.precision, accelerator)
    if cfg.trainer.precision not in PRECISIONS:
        raise SystemExit(f"trainer.precision={cfg.trainer.precision}: runs only {PRECISIONS}")
    return cfg


def make_batch(cfg: DictConfig, batch_size: int, device: torch.device) -> object:
    """Random frames of the experiment's shape: a video [B, T, 1, H, W] or a stereo pair."""
    size = cfg.model.predictor.generator.image_size
    if "num_input" in cfg.model:
        frames = cfg.model.num_input + cfg.model.num_predicted
        return torch.rand(batch_size, frames, 1, size, size, device=device)
    left = torch.rand(batch_size, 1, size, size, device=device)
    return {"left": left, "right": left.roll(2, -1), "disparity": torch.zeros_like(left)}


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The experiment's model from its config (seed 0), set up as a run sets it up."""
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model).to(device)
    model.setup("fit")
    return model


def autocast_for(cfg: DictConfig, device: torch.device):
    """The autocast context Lightning's precision setting runs the forward in."""
    if str(cfg.trainer.precision) == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_train_step(model, optimizer, autocast=None) -> Callable[[object], None]:
    """One training step on a batch: the loss (under ``autocast``), backward, the update."""

    def train_step(batch) -> None:
        with autocast or nullcontext():
            loss = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return train_step


def prepare_variant(cfg: DictConfig, batch, device: torch.device, graph: bool = False):
    """The variant's step, ready to time after two warm-up steps."""
    if graph and device.type != "cuda":
        raise SystemExit(f"{GRAPH} needs --device cuda")
    model = build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), capturable=graph)
    train_step = make_train_step(model, optimizer, autocast_for(cfg, device))

    def step() -> None:
        train_step(batch)
        synchronize(device)

    if graph:
        step = captured_step(train_step, batch, device)
    for _ in range(2):  # compilation, first allocations
        step()
    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def captured_step(train_step, batch, device: torch.device) -> Callable[[], None]:
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


def step_flops(cfg: DictConfig, batch, device: torch.device) -> float:
    """Model FLOPs of one training step: 3x those of the forward's convolutions and matmuls."""
    model = build_model(cfg, device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.training_loss(batch)
    return 3.0 * counter.get_total_flops()


def matmul_tflops(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    """TFLOP/s of an n x n x n matmul: the best of five after a warm-up."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def time_steps(step: Callable[[], None], steps: int) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each of ``steps`` steps."""
    times = []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return times


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, median, q3


def load_average() -> str:
    return " ".join(f"{load:.1f}" for load in os.getloadavg())


# --profile: torch.profiler's ops by what they do (the first pattern that matches), self times
CATEGORIES = [
    ("convolutions (torch's share)", r"convolution"),
    ("dynamic filter (softmax, padding, C++ kernels)", r"^dfn::|softmax|_ShiftLocalFilter"),
    ("optimizer (Adam, zero_grad)", r"Optimizer|_foreach|adam"),
    ("dtype and layout copies", r"^aten::(_to_copy|copy_|clone|contiguous)$"),
    ("other tensor ops", r"^aten::"),
]
# a 2D convolution's problem in oneDNN's verbose log: mb16_ic128oc128_ih32oh32kh3..._iw32ow32kw3...
CONVOLUTION = re.compile(
    r"(?:g(\d+))?mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)\D.*_iw\d+ow(\d+)kw(\d+)"
)


def onednn_primitive(line: str) -> tuple[str, float, float] | None:
    """(what, seconds, FLOPs) of a primitive oneDNN's verbose log says it executed, else None."""
    fields = line.strip().split(",")
    if fields[:4] != ["onednn_verbose", "v1", "primitive", "exec"]:
        return None
    primitive, kernel, kind, problem, ms = *fields[5:8], fields[-2], float(fields[-1])
    if primitive == "reorder":
        return "reorder", ms / 1e3, 0.0
    flops = 0.0
    if primitive == "convolution" and (match := CONVOLUTION.search(problem)):
        groups, mb, ic, oc, oh, kh, ow, kw = (int(g or 1) for g in match.groups())
        flops = 2.0 * mb * oc * oh * ow * ic // groups * kh * kw
    return f"{primitive} {kind} ({kernel})", ms / 1e3, flops


def profile_step(step: Callable[[], None]) -> tuple[float, dict[str, float], dict[str, list]]:
    """One step under torch.profiler and oneDNN's verbose log: its wall seconds, the profiler's
    self seconds by category, and oneDNN's [seconds, FLOPs] by primitive, pass and kernel."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile("w+") as log:
        os.dup2(log.fileno(), 1)  # oneDNN prints from C to stdout
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    start = time.perf_counter()
                    step()
                    wall = time.perf_counter() - start
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        onednn: dict[str, list] = defaultdict(lambda: [0.0, 0.0])
        for line in log:
            if executed := onednn_primitive(line):
                what, seconds, flops = executed
                onednn[what][0] += seconds
                onednn[what][1] += flops
    ops: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key
        category = next((c for c, pattern in CATEGORIES if re.search(pattern, name)), None)
        ops[category or "other tensor ops"] += event.self_cpu_time_total / 1e6
    return wall, ops, onednn


def print_profile(wall: float, ops: dict[str, float], onednn: dict[str, list]) -> None:
    print(f"\nOne step of the first variant under the profiler: {wall:.3f} s\n")
    print("| where | s | share | TFLOP/s |\n|---|---|---|---|")
    convs = ops.pop("convolutions (torch's share)", 0.0)
    rows = [
        (f"oneDNN {what}", *sf) for what, sf in sorted(onednn.items(), key=lambda kv: -kv[1][0])
    ]
    # the convolution ops' time outside oneDNN's primitives: checks, allocations, torch's glue
    outside = convs - sum(seconds for seconds, _ in onednn.values())
    rows.append(("convolutions outside oneDNN's primitives", outside, 0.0))
    rows += [(name, seconds, 0.0) for name, seconds in sorted(ops.items(), key=lambda kv: -kv[1])]
    rows.append(("Python, autograd, dispatch (no op)", wall - convs - sum(ops.values()), 0.0))
    for name, seconds, flops in rows:
        rate = f"{flops / seconds / 1e12:.3f}" if flops else ""
        print(f"| {name} | {seconds:.3f} | {seconds / wall:.1%} | {rate} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", default=["experiment=moving_mnist"])
    parser.add_argument("--variants", default="", help="comma-separated, after the configured one")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="default: the config's data.batch_size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="where a step's time goes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = compose_cfg(args.overrides, device)
    batch_size = args.batch_size or cfg.data.batch_size
    batch = make_batch(cfg, batch_size, device)
    names = ["as configured", *[v.strip() for v in args.variants.split(",") if v.strip()]]
    setups = {name: variant_overrides("" if i == 0 else name) for i, name in enumerate(names)}
    cfgs = {name: compose_cfg(args.overrides + setups[name][0], device) for name in names}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    first = cfgs[names[0]]
    print(
        f"# {' '.join(args.overrides)}, batch {batch_size}, {where}, {args.threads} threads, "
        f"torch {torch.__version__}, {datetime.now():%Y-%m-%d %H:%M}; "
        f"{args.rounds} rounds of {args.steps} steps per variant\n"
        f"- as configured: trainer.precision={first.trainer.precision}, "
        f"model.channels_last={first.model.get('channels_last')}, "
        f"model.predictor.compile={first.model.predictor.get('compile')}, "
        f"impl={first.model.predictor.get('filtering', {}).get('impl')}\n"
        f"- load average before: {load_average()}"
    )
    flops = step_flops(first, batch, device)
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" or native_bf16() else [])
    print(f"- model FLOPs per step: {flops / 1e9:.1f} G, {flops / batch_size / 1e9:.1f} G a sample")
    if device.type == "cuda":  # CUDA context, cuDNN's algorithm search: not the first variant's
        prepare_variant(first, batch, device)
    steps = {name: prepare_variant(cfgs[name], batch, device, setups[name][1]) for name in names}
    # times[name][r]: (wall, CPU) seconds of each step of round r
    times: dict[str, list[list[tuple[float, float]]]] = {name: [] for name in names}
    # matmuls[dtype][r]: TFLOP/s in round r, beside the steps (under the same load)
    matmuls: dict[torch.dtype, list[float]] = {dtype: [] for dtype in dtypes}
    for round_ in range(args.rounds):
        for dtype in dtypes:
            matmuls[dtype].append(matmul_tflops(dtype, device))
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            torch.set_num_threads(setups[name][2] or args.threads)
            times[name].append(time_steps(steps[name], args.steps))
        torch.set_num_threads(args.threads)
    peaks = [max(tflops) for tflops in zip(*matmuls.values(), strict=True)]  # per round
    print(
        "- matmul 2048^3, median of the rounds: "
        + ", ".join(f"{str(d)[6:]} {statistics.median(t):.3f} TFLOP/s" for d, t in matmuls.items())
        + ("" if len(dtypes) > 1 else " (no bfloat16 kernels on this CPU)")
        + f"\n- load average after: {load_average()}\n"
    )
    print(
        "| variant | s / step | IQR | CPU s / step | TFLOP/s | / matmul | speed-up "
        "| its range over the rounds | rounds faster |\n|---|---|---|---|---|---|---|---|---|"
    )

    def round_medians(name: str) -> list[float]:
        return [statistics.median(wall for wall, _ in round_) for round_ in times[name]]

    for name in names:
        q1, median, q3 = quartiles([wall for round_ in times[name] for wall, _ in round_])
        cpu = statistics.median(c for round_ in times[name] for _, c in round_)
        tflops = flops / median / 1e12
        # against the matmul and the first variant in the same round, under about the same load
        of_matmul = [flops / t / 1e12 / p for t, p in zip(round_medians(name), peaks, strict=True)]
        ratios = [f / t for f, t in zip(round_medians(names[0]), round_medians(name), strict=True)]
        faster = "" if name == names[0] else f"{sum(r > 1 for r in ratios)} of {len(ratios)}"
        print(
            f"| {name} | {median:.3f} | {q1:.3f}-{q3:.3f} | {cpu:.3f} | {tflops:.3f} | "
            f"{statistics.median(of_matmul):.2f} | {statistics.median(ratios):.2f}x | "
            f"{min(ratios):.2f}-{max(ratios):.2f} | {faster} |"
        )
    if args.profile:
        print_profile(*profile_step(steps[names[0]]))


if __name__ == "__main__":
    main()
