"""A filter-generating network wired to a dynamic filtering layer, and the video rollout.

``mode="dfn"`` filters the most recent input frame with the generated per-pixel filters (paper
section 3); ``mode="baseline"`` is the authors' baseline: the same network followed by a linear
1x1 conv to one output channel, clipped to [eps, 1 - eps] when the loss is a BCE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from dfn.errors import InputError
from dfn.models.generators import FilterGenerator, complete, he_uniform_
from dfn.ops.filtering import DynamicLocalFilter, dynamic_local_filter

EPS = float(torch.finfo(torch.float32).eps)


class DynamicFilterPredictor(nn.Module):
    def __init__(
        self,
        generator: Callable[..., FilterGenerator],
        filtering: DynamicLocalFilter,
        mode: Literal["dfn", "baseline"] = "dfn",
        frames_per_step: int = 1,
        clip_output: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("dfn", "baseline"):
            raise InputError(f"model mode must be 'dfn' or 'baseline', got {mode!r}")
        # The generator sees the last frames as channels and outputs the filters' taps (+ bias).
        self.generator = complete(
            generator,
            "the predictor (in_channels: frames_per_step; out_channels: the filter's taps, "
            "plus one with a dynamic bias)",
            in_channels=frames_per_step,
            out_channels=filtering.generated_channels,
        )
        if compile:  # torch.compile the per-step network in place; the state dict is unchanged
            self.generator.compile()
        self.filtering = filtering
        self.mode = mode
        self.frames_per_step = frames_per_step
        self.clip_output = clip_output
        if mode == "baseline":
            self.output = nn.Conv2d(filtering.generated_channels, 1, 1)
            he_uniform_(self.output)

    def step(
        self, window: Tensor, hidden: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """window [B, k, H, W] -> prediction [B, 1, H, W], filters [B, taps, H, W] or None, h."""
        generated, hidden = self.generator(window, hidden)
        if self.mode == "baseline":
            # float32 before the clip: under bf16 autocast 1 - eps would round to 1.
            prediction, filters = self.output(generated).float(), None
        else:
            filters, bias = self.filtering.split(generated)
            prediction = dynamic_local_filter(
                window[:, -1:], filters, self.filtering.kernel_size, bias, impl=self.filtering.impl
            )
        if self.clip_output:
            prediction = prediction.clamp(EPS, 1.0 - EPS)
        return prediction, filters, hidden

    def rollout(self, context: Tensor, num_predicted: int) -> tuple[Tensor, list[Tensor | None]]:
        """Predict ``num_predicted`` frames after ``context`` [B, T_in, 1, H, W].

        Each step sees the last ``frames_per_step`` frames as channels; once the context is used
        up, the model's own predictions are fed back (also in training, as the authors did).
        Returns predictions [B, num_predicted, 1, H, W] and the filters of each predicted frame.
        """
        k, num_input = self.frames_per_step, context.shape[1]
        if context.dim() != 5 or context.shape[2] != 1 or num_input < k or num_predicted < 1:
            raise InputError(
                f"the rollout needs context [B, T_in >= {k}, 1, H, W] and num_predicted >= 1, "
                f"got context {tuple(context.shape)} and num_predicted={num_predicted}"
            )
        frames = list(context.unbind(1))
        hidden = None
        predictions, filters = [], []
        for s in range(num_input - k + num_predicted):
            prediction, step_filters, hidden = self.step(torch.cat(frames[s : s + k], 1), hidden)
            if s + k >= num_input:
                frames.append(prediction)
                predictions.append(prediction)
                filters.append(step_filters)
        return torch.stack(predictions, 1), filters
