"""Triton kernels for the dynamic local filter (the ``impl="triton"`` of ``dfn.ops.filtering``).

One program filters a block of pixels of one sample, for a block of channels. The kh*kw taps are
a loop inside the kernel (each row's kw taps unrolled, so their offsets are compile-time
constants), and the unfolded input never exists. The forward reads each filter tap once; the
backward computes grad_filters from the tap at the pixel itself and grad_input by gathering the
tap at the pixel's mirror position (the same filter plane shifted by the tap's offset, read
while it is still in cache), so no atomics are needed and results are deterministic. Sums run
in float32.

The tensors are made contiguous before launch, so the kernels take three sizes instead of
twenty strides: at the paper's shapes a call takes microseconds and the launch is much of it.
The pixel block size is autotuned once per shape. Importing this module needs Triton; the tests
run it on CPU with ``TRITON_INTERPRET=1``. It imports nothing else of the project:
``dfn.ops.filtering`` checks the inputs and says which dtype the result has.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

MAX_BLOCK_CHANNELS = 4
if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter runs every config: keep one
    CONFIGS = [triton.Config({"BLOCK_P": 64}, num_warps=2)]
else:
    CONFIGS = [
        triton.Config({"BLOCK_P": block}, num_warps=warps)
        for block, warps in ((64, 2), (128, 4), (256, 4), (512, 8))
    ]
TUNING_KEY = ["C", "H", "W", "KH", "KW", "HAS_BIAS", "SHARED"]


@triton.jit
def _load_input(x_at, bias_at, mask, HAS_BIAS: tl.constexpr):
    """u = x + bias as float32, zero where mask is off (the zero padding)."""
    u = tl.load(x_at, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(bias_at, mask=mask, other=0.0).to(tl.float32)
    return u


@triton.jit
def _pixel_block(H, W, BLOCK_P: tl.constexpr):
    """This program's sample b, and its block of flat pixel indices p of the hw = H * W, with
    the mask of those inside the image and their rows y and columns x."""
    b = tl.program_id(1).to(tl.int64)
    hw = H * W
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return b, hw, p, p < hw, p // W, p % W


@triton.autotune(configs=CONFIGS, key=TUNING_KEY)
@triton.jit
def _forward_kernel(
    x_ptr, bias_ptr, f_ptr, out_ptr, C, H, W,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_CHANNEL: tl.constexpr,
    SHARED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """out[c, p] = sum_t u[c, p + s_t] f_t[(c,) p], s_t being tap t's offset."""
    b, hw, p, inside, y, x = _pixel_block(H, W, BLOCK_P)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        here = (c < C)[:, None] & inside[None, :]
        plane = ((b * C + c) * hw)[:, None]
        bias_plane = plane if BIAS_PER_CHANNEL else b * hw
        f_plane = b * KH * KW * hw if SHARED else ((b * C + c) * KH * KW * hw)[:, None]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for i in range(KH):
            dy = i - KH // 2
            row_ok = inside & (y + dy >= 0) & (y + dy < H)
            for j in tl.static_range(KW):
                dx = j - KW // 2
                source = (p + dy * W + dx)[None, :]
                ok = here & (row_ok & (x + dx >= 0) & (x + dx < W))[None, :]
                u = _load_input(
                    x_ptr + plane + source, bias_ptr + bias_plane + source, ok, HAS_BIAS
                )
                f_at = f_ptr + f_plane + (i * KW + j) * hw + p[None, :]
                f = tl.load(f_at, mask=inside[None, :] if SHARED else here, other=0.0)
                acc += u * f.to(tl.float32)
        tl.store(out_ptr + plane + p[None, :], acc.to(out_ptr.dtype.element_ty), mask=here)


