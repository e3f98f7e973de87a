"""The dynamic filtering layers of the paper (section 3).

A dynamic local filter applies one generated filter per pixel (and per sample); a dynamic
convolution applies one generated filter per sample at every position. Taps are ordered
row-major over the kernel window, exactly like ``torch.nn.functional.unfold``; padding is zero
and the output has the input's spatial size.

``dynamic_local_filter`` has four implementations behind one signature (``impl``):
``"reference"`` unfolds the input (kh*kw copies of it; simple, the one the others are tested
on), ``"shift"`` accumulates kh*kw shifted products with one PyTorch op per tap and never
unfolds (any device; the least memory without a kernel), ``"cpp"`` computes the same sums in a
compiled CPU kernel (``dfn.ops.cpp``: ``csrc/local_filter.cpp``, built on first use) that makes
one pass over the filters per forward and one per backward, ``"triton"`` runs the kernels of
``dfn.ops.triton_filtering`` (CUDA). ``"auto"`` picks what made the paper's training steps
fastest end to end: on CPU the C++ kernel (up to 12% faster steps than the reference, never
measurably slower), or shift, with a warning, where it cannot be built (level with the
reference or slightly faster, in less memory); on CUDA Triton, or the reference where Triton
does not import. docs/PERFORMANCE.md has the measurements.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from dfn.ops import cpp

Impl = Literal["auto", "reference", "shift", "cpp", "triton"]
IMPLS = ("auto", "reference", "shift", "cpp", "triton")
# an odd size, the same both ways (9) or (height, width) ((1, 13): the stereo filter)
KernelSize = int | tuple[int, int] | Sequence[int]


def _pair(kernel_size: KernelSize) -> tuple[int, int]:
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size!r}")
    return int(kh), int(kw)


def _check_local(
    x: Tensor, filters: Tensor, kernel_size: KernelSize, bias: Tensor | None
) -> tuple[int, int]:
    kh, kw = _pair(kernel_size)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    expected = f"[{b}, {kh * kw}, {h}, {w}] or [{b}, {c}, {kh * kw}, {h}, {w}]"
    shape = tuple(filters.shape)
    if filters.dim() == 4:
        ok = shape == (b, kh * kw, h, w)
    elif filters.dim() == 5:
        ok = shape == (b, c, kh * kw, h, w)
    else:
        ok = False
    if not ok:
        raise ValueError(
            f"filters for a {kh}x{kw} dynamic local filter on x of shape {tuple(x.shape)} "
            f"must be {expected}, got {shape}"
        )
    if bias is not None and (
        bias.dim() != 4 or tuple(bias.shape) not in {(b, 1, h, w), (b, c, h, w)}
    ):
        raise ValueError(
            f"bias must be [{b}, 1, {h}, {w}] or [{b}, {c}, {h}, {w}], got {tuple(bias.shape)}"
        )
    return kh, kw


def dynamic_local_filter_reference(
    x: Tensor, filters: Tensor, kernel_size: KernelSize, bias: Tensor | None = None
) -> Tensor:
    """Unfold (im2col) implementation: simple, and the reference the fast ones are tested on."""
    kh, kw = _check_local(x, filters, kernel_size, bias)
    if bias is not None:
        x = x + bias
    b, c, h, w = x.shape
    patches = F.unfold(x, (kh, kw), padding=(kh // 2, kw // 2)).view(b, c, kh * kw, h, w)
    if filters.dim() == 4:
        filters = filters.unsqueeze(1)
    return (patches * filters).sum(dim=2)


@functools.cache
def triton_available() -> bool:
    """Whether the Triton kernels can be imported (Triton installed and importable)."""
    try:
        import dfn.ops.triton_filtering  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _warn_no_cpp(problem: str) -> None:
    warnings.warn(
        f"impl='auto' on CPU uses the slower 'shift' implementation of the dynamic local filter: "
        f"its C++ kernel ({cpp.SOURCE}) is not available: {problem}",
        RuntimeWarning,
        stacklevel=4,
    )


def _resolve_impl(impl: str, x: Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        if x.device.type != "cpu":
            # without Triton the unfold reference: on an H200 it beat shift's per-tap launches
            # at every paper shape (docs/PERFORMANCE.md)
            return "triton" if x.is_cuda and triton_available() else "reference"
        problem = cpp.build_problem()
        if problem is None:
            return "cpp"
        _warn_no_cpp(problem)
        return "shift"
    if impl == "cpp":
        if x.device.type != "cpu":
            raise ValueError(f"impl='cpp' needs CPU tensors, got x on {x.device}")
        problem = cpp.build_problem()
        if problem is not None:
            raise ValueError(
                f"impl='cpp': the C++ kernel ({cpp.SOURCE}) is not available: {problem}"
            )
    return impl


def _padded_input(
    x: Tensor, bias: Tensor | None, kh: int, kw: int, dtype: torch.dtype, channels_last_ok: bool
) -> Tensor:
    """x + bias in ``dtype``, zero-padded by the kernel's half-size: the only copy of x needed.

    Channels-last when x is and ``channels_last_ok``, else contiguous.
    """
    b, c, h, w = x.shape
    ph, pw = kh // 2, kw // 2
    layout = (
        torch.channels_last
        if channels_last_ok and c > 1 and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    padded = torch.empty(
        b, c, h + 2 * ph, w + 2 * pw, dtype=dtype, device=x.device, memory_format=layout
    ).zero_()
    inner = padded[:, :, ph : ph + h, pw : pw + w]
    inner.copy_(x)
    if bias is not None:
        inner.add_(bias)
    return padded


def result_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype the reference returns: x, filters and bias (if any) promoted together."""
    dtypes = [t.dtype for t in tensors if t is not None]
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    return result


