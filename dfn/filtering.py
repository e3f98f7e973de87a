"""The dynamic filtering layers of the paper (section 3).

A dynamic local filter applies one generated filter per pixel (and per sample); a dynamic
convolution applies one generated filter per sample at every position. Taps are ordered
row-major over the kernel window, exactly like ``torch.nn.functional.unfold``; padding is zero
and the output has the input's spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfn.errors import InputError


def _pair(kernel_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if kh < 1 or kw < 1 or kh % 2 == 0 or kw % 2 == 0:
        raise InputError(f"kernel_size must be odd and positive, got {kernel_size!r}")
    return int(kh), int(kw)


def _check_local(
    x: Tensor, filters: Tensor, kernel_size, bias: Tensor | None
) -> tuple[int, int]:
    kh, kw = _pair(kernel_size)
    if x.dim() != 4:
        raise InputError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
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
        raise InputError(
            f"filters for a {kh}x{kw} dynamic local filter on x of shape {tuple(x.shape)} "
            f"must be {expected}, got {shape}"
        )
    if bias is not None and (bias.dim() != 4 or tuple(bias.shape) not in {(b, 1, h, w), (b, c, h, w)}):
        raise InputError(
            f"bias must be [{b}, 1, {h}, {w}] or [{b}, {c}, {h}, {w}], got {tuple(bias.shape)}"
        )
    return kh, kw


def dynamic_local_filter_reference(
    x: Tensor, filters: Tensor, kernel_size, bias: Tensor | None = None
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


def dynamic_local_filter(
    x: Tensor, filters: Tensor, kernel_size, bias: Tensor | None = None
) -> Tensor:
    """Filter each pixel of ``x`` with its own generated filter.

    x: [B, C, H, W]; filters: [B, kh*kw, H, W] (shared by the channels) or [B, C, kh*kw, H, W];
    bias: optional [B, 1 or C, H, W], added to ``x`` before filtering (the paper's dynamic bias).
    Returns [B, C, H, W].
    """
    return dynamic_local_filter_reference(x, filters, kernel_size, bias)


def dynamic_conv(x: Tensor, filters: Tensor, kernel_size) -> Tensor:
    """Convolve each sample with its own generated filter (the paper's dynamic convolution).

    x: [B, C, H, W]; filters: [B, kh*kw] (shared by the channels) or [B, C, kh*kw].
    Returns [B, C, H, W].
    """
    kh, kw = _pair(kernel_size)
    if x.dim() != 4:
        raise InputError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if tuple(filters.shape) not in {(b, kh * kw), (b, c, kh * kw)}:
        raise InputError(
            f"filters for a {kh}x{kw} dynamic convolution on x of shape {tuple(x.shape)} "
            f"must be [{b}, {kh * kw}] or [{b}, {c}, {kh * kw}], got {tuple(filters.shape)}"
        )
    weight = filters.reshape(b, -1, 1, kh, kw).expand(b, c, 1, kh, kw).reshape(b * c, 1, kh, kw)
    out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=(kh // 2, kw // 2), groups=b * c)
    return out.view(b, c, h, w)


class DynamicLocalFilter(nn.Module):
    """Turns a filter-generating network's output into filters and applies them.

    The generator's output has kh*kw tap channels, plus one more when ``dynamic_bias`` is set
    (the bias is added to the input before filtering, as the authors did).
    """

    def __init__(self, kernel_size, softmax: bool = True, dynamic_bias: bool = False) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.softmax = softmax
        self.dynamic_bias = dynamic_bias

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def generated_channels(self) -> int:
        return self.taps + int(self.dynamic_bias)

    def split(self, generated: Tensor) -> tuple[Tensor, Tensor | None]:
        """[B, taps (+1), H, W] -> filters [B, taps, H, W] (softmaxed if set), bias or None."""
        if generated.dim() != 4 or generated.shape[1] != self.generated_channels:
            raise InputError(
                f"the filter generator must output [B, {self.generated_channels}, H, W] for a "
                f"{self.kernel_size[0]}x{self.kernel_size[1]} filter"
                f"{' with dynamic bias' if self.dynamic_bias else ''}, got {tuple(generated.shape)}"
            )
        filters = generated[:, : self.taps]
        if self.softmax:
            filters = filters.softmax(dim=1)
        bias = generated[:, self.taps :] if self.dynamic_bias else None
        return filters, bias

    def forward(self, x: Tensor, generated: Tensor) -> Tensor:
        filters, bias = self.split(generated)
        return dynamic_local_filter(x, filters, self.kernel_size, bias)


class DynamicConv(nn.Module):
    """Applies one generated filter per sample, optionally softmaxed over its taps."""

    def __init__(self, kernel_size, softmax: bool = False) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.softmax = softmax

    def forward(self, x: Tensor, filters: Tensor) -> Tensor:
        if self.softmax:
            filters = filters.softmax(dim=-1)
        return dynamic_conv(x, filters, self.kernel_size)


def expected_displacement(filters: Tensor, kernel_size) -> Tensor:
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
