"""Fully convolutional networks (Long, Shelhamer & Darrell, 2015): FCN-32s/16s/8s.

VGG-16 backbone (torchvision's ``vgg16().features`` layout at ``width=1``),
fc6/fc7 as convolutions, 1x1 score layers on pool5 (and pool4, pool3 for the
skip variants) and learnable transposed-convolution upsampling initialised to
bilinear interpolation. Unlike the reference Caffe models there is no
100-pixel input padding and no cropping: every upsampling produces exactly
``stride`` times its input, so the input sides must be multiples of 32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from edgeseg.errors import ConfigError
from edgeseg.models.layers import BilinearConvTranspose2d, check_spatial_size, init_weights
from edgeseg.models.registry import ModelSpec

logger = logging.getLogger(__name__)

#: Input sides must be multiples of this (spec.multiple_of; checked in eager forward).
MULTIPLE_OF = 32

__all__ = ["FCN", "SPECS", "build_fcn"]

_UPSAMPLE = ("transposed", "bilinear")


def _vgg16_features(width: float, in_channels: int) -> tuple[nn.Sequential, list[int]]:
    """VGG-16 conv layers with channels scaled by ``width``.

    Returns:
        The feature extractor and the channels after pool3, pool4, pool5.
    """
    cfg: list[int | str] = [
        v if isinstance(v, str) else max(1, int(round(v * width))) for v in cfgs["D"]
    ]
    features = make_layers(cfg, batch_norm=False)
    if in_channels != 3:
        first = features[0]
        features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
    pool_channels: list[int] = []
    last = in_channels
    for v in cfg:
        if v == "M":
            pool_channels.append(last)
        else:
            last = int(v)
    return features, pool_channels[2:]


class FCN(nn.Module):
    """FCN-32s, FCN-16s or FCN-8s on a VGG-16 backbone.

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        stride: 32, 16 or 8 (the variant).
        width: Scale of the VGG channels (1.0 = VGG-16).
        fc_channels: Channels of fc6 / fc7 (4096 in the paper).
        upsample: ``"transposed"`` (learnable, bilinear-initialised) or
            ``"bilinear"`` (``F.interpolate``, align_corners=False).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        stride: int = 32,
        width: float = 1.0,
        fc_channels: int = 4096,
        upsample: str = "transposed",
    ) -> None:
        super().__init__()
        if stride not in (32, 16, 8):
            raise ConfigError(f"FCN stride must be 32, 16 or 8, got {stride}")
        if upsample not in _UPSAMPLE:
            raise ConfigError(f"upsample must be one of {_UPSAMPLE}, got {upsample!r}")
        self.stride = stride
        self.upsample = upsample
        features, (c3, c4, c5) = _vgg16_features(width, in_channels)
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        # pool3 / pool4 / pool5 outputs
        self.stage3 = features[: pools[2] + 1]
        self.stage4 = features[pools[2] + 1 : pools[3] + 1]
        self.stage5 = features[pools[3] + 1 : pools[4] + 1]
        self.fc = nn.Sequential(
            nn.Conv2d(c5, fc_channels, 7, padding=3),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1) if stride <= 16 else None
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1) if stride == 8 else None
        init_weights(self)
        # As in the paper, the skip score layers start at zero so that a
        # finer net begins as the coarser one.
        for layer in (self.score_pool4, self.score_pool3):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        transposed = upsample == "transposed"
        self.upscore2 = (
            BilinearConvTranspose2d(num_classes, 2) if transposed and stride <= 16 else None
        )
        self.upscore_pool4 = (
            BilinearConvTranspose2d(num_classes, 2) if transposed and stride == 8 else None
        )
        self.upscore_final = BilinearConvTranspose2d(num_classes, stride) if transposed else None

    def _up(self, x: torch.Tensor, layer: nn.Module | None, like: torch.Tensor) -> torch.Tensor:
        if layer is not None:
            return layer(x)
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` for ``x`` ``(N, C, H, W)``, H and W multiples of 32."""
        check_spatial_size(x, f"fcn{self.stride}s", MULTIPLE_OF)
        pool3 = self.stage3(x)
        pool4 = self.stage4(pool3)
        pool5 = self.stage5(pool4)
        score = self.score_fr(self.fc(pool5))
        if self.score_pool4 is not None:
            score = self._up(score, self.upscore2, pool4) + self.score_pool4(pool4)
        if self.score_pool3 is not None:
            score = self._up(score, self.upscore_pool4, pool3) + self.score_pool3(pool3)
        return self._up(score, self.upscore_final, x)


def build_fcn(
    stride: int,
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float,
    fc_channels: int,
    upsample: str,
) -> FCN:
    """Factory used by the registry (options validated there; ranges checked here)."""
    if not width > 0:
        raise ConfigError(f"fcn{stride}s: width must be > 0, got {width}")
    if fc_channels < 1:
        raise ConfigError(f"fcn{stride}s: fc_channels must be >= 1, got {fc_channels}")
    return FCN(
        num_classes,
        in_channels,
        stride=stride,
        width=width,
        fc_channels=fc_channels,
        upsample=upsample,
    )


def _factory(stride: int) -> Callable[..., FCN]:
    def factory(**kwargs: object) -> FCN:
        return build_fcn(stride, **kwargs)  # type: ignore[arg-type]

    factory.__name__ = f"fcn{stride}s"
    factory.__qualname__ = f"fcn{stride}s"
    return factory


_OPTIONS = {"width": 1.0, "fc_channels": 4096, "upsample": "transposed"}
_CHOICES = {"upsample": _UPSAMPLE}
_SKIPS = {32: "no skip", 16: "pool4 skip", 8: "pool4 + pool3 skips"}

SPECS: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        name=f"fcn{s}s",
        description=f"FCN-{s}s, VGG-16 backbone, {_SKIPS[s]}, x{s} learnable upsampling",
        factory=_factory(s),
        options=_OPTIONS,
        choices=_CHOICES,
        multiple_of=MULTIPLE_OF,
        default_input_size=(512, 512),
    )
    for s in (32, 16, 8)
)