def _windows(padded: Tensor, kh: int, kw: int) -> Tensor:
    """The unfolded input as a view, not a copy: [B, C, kh, kw, H, W], with
    windows[.., i, j, y, x] = padded[.., y + i, x + j]."""
    return padded.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 1, 4, 5, 2, 3)


def _tap_windows(windows: Tensor) -> list[Tensor]:
    """The [B, C, H, W] window of each tap, in tap order (unbind: cheaper than slicing per tap)."""
    return [window for row in windows.unbind(2) for window in row.unbind(2)]


def _per_tap(windows: Tensor, filters: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(window, filter) for each tap, the filter shaped to broadcast against [B, C, H, W]."""
    tap_filters = (filters.unsqueeze(1) if filters.dim() == 4 else filters).unbind(2)
    return list(zip(_tap_windows(windows), tap_filters, strict=True))


class _InnerLoops(NamedTuple):
    """The two inner computations of ``_ShiftLocalFilter``, in PyTorch ops or compiled.

    forward(padded, filters, kh, kw, out): out = sum_t u[shift_t] * f_t, written into ``out``
    (in the padded input's dtype). backward(grad, padded, filters, kh, kw, need_filters,
    need_input) -> (grad_filters or None, grad_u or None): grad_filters like ``filters``, grad_u
    the [B, C, H, W] gradient of u's interior (x + bias), in the padded input's dtype.
    ``contiguous``: the loops take contiguous tensors only (then the padded input and the output
    are contiguous even for channels-last x).
    """

    forward: Callable[[Tensor, Tensor, int, int, Tensor], None]
    backward: Callable[..., tuple[Tensor | None, Tensor | None]]
    contiguous: bool


def _shift_forward(padded: Tensor, filters: Tensor, kh: int, kw: int, out: Tensor) -> None:
    taps = _per_tap(_windows(padded, kh, kw), filters)
    torch.mul(*taps[0], out=out)
    for window, tap_filter in taps[1:]:
        out.addcmul_(window, tap_filter)


def _shift_backward(
    grad: Tensor,
    padded: Tensor,
    filters: Tensor,
    kh: int,
    kw: int,
    need_filters: bool,
    need_input: bool,
) -> tuple[Tensor | None, Tensor | None]:
    grad_filters = _filter_grad(grad, padded, filters, kh, kw) if need_filters else None
    grad_u = None
    if need_input:
        grad_padded = torch.zeros_like(padded)
        for window, tap_filter in _per_tap(_windows(grad_padded, kh, kw), filters):
            window.addcmul_(grad, tap_filter)
        h, w = grad.shape[2:]
        grad_u = grad_padded[:, :, kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]
    return grad_filters, grad_u


def _filter_grad(grad: Tensor, padded: Tensor, filters: Tensor, kh: int, kw: int) -> Tensor:
    """grad_filters[.., t, y, x] = grad[.., y, x] * u[.., y + i, x + j], tap t = (i, j).

    Shared filters sum this over the channels.
    """
    b, c, h, w = grad.shape
    per_channel = filters.dim() == 5
    grad_filters = torch.empty_like(filters)
    windows = _windows(padded, kh, kw)
    same_dtype = grad_filters.dtype == padded.dtype
    if (per_channel or c == 1) and same_dtype:
        # one op over all taps
        torch.mul(grad[:, :, None, None], windows, out=grad_filters.view(b, -1, kh, kw, h, w))
        return grad_filters
    # tap by tap, so that a shared filter's channel sum stays in cache (and in float32)
    scratch = None if per_channel or same_dtype else grad.new_empty(b, h, w)
    targets = grad_filters.unbind(2 if per_channel else 1)
    for target, window in zip(targets, _tap_windows(windows), strict=True):
        if per_channel:
            torch.mul(grad, window, out=target)
            continue
        total = target if scratch is None else scratch
        torch.mul(grad[:, 0], window[:, 0], out=total)
        for k in range(1, c):
            total.addcmul_(grad[:, k], window[:, k])
        if scratch is not None:
            target.copy_(scratch)
    return grad_filters


_SHIFT = _InnerLoops(_shift_forward, _shift_backward, contiguous=False)
_CPP = _InnerLoops(cpp.forward, cpp.backward, contiguous=True)


class _ShiftLocalFilter(torch.autograd.Function):
    """Dynamic local filtering as kh*kw shifted products of the padded input.

    Forward: out = sum_t u[shift_t] * f_t, with u = pad(x + bias). Backward, per tap:
    grad u[shift_t] += g * f_t and grad f_t = g * u[shift_t] (summed over channels when the
    filters are shared). Sums run in float32 (float64 for float64 inputs). The two inner
    computations are ``loops`` (an ``_InnerLoops``): one PyTorch op per tap (impl "shift"; the
    unfolded input is only ever a strided view) or the compiled kernel (impl "cpp"; one pass
    over the filters per forward and per backward). Besides the outputs, nothing larger than
    the padded input is allocated, and each pass reads the filter tensor once.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, filters: Tensor, bias: Tensor | None, kh: int, kw: int, loops: _InnerLoops
    ) -> Tensor:
        # a channels-last filter tensor would make each tap a strided read of all of it
        filters = filters.contiguous()
        # half-precision inputs are summed in float32, float64 ones in float64
        dtype = torch.promote_types(result_dtype(x, filters, bias), torch.float32)
        padded = _padded_input(x, bias, kh, kw, dtype, channels_last_ok=not loops.contiguous)
        layout = torch.contiguous_format if loops.contiguous else torch.preserve_format
        out = torch.empty_like(x, dtype=dtype, memory_format=layout)
        loops.forward(padded, filters, kh, kw, out)
        ctx.save_for_backward(padded, filters)
        ctx.kernel_size = (kh, kw)
        ctx.loops = loops
        ctx.x_dtype = x.dtype
        ctx.x_layout = (
            torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.bias_channels = None if bias is None else bias.shape[1]
        return out.to(result_dtype(x, filters, bias))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        padded, filters = ctx.saved_tensors
        kh, kw = ctx.kernel_size
        need_x, need_filters, need_bias = ctx.needs_input_grad[:3]
        grad = grad_out.to(padded.dtype)
        grad_filters, grad_u = ctx.loops.backward(
            grad, padded, filters, kh, kw, need_filters, need_x or need_bias
        )
        if grad_filters is not None:
            grad_filters = grad_filters.to(filters.dtype)
        grad_x = grad_bias = None
        # grad_u may be a view into a padded buffer (then .contiguous copies it), or a tensor of
        # its own that can be returned as it is, but not as two gradients
        if need_x:
            grad_x = grad_u.to(ctx.x_dtype).contiguous(memory_format=ctx.x_layout)
        if need_bias:
            if ctx.bias_channels == 1 and grad_u.shape[1] > 1:
                grad_u = grad_u.sum(dim=1, keepdim=True)
            grad_bias = grad_u.to(ctx.bias_dtype).contiguous()
            if grad_bias is grad_x:
                grad_bias = grad_bias.clone()
        return grad_x, grad_filters, grad_bias, None, None, None


def dynamic_local_filter(
    x: Tensor,
    filters: Tensor,
    kernel_size: KernelSize,
    bias: Tensor | None = None,
    *,
    impl: Impl = "auto",
) -> Tensor:
    """Filter each pixel of ``x`` with its own generated filter.

    x: [B, C, H, W]; filters: [B, kh*kw, H, W] (shared by the channels) or [B, C, kh*kw, H, W];
    bias: optional [B, 1 or C, H, W], added to ``x`` before filtering (the paper's dynamic bias).
    Returns [B, C, H, W], in the dtype of x, filters and bias promoted together.
    ``impl``: see the module docstring.
    """
    kh, kw = _check_local(x, filters, kernel_size, bias)
    impl = _resolve_impl(impl, x)
    if impl == "reference":
        return dynamic_local_filter_reference(x, filters, (kh, kw), bias)
    if impl == "triton":
        # Triton's interpreter (TRITON_INTERPRET=1, used by the tests) also runs on CPU
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"impl='triton' needs CUDA tensors, got x on {x.device}")
        if not triton_available():
            raise ValueError("impl='triton' needs the triton package, which does not import here")
        from dfn.ops.triton_filtering import triton_local_filter

        return triton_local_filter(x, filters, (kh, kw), bias, result_dtype(x, filters, bias))
    return _ShiftLocalFilter.apply(x, filters, bias, kh, kw, _CPP if impl == "cpp" else _SHIFT)


