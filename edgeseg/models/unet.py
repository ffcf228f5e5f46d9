"""U-Net (Ronneberger, Fischer & Brox, 2015) with padded convolutions and BatchNorm.

Four 2x2 max-pool downsamplings (so input sides must be multiples of 16),
double 3x3 conv + BN + ReLU blocks, concatenated skips. Optional squeeze-and-
excitation at the end of every double conv and modulated deformable
convolutions in the bottleneck.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import ConfigError
from edgeseg.models.layers import (
    ConvBNReLU,
    SqueezeExcite,
    check_spatial_size,
    init_weights,
    make_deformable,
)
from edgeseg.models.registry import ModelSpec

logger = logging.getLogger(__name__)

#: Input sides must be multiples of this (spec.multiple_of; checked in eager forward).
MULTIPLE_OF = 16

__all__ = ["SPECS", "DoubleConv", "UNet", "build_unet"]

_UPSAMPLE = ("transposed", "bilinear")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv + BN + ReLU, optionally followed by a squeeze-excite block.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        se: Append a :class:`SqueezeExcite` block.
    """

    def __init__(self, in_channels: int, out_channels: int, se: bool = False) -> None:
        layers: list[nn.Module] = [
            ConvBNReLU(in_channels, out_channels, 3),
            ConvBNReLU(out_channels, out_channels, 3),
        ]
        if se:
            layers.append(SqueezeExcite(out_channels))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample x2 (halving channels), concatenate the skip, double conv.

    Args:
        in_channels: Channels of the coarse input.
        out_channels: Channels of the skip and of the output.
        upsample: ``"transposed"`` (2x2 stride-2 transposed conv) or
            ``"bilinear"`` (``F.interpolate`` to the skip's size + 1x1 conv).
        se: Squeeze-excite in the double conv.
    """

    def __init__(self, in_channels: int, out_channels: int, upsample: str, se: bool) -> None:
        super().__init__()
        self.mode = upsample
        self.up: nn.Module
        if upsample == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        else:
            self.up = nn.Conv2d(in_channels, out_channels, 1)
        self.conv = DoubleConv(2 * out_channels, out_channels, se)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse the coarse features ``x`` with ``skip`` (twice the resolution)."""
        if self.mode == "transposed":
            x = self.up(x)
        else:
            x = self.up(
                F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            )
        return self.conv(torch.cat((skip, x), dim=1))


class UNet(nn.Module):
    """U-Net with channels ``c, 2c, 4c, 8c`` and a ``16c`` bottleneck.

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        base_channels: ``c``, channels of the first level (64 in the paper).
        upsample: ``"transposed"`` or ``"bilinear"``.
        se: Squeeze-excite at the end of every double conv.
        deformable: Modulated deformable convolutions in the bottleneck.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        base_channels: int = 64,
        upsample: str = "transposed",
        se: bool = False,
        deformable: bool = False,
    ) -> None:
        super().__init__()
        if upsample not in _UPSAMPLE:
            raise ConfigError(f"upsample must be one of {_UPSAMPLE}, got {upsample!r}")
        c = base_channels
        widths = [c, 2 * c, 4 * c, 8 * c, 16 * c]
        self.inc = DoubleConv(in_channels, widths[0], se)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1], se))
            for i in range(4)
        )
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], upsample, se) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        init_weights(self)
        if deformable:
            make_deformable(cast(nn.Sequential, self.downs[3])[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` for ``x`` ``(N, C, H, W)``, H and W multiples of 16."""
        check_spatial_size(x, "unet", MULTIPLE_OF)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)


def build_unet(
    *,
    num_classes: int,
    in_channels: int = 3,
    base_channels: int,
    upsample: str,
    se: bool,
    deformable: bool,
) -> UNet:
    """Factory used by the registry (options validated there; ranges checked here)."""
    if base_channels < 1:
        raise ConfigError(f"unet: base_channels must be >= 1, got {base_channels}")
    return UNet(num_classes, in_channels, base_channels, upsample, se, deformable)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="unet",
        description="U-Net, 4 levels, padded double conv + BN, concatenated skips",
        factory=build_unet,
        options={"base_channels": 64, "upsample": "transposed", "se": False, "deformable": False},
        choices={"upsample": _UPSAMPLE},
        multiple_of=MULTIPLE_OF,
        default_input_size=(512, 512),
    ),
)
