"""Filter-generating networks, built from a compact spec (paper sections 4.1-4.3).

A convolutional generator is a list of layers per stage: an int is a 3x3 conv of that width,
"Ns2" a stride-2 conv, "Nu" a conv with untied biases (one bias per channel and pixel), "up" a
nearest x2 upsampling. Every conv is followed by leaky ReLU (slope 0.01); the last 1x1 conv of the
head is linear. With a ``recurrent`` stage the hidden state (zeros at the start) goes through its
convs and is ADDED to the encoder's output; the sum is the new hidden state (the authors' code).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from dfn.errors import InputError

Layer = int | str
T = TypeVar("T")


def complete(factory: Callable[..., T], by: str, **derived) -> T:
    """Call a partial config (``_partial_: true``) with the arguments its owner derives.

    A value the config sets for one of them would be silently replaced, so it is an error that
    names the argument and who derives it (``by``).
    """
    given = set(factory.keywords) if isinstance(factory, functools.partial) else set()
    for name in sorted(given & set(derived)):
        raise InputError(
            f"{name}={factory.keywords[name]} is set in the config, but {by} derives it "
            f"({name}={derived[name]}); remove it"
        )
    return factory(**derived)


def he_uniform_(module: nn.Module) -> None:
    """The authors' init: weights U(-sqrt(3/fan_in), sqrt(3/fan_in)) (He-uniform), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, UntiedBiasConv):
            nn.init.zeros_(m.bias)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU's convolutions run in bf16 in oneDNN kernels (AVX-512, AMX). Without them
    (AVX2 only) torch falls back to generic kernels about ten times slower than float32 ones."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _emulating_bf16(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not native_bf16()
    )


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs bf16 autocast on a CPU without bf16 kernels (``native_bf16``) as
    float32 convolutions of the bf16-rounded input, weight and bias, rounded back to bf16.

    That is the arithmetic of oneDNN's bf16 kernels (products of bf16 values are exact in float32,
    sums run in float32, the result is rounded once), so it is the same bf16-mixed maths up to the
    order of the sums, at float32 speed. Elsewhere it is ``nn.Conv2d``; its state dict too.
    """

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not _emulating_bf16(x):
            return super()._conv_forward(x, weight, bias)

        def rounded(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(torch.bfloat16).float()

        with torch.autocast("cpu", enabled=False):
            out = super()._conv_forward(rounded(x), rounded(weight), rounded(bias))
        return out.to(torch.bfloat16)


class UntiedBiasConv(nn.Module):
    """A 3x3 conv whose bias is not shared over positions: one value per channel and pixel."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels, *size))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.bias

    def extra_repr(self) -> str:
        return f"untied bias {list(self.bias.shape)}"


def _parse(layer: Layer) -> tuple[str, int]:
    if layer == "up":
        return "up", 0
    text = str(layer)
    for suffix, kind in (("s2", "stride2"), ("u", "untied")):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return kind, int(text[: -len(suffix)])
    if text.isdigit():
        return "conv", int(text)
    raise InputError(f"unknown generator layer {layer!r}; expected an int, 'Ns2', 'Nu' or 'up'")


def conv_stack(
    layers: list[Layer], in_channels: int, size: tuple[int, int]
) -> tuple[nn.Sequential, int, tuple[int, int]]:
    """Build a stage; returns it, its output width and its output spatial size."""
    modules: list[nn.Module] = []
    channels, (h, w) = in_channels, size
    for layer in layers:
        kind, width = _parse(layer)
        if kind == "up":
            modules.append(nn.Upsample(scale_factor=2, mode="nearest"))
            h, w = 2 * h, 2 * w
            continue
        if kind == "stride2":
            modules.append(Conv2d(channels, width, 3, stride=2, padding=1))
            h, w = (h + 1) // 2, (w + 1) // 2
        elif kind == "untied":
            modules.append(UntiedBiasConv(channels, width, (h, w)))
        else:
            modules.append(Conv2d(channels, width, 3, padding=1))
        modules.append(nn.LeakyReLU(0.01))
        channels = width
    return nn.Sequential(*modules), channels, (h, w)


class FilterGenerator(nn.Module):
    """encoder -> (recurrence) -> decoder -> 1x1 head -> linear 1x1 to ``out_channels``.

    ``forward(x, hidden)`` runs one step and returns ``(generated, hidden)``; ``hidden`` is None
    for a generator without recurrence. A rollout calls the parts of a step (``encoder``,
    ``recur``, ``decode``) itself: the encoder needs no previous step.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int | tuple[int, int],
        encoder: list[Layer],
        decoder: list[Layer],
        head: list[int] = (),
        recurrent: list[Layer] = (),
    ) -> None:
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.encoder, channels, inner = conv_stack(list(encoder), in_channels, size)
        self.recurrent = None
        if recurrent:
            self.recurrent, hidden_channels, _ = conv_stack(list(recurrent), channels, inner)
            if hidden_channels != channels:
                raise InputError(
                    f"the recurrent stage must end with the encoder's width {channels}, "
                    f"got {hidden_channels}"
                )
        self.hidden_shape = (channels, *inner)
        self.decoder, channels, out_size = conv_stack(list(decoder), channels, inner)
        if out_size != size:
            raise InputError(
                f"the generator maps {size} to {out_size}; "
                "the decoder must undo the encoder's strides"
            )
        head_layers: list[nn.Module] = []
        for width in head:
            head_layers += [Conv2d(channels, width, 1), nn.LeakyReLU(0.01)]
            channels = width
        head_layers.append(Conv2d(channels, out_channels, 1))
        self.head = nn.Sequential(*head_layers)
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, size
        he_uniform_(self)

    def extra_repr(self) -> str:
        hidden = "" if self.recurrent is None else f", hidden state {list(self.hidden_shape)}"
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"image_size={self.image_size}{hidden}"
        )

    def recur(self, features: Tensor, hidden: Tensor | None) -> Tensor:
        """The encoder's ``features`` plus the recurrent stage's output of ``hidden`` (zeros when
        None): the new hidden state. Without recurrence, the features."""
        if self.recurrent is None:
            return features
        if hidden is None:
            hidden = torch.zeros_like(features)  # in the features' layout (channels-last)
        return features + self.recurrent(hidden)

    def decode(self, features: Tensor) -> Tensor:
        """The generated filters (and bias) [B, out_channels, H, W] of a step's features."""
        return self.head(self.decoder(features))

    def forward(self, x: Tensor, hidden: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        features = self.recur(self.encoder(x), hidden)
        return self.decode(features), (None if self.recurrent is None else features)


class MLPFilterGenerator(nn.Module):
    """Fully connected generator from a conditioning vector (the steerable filter's angle, 4.1)."""

    def __init__(
        self, in_features: int, hidden: list[int], out_features: int, zero_init_output: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.LeakyReLU(0.01)]
            in_features = width
        layers.append(nn.Linear(in_features, out_features))
        self.net = nn.Sequential(*layers)
        he_uniform_(self)
        if zero_init_output:  # start from the zero filter (see configs/model/steerable.yaml)
            nn.init.zeros_(self.net[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
