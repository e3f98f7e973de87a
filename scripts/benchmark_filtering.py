"""Benchmark the dynamic local filter's implementations on the paper's shapes.

    python scripts/benchmark_filtering.py [--device cpu|cuda] [--threads N] [--min-time SECONDS]

For each shape, forward (no grad) and forward+backward of every implementation available on the
device (the unfold reference, shift, the C++ kernel on CPU, Triton on CUDA), in one process: the
median wall time over interleaved repetitions and its spread from call to call (the 10th and
90th percentiles and the slowest call), the speed-up over
the reference, the ratio to the memory-traffic lower bound (the bytes the op must read and write,
at this machine's copy bandwidth measured in the same run), and the peak memory allocated during one
forward+backward call, outputs and gradients included, as a multiple of the filter tensor's
size. On CPU it also reports the process CPU time per call: with one thread it is the time the
op would take on an idle core, which wall time on a shared, loaded machine is not. On CUDA it also
reports the GPU time per call spent in kernels (from the profiler), without the launch overhead
that dominates the wall time of the paper's small shapes.
Prints Markdown (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from dfn.ops.cpp import cpp_available, cpu_model
from dfn.ops.filtering import dynamic_local_filter, triton_available

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
# On a GPU the shapes above fit in L2 cache and take microseconds (launches count); this one
# moves gigabytes, which is what the memory-traffic bound is about.
GPU_CASES = [Case("B64 C3 256x256 9x9", 64, 3, (256, 256), (9, 9), bias=False)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # process CPU time, all threads


def timed(call: Callable[[], None], device: torch.device) -> Timing:
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    synchronize(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def copy_bandwidth(device: torch.device) -> Timing:
    """Bytes read + written per second (wall, CPU) by a copy between tensors larger than caches."""
    numel = 1 << 28 if device.type == "cuda" else 1 << 26  # 1 GiB or 256 MiB of float32
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once, so the timing sees no page faults
    times = [timed(lambda: dst.copy_(src), device) for _ in range(10)]
    moved = 2 * src.numel() * src.element_size()
    return Timing(
        *(moved / statistics.median(getattr(t, f) for t in times) for f in ("wall", "cpu"))
    )


def first_touch_cost(numel: int) -> tuple[float, float]:
    """Median seconds to fill a fresh CPU tensor, and to refill one already written.

    The difference is the page faults a fresh allocation pays: tensors above glibc's mmap
    threshold (32 MB at most) come back from the kernel on every allocation.
    """
    times: dict[bool, list[float]] = {True: [], False: []}
    kept = torch.empty(numel)
    kept.fill_(0)
    for _ in range(5):
        for fresh in (True, False):
            start = time.perf_counter()
            (torch.empty(numel) if fresh else kept).fill_(1)
            times[fresh].append(time.perf_counter() - start)
    return statistics.median(times[True]), statistics.median(times[False])


def traffic_bytes(inputs: list[torch.Tensor | None], backward: bool) -> int:
    """Bytes the op must move at the least.

    Forward reads x, filters and bias and writes the output; backward reads grad_out and the
    inputs again and writes one gradient per input.
    """
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


def time_impls(
    calls: dict[str, Callable[[], None]], inputs, device: torch.device, min_time: float
) -> dict[str, list[Timing]]:
    """Interleaved repetitions: each round runs every impl, each for about the same time."""

    def run(call: Callable[[], None]) -> Timing:
        clear_grads(inputs)
        return timed(call, device)

    for call in calls.values():  # warm-up: allocator, Triton compilation, caches
        run(call)
        run(call)
    first = {impl: min(run(call).wall for _ in range(2)) for impl, call in calls.items()}
    slowest = max(first.values())
    repeats = {impl: min(20, max(1, round(slowest / t))) for impl, t in first.items()}
    rounds = min(30, max(5, math.ceil(min_time / (slowest * len(calls)))))
    samples: dict[str, list[Timing]] = {impl: [] for impl in calls}
    for _ in range(rounds):
        for impl, call in calls.items():
            samples[impl] += [run(call) for _ in range(repeats[impl])]
    return samples


def kernel_seconds(call: Callable[[], None], inputs, device: torch.device, calls: int = 5) -> float:
    """Seconds per call that the GPU spends running kernels (torch.profiler's CUDA events): the
    op's own cost, without the Python, dispatch and launch time between kernels, which at small
    shapes is most of the wall time. 0 when the profiler recorded no kernels."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            clear_grads(inputs)
            call()
        synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e6 / calls


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
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    allocated = peak = 0
    for event in memory:
        allocated += event["args"]["Bytes"]
        peak = max(peak, allocated)
    return peak


def spread(samples: list[float]) -> tuple[float, float, float, float]:
    """The median, the 10th and 90th percentiles and the largest of ``samples``."""
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), deciles[0], deciles[-1], max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", help="run the shapes whose name contains this text")
    parser.add_argument(
        "--min-time", type=float, default=3.0, help="seconds of timing per case and pass"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    impls = ["reference", "shift"] + (["cpp"] if on_cpu and cpp_available() else [])
    impls += ["triton"] if not on_cpu and triton_available() else []

    name = cpu_model() if on_cpu else torch.cuda.get_device_name(device)
    bandwidth = copy_bandwidth(device)
    print(f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"- device: {name}; torch {torch.__version__}; {torch.get_num_threads()} threads")
    print(
        f"- copy bandwidth (read + write, {'1 GiB' if not on_cpu else '256 MiB'} copy): "
        f"{bandwidth.wall / 1e9:.1f} GB/s"
        + (f" (per CPU second: {bandwidth.cpu / 1e9:.1f} GB/s)" if on_cpu else "")
    )
    if on_cpu:
        largest = max(c.batch * c.kernel[0] * c.kernel[1] * c.size[0] * c.size[1] for c in CASES)
        fresh, refill = first_touch_cost(largest)
        print(
            f"- filling a fresh {largest * 4 / MB:.0f} MB tensor: {fresh * 1e3:.1f} ms; "
            f"refilling it: {refill * 1e3:.1f} ms (page faults; THP_MEM_ALLOC_ENABLE="
            f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')})"
        )
        print("- load average before: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print()
    extra_head = " CPU ms | CPU speed-up | CPU / bound |" if on_cpu else " GPU ms | GPU / bound |"
    print(
        f"| shape | pass | impl | ms (p10-p90, max) | speed-up | / bound |{extra_head} peak extra |"
    )
    print("|---" * (9 + on_cpu) + "|")
    cases = CASES + (GPU_CASES if not on_cpu else [])
    for case in [c for c in cases if args.only is None or args.only in c.name]:
        for backward in (False, True):
            inputs = case.inputs(device, requires_grad=backward)
            calls = {impl: make_call(impl, case, inputs, backward) for impl in impls}
            samples = time_impls(calls, inputs, device, args.min_time)
            moved = traffic_bytes(inputs, backward)
            filter_bytes = inputs[1].numel() * inputs[1].element_size()
            reference = {f: statistics.median(getattr(t, f) for t in samples["reference"])
                         for f in ("wall", "cpu")}  # fmt: skip
            for impl in impls:
                wall, p10, p90, slowest = spread([t.wall for t in samples[impl]])
                cells = [
                    case.name,
                    "fwd+bwd" if backward else "fwd",
                    impl,
                    f"{wall * 1e3:.1f} ({p10 * 1e3:.1f}-{p90 * 1e3:.1f}, {slowest * 1e3:.1f})",
                    f"{reference['wall'] / wall:.1f}x",
                    f"{wall * bandwidth.wall / moved:.1f}",
                ]
                if on_cpu:
                    cpu = statistics.median(t.cpu for t in samples[impl])
                    cells += [
                        f"{cpu * 1e3:.1f}",
                        f"{reference['cpu'] / cpu:.1f}x",
                        f"{cpu * bandwidth.cpu / moved:.1f}",
                    ]
                else:
                    gpu = kernel_seconds(calls[impl], inputs, device)
                    cells += [f"{gpu * 1e3:.3f}", f"{gpu * bandwidth.wall / moved:.1f}"]
                if backward:
                    peak = peak_extra_memory(calls[impl], inputs, device)
                    cells.append(f"{peak / MB:.0f} MB = {peak / filter_bytes:.2f}x filters")
                else:
                    cells.append("")
                print("| " + " | ".join(cells) + " |")
            del inputs, calls
    if on_cpu:
        print()
        print("- load average after: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
