"""Triton kernels for the dynamic local filter (the ``impl="triton"`` of ``dfn.filtering``).

One program filters a block of pixels of one sample, for all channels; the kh*kw taps are a
loop inside the kernel, so the unfolded input never exists. The forward reads each filter tap
once; the backward computes grad_filters from the tap at the pixel itself and grad_input by
gathering the tap at the pixel's mirror position (the same filter plane shifted by the tap's
offset, read while it is still in cache), so no atomics are needed and results are
deterministic. Sums run in float32. Importing this module needs Triton; the tests run it on
CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from dfn.filtering import result_dtype

BLOCK_PIXELS = 256
MAX_BLOCK_CHANNELS = 4


@triton.jit
def _load_input(
    x_ptr, bias_ptr, b, c, yy, xx, mask, sxb, sxc, sxh, sxw, sbb, sbc, sbh, sbw,
    HAS_BIAS: tl.constexpr,
):  # fmt: skip
    """u = x + bias at [b, c, yy, xx] as float32, zero where mask is off (the zero padding)."""
    u = tl.load(x_ptr + b * sxb + c * sxc + yy * sxh + xx * sxw, mask=mask, other=0.0)
    u = u.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + b * sbb + c * sbc + yy * sbh + xx * sbw, mask=mask, other=0.0)
        u += bias.to(tl.float32)
    return u


@triton.jit
def _forward_kernel(
    x_ptr, bias_ptr, f_ptr, out_ptr,
    C, H, W,
    sxb, sxc, sxh, sxw,
    sbb, sbc, sbh, sbw,
    sfb, sfc, sft, sfh, sfw,
    sob, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, SHARED: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    inside = p < H * W
    y = (p // W)[None, :]
    x = (p % W)[None, :]
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + tl.arange(0, BLOCK_C))[:, None]
        here = (c < C) & inside[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for t in range(KH * KW):
            yy = y + t // KW - KH // 2
            xx = x + t % KW - KW // 2
            source = here & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            u = _load_input(
                x_ptr, bias_ptr, b, c, yy, xx, source,
                sxb, sxc, sxh, sxw, sbb, sbc, sbh, sbw, HAS_BIAS,
            )  # fmt: skip
            f_at = f_ptr + b * sfb + t * sft + y * sfh + x * sfw
            if SHARED:
                f = tl.load(f_at, mask=inside[None, :], other=0.0)
            else:
                f = tl.load(f_at + c * sfc, mask=here, other=0.0)
            acc += u * f.to(tl.float32)
        out_at = out_ptr + b * sob + c * soc + y * soh + x * sow
        tl.store(out_at, acc.to(out_ptr.dtype.element_ty), mask=here)


@triton.jit
def _backward_kernel(
    x_ptr, bias_ptr, f_ptr, g_ptr, gu_ptr, gf_ptr,
    C, H, W,
    sxb, sxc, sxh, sxw,
    sbb, sbc, sbh, sbw,
    sfb, sfc, sft, sfh, sfw,
    sgb, sgc, sgh, sgw,
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, SHARED: tl.constexpr,
    NEED_INPUT: tl.constexpr, NEED_FILTERS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """grad_filters[t, p] = sum_c g[c, p] u[c, p + s_t] (no sum for per-channel filters);
    grad_u[c, p] = sum_t g[c, p - s_t] f_t[p - s_t], where s_t is tap t's offset.

    grad_u (the gradient of x + bias) is float32 and contiguous; grad_filters is allocated like
    the contiguous filters, so it shares their strides.
    """
    b = tl.program_id(1).to(tl.int64)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    inside = p < H * W
    y = (p // W)[None, :]
    x = (p % W)[None, :]
    if NEED_FILTERS:
        # taps outside, channel blocks inside: a shared filter's tap sums every channel
        for t in range(KH * KW):
            yy = y + t // KW - KH // 2
            xx = x + t % KW - KW // 2
            total = tl.zeros([BLOCK_P], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = (c0 + tl.arange(0, BLOCK_C))[:, None]
                here = (c < C) & inside[None, :]
                source = here & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                u = _load_input(
                    x_ptr, bias_ptr, b, c, yy, xx, source,
                    sxb, sxc, sxh, sxw, sbb, sbc, sbh, sbw, HAS_BIAS,
                )  # fmt: skip
                g = tl.load(g_ptr + b * sgb + c * sgc + y * sgh + x * sgw, mask=here, other=0.0)
                product = g.to(tl.float32) * u
                gf_at = gf_ptr + b * sfb + t * sft + y * sfh + x * sfw
                if SHARED:
                    total += tl.sum(product, axis=0)
                else:
                    tl.store(gf_at + c * sfc, product.to(gf_ptr.dtype.element_ty), mask=here)
            if SHARED:
                gf_at = gf_ptr + b * sfb + t * sft + (p // W) * sfh + (p % W) * sfw
                tl.store(gf_at, total.to(gf_ptr.dtype.element_ty), mask=inside)
    if NEED_INPUT:
        for c0 in range(0, C, BLOCK_C):
            c = (c0 + tl.arange(0, BLOCK_C))[:, None]
            here = (c < C) & inside[None, :]
            acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
            for t in range(KH * KW):
                # the pixel that reads this one through tap t
                yy = y - (t // KW - KH // 2)
                xx = x - (t % KW - KW // 2)
                reader = here & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                g = tl.load(g_ptr + b * sgb + c * sgc + yy * sgh + xx * sgw, mask=reader, other=0.0)
                f_at = f_ptr + b * sfb + t * sft + yy * sfh + xx * sfw
                if not SHARED:
                    f_at += c * sfc
                f = tl.load(f_at, mask=reader, other=0.0)
                acc += g.to(tl.float32) * f.to(tl.float32)
            gu_at = gu_ptr + ((b * C + c) * H + y) * W + x
            tl.store(gu_at, acc, mask=here)


def _launch_shape(x: Tensor) -> tuple[tuple[int, int], int]:
    b, c, h, w = x.shape
    block_c = min(triton.next_power_of_2(c), MAX_BLOCK_CHANNELS)
    return (triton.cdiv(h * w, BLOCK_PIXELS), b), block_c


def _filter_strides(filters: Tensor) -> tuple[int, int, int, int, int]:
    """(batch, channel, tap, row, col) strides; channel 0 for shared [B, taps, H, W] filters."""
    if filters.dim() == 4:
        sb, st, sh, sw = filters.stride()
        return sb, 0, st, sh, sw
    return filters.stride()


def _bias_strides(bias: Tensor | None) -> tuple[int, int, int, int]:
    if bias is None:
        return 0, 0, 0, 0
    sb, sc, sh, sw = bias.stride()
    return sb, sc if bias.shape[1] > 1 else 0, sh, sw


class _TritonLocalFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, filters: Tensor, bias: Tensor | None, kh: int, kw: int) -> Tensor:
        c, h, w = x.shape[1:]
        out = torch.empty_like(x, dtype=result_dtype(x, filters, bias))
        grid, block_c = _launch_shape(x)
        _forward_kernel[grid](
            x, x if bias is None else bias, filters, out,
            c, h, w,
            *x.stride(), *_bias_strides(bias), *_filter_strides(filters), *out.stride(),
            KH=kh, KW=kw, HAS_BIAS=bias is not None, SHARED=filters.dim() == 4,
            BLOCK_C=block_c, BLOCK_P=BLOCK_PIXELS,
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
        grid, block_c = _launch_shape(x)
        _backward_kernel[grid](
            x, x if bias is None else bias, filters, grad_out,
            x if grad_u is None else grad_u, filters if grad_filters is None else grad_filters,
            c, h, w,
            *x.stride(), *_bias_strides(bias), *_filter_strides(filters), *grad_out.stride(),
            KH=kh, KW=kw, HAS_BIAS=bias is not None, SHARED=filters.dim() == 4,
            NEED_INPUT=need_input, NEED_FILTERS=need_filters,
            BLOCK_C=block_c, BLOCK_P=BLOCK_PIXELS,
        )  # fmt: skip
        grad_x = grad_bias = None
        if need_x:
            grad_x = grad_u.to(x.dtype)
        if need_bias:
            if bias.shape[1] == 1 and c > 1:
                grad_u = grad_u.sum(dim=1, keepdim=True)
            grad_bias = grad_u.to(bias.dtype)
        return grad_x, grad_filters, grad_bias, None, None


def triton_local_filter(
    x: Tensor, filters: Tensor, kernel_size: tuple[int, int], bias: Tensor | None = None
) -> Tensor:
    """The Triton implementation of ``dfn.filtering.dynamic_local_filter`` (checked inputs)."""
    # any strides work; contiguous filters make each tap's plane one coalesced read
    return _TritonLocalFilter.apply(x, filters.contiguous(), bias, *kernel_size)