@triton.autotune(configs=CONFIGS, key=TUNING_KEY + ["NEED_INPUT", "NEED_FILTERS"])
@triton.jit
def _backward_kernel(
    x_ptr, bias_ptr, f_ptr, g_ptr, gu_ptr, gf_ptr, C, H, W,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_PER_CHANNEL: tl.constexpr,
    SHARED: tl.constexpr, NEED_INPUT: tl.constexpr, NEED_FILTERS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """grad_filters[(c,) t, p] = sum_c g[c, p] u[c, p + s_t] (no sum for per-channel filters);
    grad_u[c, p] = sum_t g[c, p - s_t] f_t[(c,) p - s_t]. grad_u (the gradient of x + bias) is
    float32; grad_filters has the filters' dtype. All tensors are contiguous."""
    b, hw, p, inside, y, x = _pixel_block(H, W, BLOCK_P)
    if NEED_FILTERS:
        # taps outside, channel blocks inside: a shared filter's tap sums every channel
        for i in range(KH):
            dy = i - KH // 2
            row_ok = inside & (y + dy >= 0) & (y + dy < H)
            for j in tl.static_range(KW):
                dx = j - KW // 2
                t = i * KW + j
                source = (p + dy * W + dx)[None, :]
                shifted_ok = (row_ok & (x + dx >= 0) & (x + dx < W))[None, :]
                total = tl.zeros([BLOCK_P], dtype=tl.float32)
                for c0 in range(0, C, BLOCK_C):
                    c = c0 + tl.arange(0, BLOCK_C)
                    here = (c < C)[:, None] & inside[None, :]
                    plane = ((b * C + c) * hw)[:, None]
                    bias_plane = plane if BIAS_PER_CHANNEL else b * hw
                    u = _load_input(
                        x_ptr + plane + source, bias_ptr + bias_plane + source,
                        here & shifted_ok, HAS_BIAS,
                    )  # fmt: skip
                    g = tl.load(g_ptr + plane + p[None, :], mask=here, other=0.0)
                    product = g.to(tl.float32) * u
                    if SHARED:
                        total += tl.sum(product, axis=0)
                    else:
                        gf_at = gf_ptr + ((b * C + c) * KH * KW + t)[:, None] * hw + p[None, :]
                        tl.store(gf_at, product.to(gf_ptr.dtype.element_ty), mask=here)
                if SHARED:
                    gf_at = gf_ptr + (b * KH * KW + t) * hw + p
                    tl.store(gf_at, total.to(gf_ptr.dtype.element_ty), mask=inside)
    if NEED_INPUT:
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            here = (c < C)[:, None] & inside[None, :]
            plane = ((b * C + c) * hw)[:, None]
            f_plane = b * KH * KW * hw if SHARED else ((b * C + c) * KH * KW * hw)[:, None]
            acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
            for i in range(KH):
                # the pixels that read this one through the taps of row i
                dy = i - KH // 2
                row_ok = inside & (y - dy >= 0) & (y - dy < H)
                for j in tl.static_range(KW):
                    dx = j - KW // 2
                    reader = (p - dy * W - dx)[None, :]
                    ok = here & (row_ok & (x - dx >= 0) & (x - dx < W))[None, :]
                    g = tl.load(g_ptr + plane + reader, mask=ok, other=0.0)
                    f_at = f_ptr + f_plane + (i * KW + j) * hw + reader
                    f = tl.load(f_at, mask=ok, other=0.0)
                    acc += g.to(tl.float32) * f.to(tl.float32)
            tl.store(gu_ptr + plane + p[None, :], acc, mask=here)


def _grid(x: Tensor):
    hw, batch = x.shape[2] * x.shape[3], x.shape[0]
    return lambda meta: (triton.cdiv(hw, meta["BLOCK_P"]), batch)


def _flags(x: Tensor, filters: Tensor, bias: Tensor | None) -> dict:
    c = x.shape[1]
    return {
        "HAS_BIAS": bias is not None,
        "BIAS_PER_CHANNEL": bias is not None and bias.shape[1] > 1,
        "SHARED": filters.dim() == 4,
        "BLOCK_C": min(triton.next_power_of_2(c), MAX_BLOCK_CHANNELS),
    }


class _TritonLocalFilter(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: Tensor, filters: Tensor, bias: Tensor | None, kh: int, kw: int, dtype: torch.dtype
    ) -> Tensor:
        c, h, w = x.shape[1:]
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
        _forward_kernel[_grid(x)](
            x, x if bias is None else bias, filters, out, c, h, w,
            KH=kh, KW=kw, **_flags(x, filters, bias),
        )  # fmt: skip
        ctx.save_for_backward(x, filters, bias)
        ctx.kernel_size = (kh, kw)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, filters, bias = ctx.saved_tensors
        kh, kw = ctx.kernel_size
        need_x, need_filters, need_bias = ctx.needs_input_grad[:3]
        need_input = need_x or need_bias
        c, h, w = x.shape[1:]
        grad_u = torch.empty(x.shape, dtype=torch.float32, device=x.device) if need_input else None
        grad_filters = torch.empty_like(filters) if need_filters else None
        _backward_kernel[_grid(x)](
            x, x if bias is None else bias, filters, grad_out.contiguous(),
            x if grad_u is None else grad_u, filters if grad_filters is None else grad_filters,
            c, h, w,
            KH=kh, KW=kw, NEED_INPUT=need_input, NEED_FILTERS=need_filters,
            **_flags(x, filters, bias),
        )  # fmt: skip
        grad_x = grad_bias = None
        if need_x:
            grad_x = grad_u.to(x.dtype)
        if need_bias:
            if bias.shape[1] == 1 and c > 1:
                grad_u = grad_u.sum(dim=1, keepdim=True)
            grad_bias = grad_u.to(bias.dtype)
            if grad_bias is grad_x:  # one tensor must not be the gradient of two inputs
                grad_bias = grad_bias.clone()
        return grad_x, grad_filters, grad_bias, None, None, None


def triton_local_filter(
    x: Tensor,
    filters: Tensor,
    kernel_size: tuple[int, int],
    bias: Tensor | None,
    dtype: torch.dtype,
) -> Tensor:
    """The Triton implementation of ``dfn.ops.filtering.dynamic_local_filter``, on inputs that
    it has checked; the result in ``dtype`` (the one it returns, the inputs' promoted together)."""
    x, filters = x.contiguous(), filters.contiguous()
    bias = None if bias is None else bias.contiguous()
    return _TritonLocalFilter.apply(x, filters, bias, *kernel_size, dtype)
