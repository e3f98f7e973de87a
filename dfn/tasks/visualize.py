"""Images for TensorBoard: sequences, learned filters and the flow fields they carry (Figure 7)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import flow_to_image, make_grid


def sequence_grid(rows: list[Tensor]) -> Tensor:
    """rows: equally long sequences [T, 1, H, W] -> one image, a sequence per row."""
    frames = torch.cat([r.detach().float().clamp(0, 1).cpu() for r in rows])
    return make_grid(frames, nrow=rows[0].shape[0], padding=1, pad_value=0.5)


def flow_grid(flows: list[Tensor]) -> Tensor:
    """Expected displacements [1, 2, H, W] of consecutive steps' filters -> a row of flow images
    (paper Figure 7).

    Each pixel shows its filter's expected displacement in the optical-flow colour code of
    ``torchvision.utils.flow_to_image`` (hue = direction, saturation = length, normalised by the
    longest displacement in the row).
    """
    fields = torch.cat([f.detach().float().cpu() for f in flows])
    return make_grid(flow_to_image(fields), nrow=len(fields), padding=1, pad_value=255)


def filter_grid(filters: Tensor, kernel_size, nrow: int = 8) -> Tensor:
    """[N, kh*kw] filters -> kh x kw images, ``nrow`` a row, each scaled to its own range."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    f = filters.detach().float().cpu().view(-1, 1, kh, kw)
    lo = f.amin(dim=(2, 3), keepdim=True)
    hi = f.amax(dim=(2, 3), keepdim=True)
    f = (f - lo) / (hi - lo).clamp_min(1e-8)
    f = torch.nn.functional.interpolate(f, scale_factor=8, mode="nearest")
    return make_grid(f, nrow=nrow, padding=2, pad_value=0.5)


def colorize(values: Tensor, lo: float, hi: float) -> Tensor:
    """[N, 1, H, W] scalars -> grayscale images in [0, 1] over the range [lo, hi]; NaN is 0."""
    v = ((values.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return torch.nan_to_num(v, nan=0.0)
