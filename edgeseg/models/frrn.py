"""FRRN (Pohlen, Hermans, Mathias & Leibe, 2017): full-resolution residual networks.

Two streams run side by side. The *residual stream* ``y`` stays at the input
resolution (32 channels in the paper) and only ever has things added to it; the
*pooling stream* ``z`` is max-pooled by 2 before each encoder group and
upsampled by 2 (bilinear) before each decoder group. Every full-resolution
residual unit (FRRU) at scale ``s`` max-pools ``y`` by ``s`` (window and stride
``s``), concatenates it with ``z``, applies conv3x3-BN-ReLU twice to give the new
``z``, and adds a 1x1 projection of the new ``z`` to 32 channels, upsampled by
``s`` (nearest: each pooled cell back onto the pixels it pooled), to ``y``.

The paper's Table 1, which the defaults follow:

- in: 5x5 conv (48) + BN + ReLU, 3 residual units (48), then the split: ``z`` is
  the 48-channel map, ``y`` a 1x1 projection of it to 32 channels;
- FRRN A: encoder 3xFRRU(96) at /2, 4xFRRU(192) at /4, 2xFRRU(384) at /8,
  2xFRRU(384) at /16; decoder 2xFRRU(192) at /8, 2xFRRU(192) at /4, 2xFRRU(96)
  at /2. Input sides must be multiples of 16;
- FRRN B: one more encoder group, 2xFRRU(384) at /32, and one more decoder
  group, 2xFRRU(192) at /16. Input sides must be multiples of 32;
- out: ``z`` upsampled to full resolution and concatenated with ``y``, a 1x1
  conv-BN-ReLU to 48 channels (the paper does not spell out how the 128 channels
  become 48), 3 residual units (48) and a 1x1 classifier.

A residual unit is conv3x3-BN-ReLU-conv3x3-BN plus the identity. ``width``
scales every channel count (tests use small widths). The registry's
``multiple_of`` is variant A's 16 and ``multiple_by_option`` raises it to 32
for variant B, so ``build`` checks the size and pads a dynamic graph's frames
to multiples of 32 (with 16, a frame that padded to an odd multiple of 16 would
fail in the runtime: the /32 FRRUs' upsampled projections would no longer
match the residual stream).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import ConfigError
from edgeseg.models.layers import ConvBNReLU, check_spatial_size, init_weights
from edgeseg.models.registry import ModelSpec

__all__ = ["FRRN", "FRRU", "SPECS", "ResidualUnit", "build_frrn"]

#: (units, channels, scale) of the encoder and decoder groups, from the paper's Table 1.
ENCODER = {
    "A": ((3, 96, 2), (4, 192, 4), (2, 384, 8), (2, 384, 16)),
    "B": ((3, 96, 2), (4, 192, 4), (2, 384, 8), (2, 384, 16), (2, 384, 32)),
}
DECODER = {
    "A": ((2, 192, 8), (2, 192, 4), (2, 96, 2)),
    "B": ((2, 192, 16), (2, 192, 8), (2, 192, 4), (2, 96, 2)),
}
#: Input sides must be multiples of the deepest scale.
MULTIPLE_OF = {"A": 16, "B": 32}
STEM_CHANNELS = 48
RESIDUAL_CHANNELS = 32


class ResidualUnit(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the identity (the paper's RU)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels, 3),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the residual."""
        return x + self.body(x)


class FRRU(nn.Module):
    """Full-resolution residual unit at ``scale``: ``(z, y) -> (z', y + up(proj(z')))``.

    Args:
        in_channels: Channels of the pooling stream ``z`` coming in.
        out_channels: Channels of the pooling stream going out.
        residual_channels: Channels of the residual stream ``y``.
        scale: Resolution of ``z`` relative to ``y`` (a power of 2).
    """

    def __init__(
        self, in_channels: int, out_channels: int, residual_channels: int, scale: int
    ) -> None:
        super().__init__()
        self.scale = scale
        self.convs = nn.Sequential(
            ConvBNReLU(in_channels + residual_channels, out_channels, 3),
            ConvBNReLU(out_channels, out_channels, 3),
        )
        self.project = nn.Conv2d(out_channels, residual_channels, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The new pooling stream (at ``z``'s size) and the new residual stream (at ``y``'s)."""
        pooled = F.max_pool2d(y, self.scale, self.scale)
        z = self.convs(torch.cat((z, pooled), dim=1))
        y = y + F.interpolate(self.project(z), scale_factor=self.scale, mode="nearest")
        return z, y


class FRRN(nn.Module):
    """FRRN A or B (see the module docstring for the layout).

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        variant: ``"A"`` (deepest scale /16) or ``"B"`` (/32).
        width: Scale of every channel count (1.0 = the paper's).
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, variant: str = "A", width: float = 1.0
    ) -> None:
        super().__init__()
        if variant not in ENCODER:
            raise ConfigError(f"frrn: variant must be one of {', '.join(ENCODER)}, got {variant!r}")

        def scaled(channels: int) -> int:
            return max(1, int(round(channels * width)))

        self.variant = variant
        self.multiple_of = MULTIPLE_OF[variant]
        stem, residual = scaled(STEM_CHANNELS), scaled(RESIDUAL_CHANNELS)
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, stem, 5), *(ResidualUnit(stem) for _ in range(3))
        )
        self.split = nn.Conv2d(stem, residual, 1)
        last = stem
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for groups, target in ((ENCODER[variant], self.encoder), (DECODER[variant], self.decoder)):
            for units, channels, scale in groups:
                group = nn.ModuleList()
                for _ in range(units):
                    group.append(FRRU(last, scaled(channels), residual, scale))
                    last = scaled(channels)
                target.append(group)
        self.merge = ConvBNReLU(last + residual, stem, 1)
        self.head = nn.Sequential(
            *(ResidualUnit(stem) for _ in range(3)), nn.Conv2d(stem, num_classes, 1)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` for H and W multiples of 16 (A) or 32 (B)."""
        check_spatial_size(x, "frrn", self.multiple_of)
        z = self.stem(x)
        y = self.split(z)
        for group in self.encoder:
            z = F.max_pool2d(z, 2, 2)
            for unit in cast(nn.ModuleList, group):
                z, y = unit(z, y)
        for group in self.decoder:
            z = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
            for unit in cast(nn.ModuleList, group):
                z, y = unit(z, y)
        z = F.interpolate(z, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.merge(torch.cat((z, y), dim=1)))


def build_frrn(*, num_classes: int, in_channels: int = 3, variant: str, width: float) -> FRRN:
    """Factory used by the registry (options validated there; ranges checked here)."""
    if not width > 0:
        raise ConfigError(f"frrn: width must be > 0, got {width}")
    return FRRN(num_classes, in_channels, variant=variant, width=width)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="frrn",
        description=(
            "FRRN: full-resolution residual stream beside a pooling stream of FRRUs "
            "(A: down to /16; B: /32, sides multiples of 32)"
        ),
        factory=build_frrn,
        options={"variant": "A", "width": 1.0},
        choices={"variant": ("A", "B")},
        multiple_of=MULTIPLE_OF["A"],
        default_input_size=(512, 512),
        multiple_by_option={"variant": MULTIPLE_OF},
    ),
)
