"""A filter-generating network, the head that turns its output into a frame, and the rollout.

The generator is built for a dynamic local filter (``filtering``): it outputs that filter's taps,
plus one channel with a dynamic bias. The head the config picks uses them:

- ``FilterHead``, the DFN (paper section 3): the filter applied to the most recent input frame;
- ``ConvHead``, the authors' baseline: the same network followed by a linear 1x1 conv to one
  channel, optionally clipped to [eps, 1 - eps] (``clip_output``: the Moving MNIST baseline,
  trained with a BCE).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dfn.errors import InputError
from dfn.models.generators import Conv2d, FilterGenerator, complete, he_uniform_
from dfn.ops.filtering import DynamicLocalFilter

EPS = float(torch.finfo(torch.float32).eps)


class FilterHead(nn.Module):
    """The DFN: the most recent frame filtered with the generated per-pixel filters."""

    def __init__(self, filtering: DynamicLocalFilter) -> None:
        super().__init__()
        self.filtering = filtering

    @property
    def reach(self) -> tuple[int, int]:
        """How far (vertically, horizontally) in pixels the prediction can move content."""
        return self.filtering.reach

    def forward(self, window: Tensor, generated: Tensor) -> tuple[Tensor, Tensor]:
        """window [B, k, H, W], generated [B, taps (+1), H, W] -> prediction [B, 1, H, W] and
        the filters applied [B, taps, H, W]."""
        return self.filtering(window[:, -1:], generated)

    def expected_displacement(self, filters: Tensor) -> Tensor:
        """The filters' expected offsets [B, 2, H, W] as (dx, dy) in pixels: the flow they carry
        (paper Figure 7), or for a 1xK filter the disparity."""
        return self.filtering.expected_displacement(filters)


class ConvHead(nn.Module):
    """The authors' baseline: a linear 1x1 conv from the generator's output to the frame.

    It takes what the DFN's filter would (``filtering.generated_channels``), so that the two
    models differ only in their last layer. It moves no pixel, so it has no ``reach`` (None):
    whatever motion it predicts comes from the generator's receptive field.
    """

    reach = None

    def __init__(self, filtering: DynamicLocalFilter, clip_output: bool = False) -> None:
        super().__init__()
        self.conv = Conv2d(filtering.generated_channels, 1, 1)
        he_uniform_(self.conv)
        self.clip_output = clip_output

    def forward(self, window: Tensor, generated: Tensor) -> tuple[Tensor, None]:
        """generated [B, channels, H, W] -> prediction [B, 1, H, W] (float32) and no filters."""
        # float32 before the clip: under bf16 autocast 1 - eps would round to 1.
        prediction = self.conv(generated).float()
        if self.clip_output:
            prediction = prediction.clamp(EPS, 1.0 - EPS)
        return prediction, None

    def extra_repr(self) -> str:
        return f"clip_output={self.clip_output}"


Head = FilterHead | ConvHead


class DynamicFilterPredictor(nn.Module):
    """Generator -> head, one step at a time; ``rollout`` feeds predictions back (section 4.2).

    ``head`` is a partial config (``_partial_: true``) that the predictor completes with
    ``filtering``.
    """

    def __init__(
        self,
        generator: Callable[..., FilterGenerator],
        filtering: DynamicLocalFilter,
        head: Callable[..., Head],
        frames_per_step: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # The generator sees the last frames as channels and outputs the filter's taps (+ bias).
        self.generator = complete(
            generator,
            "the predictor (in_channels: frames_per_step; out_channels: the filter's taps, "
            "plus one with a dynamic bias)",
            in_channels=frames_per_step,
            out_channels=filtering.generated_channels,
        )
        if compile:  # torch.compile the generator's stages in place (the rollout calls them one
            # by one); the state dict is unchanged
            for stage in self.generator.children():
                stage.compile()
        # Built after the generator, so that a seed gives the DFN and its baseline the same
        # generator weights.
        self.head = complete(
            head,
            "the predictor (filtering: the filter the generator is built for)",
            filtering=filtering,
        )
        self.frames_per_step = frames_per_step

    def extra_repr(self) -> str:
        return f"frames_per_step={self.frames_per_step}"

    def step(
        self, window: Tensor, hidden: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """window [B, k, H, W] -> prediction [B, 1, H, W], filters [B, taps, H, W] or None, h."""
        generated, hidden = self.generator(window, hidden)
        prediction, filters = self.head(window, generated)
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
        steps = num_input - k + num_predicted
        # The windows of context frames need no previous step: the encoder takes them in one
        # call, a batch of known * B (same maths, larger convolutions).
        known = num_input - k + 1
        windows = torch.cat([context[:, s : s + k, 0] for s in range(known)])
        encoded = self.generator.encoder(windows).chunk(known)
        frames = list(context.unbind(1))
        hidden = None
        predictions, filters = [], []
        for s in range(steps):
            window = torch.cat(frames[s : s + k], 1)
            features = encoded[s] if s < known else self.generator.encoder(window)
            hidden = self.generator.recur(features, hidden)
            if s + k < num_input:
                continue  # it would predict a context frame: only its hidden state is needed
            prediction, step_filters = self.head(window, self.generator.decode(hidden))
            frames.append(prediction)
            predictions.append(prediction)
            filters.append(step_filters)
        return torch.stack(predictions, 1), filters
