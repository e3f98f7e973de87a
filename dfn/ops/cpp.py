"""The C++ CPU kernels of the dynamic local filter (``impl="cpp"`` of ``dfn.ops.filtering``):
building them on first use, loading them, calling them; and the CPU they are built for.

The source is ``csrc/local_filter.cpp``, compiled with ``-march=native`` by
``torch.utils.cpp_extension`` (ninja and a C++ compiler), about ten seconds once per machine. The
build lives in ``$TORCH_EXTENSIONS_DIR`` (default: torch's per-user cache,
``~/.cache/torch_extensions``), in a folder whose name hashes the source, the flags, torch's and
Python's versions and the CPU, so that a changed source, another torch or another CPU gets a build
of its own, and checkouts of the same source share one. Where it cannot be built,
``build_problem()`` says why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).resolve().parent / "csrc" / "local_filter.cpp"
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]

log = logging.getLogger(__name__)


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (``model name``, ``flags``, ...); empty
    where there is no such file (not Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():  # the end of the first processor's block
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name, e.g. ``AMD EPYC 9654 96-Core Processor``."""
    return cpu_info().get("model name") or platform.processor() or platform.machine()


@contextmanager
def _quiet_cpp_extension() -> Iterator[None]:
    """Importing torch.utils.cpp_extension logs a warning about CUDA_HOME when CUDA is missing:
    not our case."""
    extension_logger = logging.getLogger("torch.utils.cpp_extension")
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        extension_logger.setLevel(level)


def compiler() -> str | None:
    """The path of the C++ compiler torch builds with ($CXX, else c++); None if there is none."""
    with _quiet_cpp_extension():
        from torch.utils.cpp_extension import get_cxx_compiler

        return shutil.which(get_cxx_compiler())


@functools.cache
def build_problem() -> str | None:
    """Build (on first use) and load the kernels; None when loaded, else why not."""
    try:
        source = SOURCE.read_bytes()
    except OSError as error:
        return f"its source {SOURCE} cannot be read ({error})"
    # a -march=native build is only for this CPU: its model and instruction-set flags
    cpu = cpu_info().get("model name", "") + cpu_info().get("flags", platform.machine())
    key = b"\0".join(
        text.encode() if isinstance(text, str) else text
        for text in (source, " ".join(FLAGS), torch.__version__, sys.version, cpu)
    )
    name = f"dfn_local_filter_{hashlib.sha256(key).hexdigest()[:12]}"
    if shutil.which("ninja") is None:
        # the ninja package (a dependency) puts its binary next to this Python's, which is only
        # on PATH when the virtual environment is activated
        try:
            import ninja
        except ImportError:
            return "ninja, which torch needs to build C++ extensions, is not installed"
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    with _quiet_cpp_extension():
        from torch.utils import cpp_extension

        # $TORCH_EXTENSIONS_DIR or torch's per-user cache, as torch's own default build folder
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        folder = Path(root) / name
        if not (folder / f"{name}.so").exists():
            if compiler() is None:
                return (
                    f"no C++ compiler: {cpp_extension.get_cxx_compiler()!r} is not found "
                    "(install one, or name it in $CXX)"
                )
            log.warning(
                "compiling the C++ kernels of the dynamic local filter (%s), once for this "
                "machine; this takes about ten seconds",
                SOURCE.name,
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            cpp_extension.load(
                name,
                [str(_source_copy(folder, source))],
                extra_cflags=FLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                is_python_module=False,
            )
        except Exception as error:  # a failed build, a library that does not load
            # the compiler's messages, without its (long) command lines
            lines = [line for line in str(error).splitlines() if line.strip() and len(line) < 300]
            return f"building it failed ({type(error).__name__}):\n" + "\n".join(lines[-15:])
    return None


def _source_copy(folder: Path, source: bytes) -> Path:
    """The source, copied into its build folder once. The build runs from the copy: ninja's build
    file names its source's path, so two checkouts of the same source building from their own
    paths would rebuild it for each other, every time a process of one loads it."""
    copy = folder / SOURCE.name
    if not copy.exists():  # the folder's name hashes the source: an existing copy is the same
        partial = folder / f".{SOURCE.name}.{os.getpid()}"
        partial.write_bytes(source)
        partial.replace(copy)  # whole or not at all, also for processes building side by side
    return copy


def cpp_available() -> bool:
    """Whether the C++ kernels build and load here (building them if not yet built)."""
    return build_problem() is None


def forward(padded: Tensor, filters: Tensor, kh: int, kw: int, out: Tensor) -> None:
    """out = sum over taps t of padded[shift_t] * filters_t (see ``filtering._InnerLoops``)."""
    filters = filters.to(padded.dtype).contiguous()
    torch.ops.dfn.local_filter_forward(padded, filters, out, kh, kw)


def backward(
    grad: Tensor,
    padded: Tensor,
    filters: Tensor,
    kh: int,
    kw: int,
    need_filters: bool,
    need_input: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """(grad_filters or None, grad_u or None) in one pass (see ``filtering._InnerLoops``)."""
    filters = filters.to(padded.dtype).contiguous()
    grad = grad.contiguous()
    # in memory kept from call to call: fresh memory costs a page fault per page (dfn/ops/csrc)
    empty = torch.ops.dfn.reusable_empty_like
    grad_filters = empty(filters) if need_filters else filters.new_empty(0)
    grad_u = empty(grad).zero_() if need_input else grad.new_empty(0)
    torch.ops.dfn.local_filter_backward(grad, padded, filters, grad_filters, grad_u, kh, kw)
    return (grad_filters if need_filters else None), (grad_u if need_input else None)
