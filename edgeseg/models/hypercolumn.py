"""Hypercolumns (Hariharan, Arbeláez, Girshick & Malik, 2015): every pixel classified from features of many depths.

A VGG-16 encoder (with batch normalisation) gives the activations of its
conv2, conv3, conv4, conv5 stages and of fc7 (as a 7x7/1x1 convolution pair on
pool5). Each is projected by a 1x1 convolution to ``column_channels``,
upsampled (bilinear) to 1/4 of the input, and summed: the paper's efficient
form of concatenating the hypercolumn and applying a linear classifier, since a
1x1 convolution of a concatenation is the sum of the 1x1 convolutions of its
parts. A non-linearity and a 1x1 classifier on that 1/4-resolution map follow
(the paper's grid of location-specific classifiers is left out), and a bilinear
upsampling gives logits at the input size. Input sides must be multiples of 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import ConfigError
from edgeseg.models.deconvnet import vgg16_bn_stages
from edgeseg.models.layers import check_spatial_size, init_weights
from edgeseg.models.registry import ModelSpec

MULTIPLE_OF = 32

__all__ = ["SPECS", "Hypercolumn", "build_hypercolumn"]


class Hypercolumn(nn.Module):
    """Hypercolumn segmentation on a VGG-16 encoder.

    Args:
        num_classes: output classes.
        in_channels: input channels.
        width: scale of the VGG channels (1.0 = VGG-16).
        fc_channels: channels of fc6 / fc7 (4096 in the paper).
        column_channels: channels each depth is projected to before they are summed.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        fc_channels: int = 4096,
        column_channels: int = 512,
    ) -> None:
        super().__init__()
        self.stages, channels = vgg16_bn_stages(in_channels, width)
        last = channels[-1]
        self.fc = nn.Sequential(
            nn.Conv2d(last, fc_channels, 7, padding=3),
            nn.BatchNorm2d(fc_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.BatchNorm2d(fc_channels),
            nn.ReLU(inplace=True),
        )
        # conv2, conv3, conv4, conv5 (before their pools) and fc7
        self.columns = nn.ModuleList(
            nn.Conv2d(c, column_channels, 1) for c in (*channels[1:], fc_channels)
        )
        self.head = nn.Sequential(
            nn.BatchNorm2d(column_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(column_channels, num_classes, 1),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` for ``x`` ``(N, C, H, W)``, H and W multiples of 32."""
        check_spatial_size(x, "hypercolumn", MULTIPLE_OF)
        size = x.shape[-2:]
        quarter = (size[0] // 4, size[1] // 4)
        taps = []
        y = x
        for index, stage in enumerate(self.stages):
            y = stage(y)
            if index >= 1:
                taps.append(y)
            y = F.max_pool2d(y, 2)
        taps.append(self.fc(y))
        column = sum(  # conv3 is already at 1/4: resizing to its own size is the identity
            F.interpolate(project(tap), size=quarter, mode="bilinear", align_corners=False)
            for project, tap in zip(self.columns, taps, strict=True)
        )
        logits = self.head(column)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_hypercolumn(
    *, num_classes: int, in_channels: int = 3, width: float, fc_channels: int, column_channels: int
) -> Hypercolumn:
    """Factory used by the registry (options validated there; ranges checked here)."""
    if not width > 0:
        raise ConfigError(f"hypercolumn: width must be > 0, got {width}")
    for name, value in (("fc_channels", fc_channels), ("column_channels", column_channels)):
        if value < 1:
            raise ConfigError(f"hypercolumn: {name} must be >= 1, got {value}")
    return Hypercolumn(
        num_classes, in_channels, width=width, fc_channels=fc_channels, column_channels=column_channels
    )


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="hypercolumn",
        description="Hypercolumns on VGG-16 (BN): conv2..conv5 and fc7 projected, upsampled to 1/4 and summed",
        factory=build_hypercolumn,
        options={"width": 1.0, "fc_channels": 4096, "column_channels": 512},
        choices={},
        multiple_of=MULTIPLE_OF,
        default_input_size=(512, 512),
    ),
)
