"""Benchmark the dynamic local filter's implementations on the paper's shapes.

    python scripts/benchmark_filtering.py [--device cpu|cuda] [--min-time SECONDS]

For each shape, forward (no grad) and forward+backward of every implementation available on the
device (the unfold reference, shift, and Triton on CUDA), in one process: the median time over
interleaved repetitions (with the interquartile range, since shared machines are noisy), the
speed-up over the reference, the ratio to the memory-traffic lower bound (the bytes the op must
read and write at this machine's copy bandwidth, measured in the same run), and the peak memory
allocated during one forward+backward call, outputs and gradients included, as a multiple of the
filter tensor's size. Prints a Markdown table (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from dfn.filtering import dynamic_local_filter, triton_available

MB = 1e6


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    channels: int
    size: tuple[int, int]
    kernel: tuple[int, int]
    bias: bool

    def inputs(self, device: torch.device, requires_grad: bool) -> list[torch.Tensor | None]:
        """x, filters (shared by the channels, softmaxed as in the paper), bias or None."""
        gen = torch.Generator(device=device).manual_seed(0)
        b, (h, w), taps = self.batch, self.size, self.kernel[0] * self.kernel[1]
        x = torch.rand(b, self.channels, h, w, generator=gen, device=device)
        filters = torch.randn(b, taps, h, w, generator=gen, device=device).softmax(dim=1)
        bias = torch.randn(b, 1, h, w, generator=gen, device=device) if self.bias else None
        return [t if t is None else t.requires_grad_(requires_grad) for t in (x, filters, bias)]


CASES = [  # the paper's layers: video (9x9), moving MNIST (11x11, dynamic bias), stereo (1x13)
    Case("B16 C1 64x64 9x9", 16, 1, (64, 64), (9, 9), bias=False),
    Case("B16 C1 64x64 11x11 + bias", 16, 1, (64, 64), (11, 11), bias=True),
    Case("B16 C1 64x64 1x13", 16, 1, (64, 64), (1, 13), bias=False),
    Case("B16 C3 128x128 9x9", 16, 3, (128, 128), (9, 9), bias=False),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a copy between preallocated tensors larger than caches."""
    numel = 1 << 28 if device.type == "cuda" else 1 << 26  # 1 GiB or 256 MiB of float32
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once, so the timing sees no page faults
    times = []
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def traffic_bytes(inputs: list[torch.Tensor | None], backward: bool) -> int:
    """Bytes that must move: read x, filters, bias, write out; backward also reads grad_out
    and the inputs again and writes one gradient per input."""
    present = [t for t in inputs if t is not None]
    x = present[0]
    size = sum(t.numel() * t.element_size() for t in present)
    out = x.numel() * x.element_size()
    forward = size + out
    return forward + (out + 2 * size if backward else 0)


def make_call(
    impl: str, case: Case, inputs: list[torch.Tensor | None], backward: bool
) -> Callable[[], None]:
    x, filters, bias = inputs
    grad_out = torch.ones_like(x) / x.numel()

    def call() -> None:
        if backward:
            out = dynamic_local_filter(x, filters, case.kernel, bias, impl=impl)
            out.backward(grad_out)
        else:
            with torch.no_grad():
                dynamic_local_filter(x, filters, case.kernel, bias, impl=impl)

    return call


def clear_grads(inputs: list[torch.Tensor | None]) -> None:
    for t in inputs:
        if t is not None:
            t.grad = None


def timed(call: Callable[[], None], inputs, device: torch.device) -> float:
    clear_grads(inputs)
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def time_impls(
    calls: dict[str, Callable[[], None]], inputs, device: torch.device, min_time: float
) -> dict[str, list[float]]:
    """Interleaved repetitions: each round runs every impl, each for about the same time."""
    for call in calls.values():  # warm-up: allocator, Triton compilation, caches
        for _ in range(2):
            timed(call, inputs, device)
    first = {
        impl: min(timed(call, inputs, device) for _ in range(2)) for impl, call in calls.items()
    }
    slowest = max(first.values())
    repeats = {impl: min(20, max(1, round(slowest / t))) for impl, t in first.items()}
    rounds = min(30, max(5, math.ceil(min_time / (slowest * len(calls)))))
    samples: dict[str, list[float]] = {impl: [] for impl in calls}
    for _ in range(rounds):
        for impl, call in calls.items():
            samples[impl] += [timed(call, inputs, device) for _ in range(repeats[impl])]
    return samples


def peak_extra_memory(call: Callable[[], None], inputs, device: torch.device) -> int:
    """Peak bytes allocated during one call above what was allocated before it."""
    clear_grads(inputs)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    # CPU: replay the profiler's allocation and free events in order
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    with tempfile.NamedTemporaryFile(suffix=".json") as trace:
        prof.export_chrome_trace(trace.name)
        events = json.load(open(trace.name))["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    allocated = peak = 0
    for event in memory:
        allocated += event["args"]["Bytes"]
        peak = max(peak, allocated)
    return peak


def quartiles(samples: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(samples, n=4)
    return q1, statistics.median(samples), q3


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
    parser.add_argument(
        "--min-time", type=float, default=3.0, help="seconds of timing per case and pass"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = ["reference", "shift"] + (
        ["triton"] if device.type == "cuda" and triton_available() else []
    )

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    bandwidth = copy_bandwidth(device)
    load = os.getloadavg()
    print(f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"- device: {name}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(f"- copy bandwidth (read + write, 256 MiB+ copy): {bandwidth / 1e9:.1f} GB/s")
    print(f"- load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print()
    print(
        "| shape | impl | fwd ms (IQR) | fwd speed-up | fwd / bound "
        "| fwd+bwd ms (IQR) | fwd+bwd speed-up | fwd+bwd / bound | peak extra (fwd+bwd) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        rows: dict[str, list[str]] = {impl: [] for impl in impls}
        peak: dict[str, int] = {}
        for backward in (False, True):
            inputs = case.inputs(device, requires_grad=backward)
            calls = {impl: make_call(impl, case, inputs, backward) for impl in impls}
            samples = time_impls(calls, inputs, device, args.min_time)
            bound = traffic_bytes(inputs, backward) / bandwidth
            reference = statistics.median(samples["reference"])
            for impl in impls:
                q1, median, q3 = quartiles(samples[impl])
                rows[impl] += [
                    f"{median * 1e3:.1f} ({q1 * 1e3:.1f}-{q3 * 1e3:.1f})",
                    f"{reference / median:.1f}x",
                    f"{median / bound:.1f}",
                ]
            if backward:
                peak = {impl: peak_extra_memory(calls[impl], inputs, device) for impl in impls}
                filter_bytes = inputs[1].numel() * inputs[1].element_size()
            del inputs, calls
        for impl in impls:
            extra = f"{peak[impl] / MB:.0f} MB = {peak[impl] / filter_bytes:.2f}x filters"
            print(f"| {case.name} | {impl} | " + " | ".join(rows[impl]) + f" | {extra} |")
    load = os.getloadavg()
    print()
    print(f"- load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