def dynamic_conv(x: Tensor, filters: Tensor, kernel_size: KernelSize) -> Tensor:
    """Convolve each sample with its own generated filter (the paper's dynamic convolution).

    x: [B, C, H, W]; filters: [B, kh*kw] (shared by the channels) or [B, C, kh*kw].
    Returns [B, C, H, W].
    """
    kh, kw = _pair(kernel_size)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if tuple(filters.shape) not in {(b, kh * kw), (b, c, kh * kw)}:
        raise ValueError(
            f"filters for a {kh}x{kw} dynamic convolution on x of shape {tuple(x.shape)} "
            f"must be [{b}, {kh * kw}] or [{b}, {c}, {kh * kw}], got {tuple(filters.shape)}"
        )
    weight = filters.reshape(b, -1, 1, kh, kw).expand(b, c, 1, kh, kw).reshape(b * c, 1, kh, kw)
    out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=(kh // 2, kw // 2), groups=b * c)
    return out.view(b, c, h, w)


def expected_displacement(filters: Tensor, kernel_size: KernelSize) -> Tensor:
    """Each pixel's expected source offset under its filter: sum over taps of weight x offset.

    filters: [B, kh*kw, H, W] -> [B, 2, H, W] as (dx, dy) in pixels. With softmaxed filters this is
    the flow the filter carries (paper Figure 7); for a 1xK filter dx is a disparity.
    """
    kh, kw = _pair(kernel_size)
    dy, dx = torch.meshgrid(
        torch.arange(kh, device=filters.device, dtype=filters.dtype) - kh // 2,
        torch.arange(kw, device=filters.device, dtype=filters.dtype) - kw // 2,
        indexing="ij",
    )
    offsets = torch.stack([dx.reshape(-1), dy.reshape(-1)])  # [2, taps]
    return torch.einsum("ot,bthw->bohw", offsets, filters)


class DynamicLocalFilter(nn.Module):
    """Turns a filter-generating network's output into filters and applies them.

    The generator's output has kh*kw tap channels, plus one more when ``dynamic_bias`` is set
    (the bias is added to the input before filtering, as the authors did).
    """

    def __init__(
        self,
        kernel_size: KernelSize,
        softmax: bool = True,
        dynamic_bias: bool = False,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.kernel_size = _pair(kernel_size)
        self.softmax = softmax
        self.dynamic_bias = dynamic_bias
        self.impl = impl

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def generated_channels(self) -> int:
        """The channels the generator must output: the taps, plus one with a dynamic bias."""
        return self.taps + int(self.dynamic_bias)

    @property
    def reach(self) -> tuple[int, int]:
        """How far (vertically, horizontally) in pixels a tap can look: (1, 13) reaches (0, 6)."""
        return self.kernel_size[0] // 2, self.kernel_size[1] // 2

    def split(self, generated: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, taps (+1), H, W] -> filters [B, taps, H, W] (softmaxed if set), bias or None."""
        if generated.dim() != 4 or generated.shape[1] != self.generated_channels:
            raise ValueError(
                f"the filter generator must output [B, {self.generated_channels}, H, W] for a "
                f"{self.kernel_size[0]}x{self.kernel_size[1]} filter"
                f"{' with dynamic bias' if self.dynamic_bias else ''}, got {tuple(generated.shape)}"
            )
        filters = generated[:, : self.taps]
        if self.softmax:
            filters = filters.softmax(dim=1)
        bias = generated[:, self.taps :] if self.dynamic_bias else None
        return filters, bias

    def forward(self, x: Tensor, generated: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, H, W], the generator's output [B, taps (+1), H, W] -> the filtered x
        [B, C, H, W] and the filters applied [B, taps, H, W] (softmaxed if set)."""
        filters, bias = self.split(generated)
        return dynamic_local_filter(x, filters, self.kernel_size, bias, impl=self.impl), filters

    def expected_displacement(self, filters: Tensor) -> Tensor:
        """This filter's ``filters`` [B, taps, H, W] -> their expected offsets [B, 2, H, W] as
        (dx, dy) in pixels (``expected_displacement``), in float32 also under autocast."""
        with torch.autocast(filters.device.type, enabled=False):  # pixels, not bf16 steps
            return expected_displacement(filters.float(), self.kernel_size)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, softmax={self.softmax}, "
            f"dynamic_bias={self.dynamic_bias}, impl={self.impl!r}"
        )


class DynamicConv(nn.Module):
    """Applies one generated filter per sample, optionally softmaxed over its taps."""

    def __init__(self, kernel_size: KernelSize, softmax: bool = False) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.softmax = softmax

    def forward(self, x: Tensor, filters: Tensor) -> Tensor:
        if self.softmax:
            filters = filters.softmax(dim=-1)
        return dynamic_conv(x, filters, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, softmax={self.softmax}"
