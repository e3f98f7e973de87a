"""Images for TensorBoard and the run folder: sequences, learned filters and the flow fields they
carry (Figure 7), and a metric per predicted frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import flow_to_image, make_grid

from dfn.files import replacing


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


def error_per_frame(
    models: dict[str, list[float]], trivial: dict[str, list[float]], ylabel: str, title: str
) -> Tensor:
    """A metric at each predicted frame t+k, one line per model (label -> values for k = 1...),
    as an image [3, H, W]. A trivial predictor (copy last frame) is drawn dashed; one so far above
    the models that it would squash their comparison is left off the chart, and its range is
    written under it instead."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    for label, values in models.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    top = max(max(values) for values in models.values())
    notes = []
    for label, values in trivial.items():
        if max(values) > 2 * top:
            notes.append(
                f"{label}: {values[0]:,.4g} at t+1 to {values[-1]:,.4g} at t+{len(values)}"
            )
        else:
            ax.plot(range(1, len(values) + 1), values, "k--", label=label)
    ax.set_xlabel("predicted frame t+k")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    if notes:
        fig.text(0.5, 0.01, "off the chart, far above: " + "; ".join(notes), ha="center",
                 fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04 if notes else 0, 1, 1))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return torch.from_numpy(np.asarray(canvas.buffer_rgba())[..., :3].copy()).permute(2, 0, 1)


def write_png(path: str | Path, image: Tensor) -> Path:
    """An image [C, H, W] (uint8, or float in [0, 1]) as a PNG file, all or nothing."""
    if image.is_floating_point():  # rounded as torchvision's save_image rounds
        image = image.detach().float().cpu().mul(255).add(0.5).clamp(0, 255)
    pixels = image.to(torch.uint8).cpu().permute(1, 2, 0).numpy()
    with replacing(path) as tmp:
        Image.fromarray(pixels.squeeze(2) if pixels.shape[2] == 1 else pixels).save(tmp, "PNG")
    return Path(path)
