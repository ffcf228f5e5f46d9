"""DeepLabV3 (torchvision) and DeepLabV3+ (Chen et al., 2018, written here).

``deeplabv3`` wraps torchvision's ``deeplabv3_resnet50`` /
``deeplabv3_mobilenet_v3_large`` (no pretrained weights, no auxiliary head)
and returns a tensor instead of a dict. Its ``backbone.*`` / ``classifier.*``
keys are torchvision's, so torchvision checkpoints load into it.

``deeplabv3p`` is DeepLabV3+ with a MobileNetV2, ResNet-50, EfficientNet-B0,
DenseNet-121 or GoogLeNet backbone (the last three in
:mod:`edgeseg.models.backbones`) at output stride 16 or 8, an ASPP with
depthwise-separable atrous branches and the DeepLabV3+ decoder (stride-4
low-level features). Backbone keys follow torchvision's
``mobilenet_v2().features`` / ``resnet50()`` / ... under ``backbone.``.
"""

from __future__ import annotations

import logging
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2, resnet50
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50

from edgeseg.errors import ConfigError
from edgeseg.models.backbones import (
    DenseNet121Backbone,
    EfficientNetB0Backbone,
    GoogLeNetBackbone,
    IndexedFeatures,
)
from edgeseg.models.layers import (
    BilinearConvTranspose2d,
    ConvBNReLU,
    SeparableConv,
    SqueezeExcite,
    check_spatial_size,
    init_weights,
    make_deformable,
    replace_first_conv,
)
from edgeseg.models.registry import ModelSpec

logger = logging.getLogger(__name__)

#: Input sides must be multiples of this (spec.multiple_of; checked in eager forward).
MULTIPLE_OF = 16

__all__ = [
    "ASPP",
    "DeepLabV3",
    "DeepLabV3Plus",
    "MobileNetV2Backbone",
    "ResNet50Backbone",
    "SPECS",
    "build_deeplabv3",
    "build_deeplabv3p",
]


# --------------------------------------------------------------------------- deeplabv3


class DeepLabV3(nn.Module):
    """torchvision's DeepLabV3 returning ``out`` as a tensor.

    Args:
        num_classes: Output classes.
        in_channels: Input channels (the first convolution is replaced when not 3).
        backbone: ``"resnet50"`` (output stride 8) or ``"mobilenet_v3_large"``
            (output stride 16).
        deformable: Modulated deformable convolutions in the last backbone
            stage (ResNet-50 ``layer4`` 3x3 convs; MobileNetV3 the depthwise
            convs of the last stage, which are 5x5).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "resnet50",
        deformable: bool = False,
    ) -> None:
        super().__init__()
        common = {
            "weights": None,
            "weights_backbone": None,
            "num_classes": num_classes,
            "aux_loss": False,
        }
        if backbone == "resnet50":
            net = deeplabv3_resnet50(**common)
        elif backbone == "mobilenet_v3_large":
            net = deeplabv3_mobilenet_v3_large(**common)
        else:
            raise ConfigError(f"deeplabv3: unknown backbone {backbone!r}")
        self.backbone = net.backbone
        self.classifier = net.classifier
        if backbone == "resnet50":
            if in_channels != 3:
                self.backbone.conv1 = replace_first_conv(self.backbone.conv1, in_channels)
            if deformable:
                make_deformable(self.backbone.layer4)
        else:
            stem = self.backbone["0"]
            if in_channels != 3:
                stem[0] = replace_first_conv(stem[0], in_channels)
            if deformable:
                blocks = list(self.backbone.children())
                last_stage = max(i for i, b in enumerate(blocks) if getattr(b, "_is_cn", False))
                for block in blocks[last_stage:]:
                    make_deformable(block, kernel_sizes=(3, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)``."""
        check_spatial_size(x, "deeplabv3", MULTIPLE_OF)
        features = self.backbone(x)["out"]
        logits = self.classifier(features)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_deeplabv3(
    *, num_classes: int, in_channels: int = 3, backbone: str, deformable: bool
) -> DeepLabV3:
    """Factory used by the registry."""
    return DeepLabV3(num_classes, in_channels, backbone, deformable)


# --------------------------------------------------------------------------- deeplabv3+


class MobileNetV2Backbone(IndexedFeatures):
    """MobileNetV2 features (without the final 1x1 to 1280) at output stride 16 or 8.

    Blocks past the target stride get stride 1 and their depthwise 3x3 convs
    are dilated (padding = dilation); the first block of a dilated stage keeps
    the previous dilation, as in the DeepLab reference code.

    Args:
        in_channels: Input channels.
        width: MobileNetV2 ``width_mult``.
        output_stride: 16 or 8.

    Attributes:
        low_channels: Channels of the stride-4 features (output of ``features[3]``).
        high_channels: Channels of the last features (``320 * width``, rounded).
    """

    low_index = 3
    deformable_kernel_sizes = (3,)

    def __init__(self, in_channels: int = 3, width: float = 1.0, output_stride: int = 16) -> None:
        super().__init__()
        features = mobilenet_v2(weights=None, width_mult=width).features
        self.features = nn.Sequential(*list(features.children())[:-1])
        if in_channels != 3:
            stem = cast(nn.Sequential, self.features[0])
            stem[0] = replace_first_conv(cast(nn.Conv2d, stem[0]), in_channels)
        self._dilate(output_stride)
        self.low_channels = int(cast(InvertedResidual, self.features[self.low_index]).out_channels)
        self.high_channels = int(cast(InvertedResidual, self.features[-1]).out_channels)

    def _dilate(self, output_stride: int) -> None:
        current_stride = 2  # the stem
        dilation = 1
        for block in list(self.features.children())[1:]:
            if not isinstance(block, InvertedResidual):
                continue
            depthwise = next(
                m
                for m in block.modules()
                if isinstance(m, nn.Conv2d)
                and m.groups == m.in_channels
                and m.kernel_size == (3, 3)
            )
            stride = depthwise.stride[0]
            block_dilation = dilation
            if current_stride * stride > output_stride:
                dilation *= stride
                stride = 1
            else:
                current_stride *= stride
            depthwise.stride = (stride, stride)
            depthwise.dilation = (block_dilation, block_dilation)
            depthwise.padding = (block_dilation, block_dilation)
            block.stride = stride

    def last_stage(self) -> list[nn.Module]:
        """The blocks after stride 16 (``features[14:18]``)."""
        return list(self.features.children())[14:18]


class ResNet50Backbone(nn.Module):
    """torchvision ResNet-50 (no classifier) with dilated last stage(s).

    Args:
        in_channels: Input channels.
        output_stride: 16 (``layer4`` dilated) or 8 (``layer3`` and ``layer4``).
    """

    low_channels = 256
    high_channels = 2048
    deformable_kernel_sizes = (3,)

    def __init__(self, in_channels: int = 3, output_stride: int = 16) -> None:
        super().__init__()
        dilate = [False, False, True] if output_stride == 16 else [False, True, True]
        net = resnet50(weights=None, replace_stride_with_dilation=dilate)
        self.conv1 = net.conv1 if in_channels == 3 else replace_first_conv(net.conv1, in_channels)
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer1`` (stride 4) and ``layer4`` features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high

    def last_stage(self) -> list[nn.Module]:
        """``layer4``."""
        return [self.layer4]


class ASPPPooling(nn.Module):
    """Image-level features: global average pool, 1x1 conv + BN + ReLU, upsample back.

    The upsampling uses the runtime feature size, so the graph exports with
    dynamic input sizes.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features broadcast to ``x``'s size."""
        y = self.conv(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with depthwise-separable atrous branches.

    Args:
        in_channels: Channels of the backbone features.
        out_channels: Channels of every branch and of the output.
        rates: Atrous rates of the three 3x3 branches.
        se: Squeeze-excite after the projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rates: tuple[int, int, int],
        se: bool = False,
    ) -> None:
        super().__init__()
        atrous = [SeparableConv(in_channels, out_channels, rate) for rate in rates]
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, out_channels, 1), *atrous])
        self.pooling = ASPPPooling(in_channels, out_channels)
        project: list[nn.Module] = [
            nn.Conv2d(5 * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if se:
            project.append(SqueezeExcite(out_channels))
        project.append(nn.Dropout(0.1))
        self.project = nn.Sequential(*project)

    def make_atrous_deformable(self) -> None:
        """Turn the depthwise 3x3 convs of the atrous branches into DCNv2 layers."""
        for branch in list(self.branches)[1:]:
            make_deformable(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ASPP features at the size of ``x``."""
        outs = [branch(x) for branch in self.branches]
        outs.append(self.pooling(x))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (encoder: backbone + ASPP; decoder with stride-4 skip).

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
        backbone: ``"mobilenet_v2"``, ``"resnet50"``, ``"efficientnet_b0"``,
            ``"densenet121"`` or ``"googlenet"`` (torchvision's, dilated to the
            output stride; see :mod:`edgeseg.models.backbones`).
        output_stride: 16 or 8.
        width: MobileNetV2 width multiplier (must be 1.0 for the other backbones).
        aspp_channels: Channels of ASPP and decoder.
        upsample: ``"bilinear"`` or ``"transposed"`` (learnable, bilinear-
            initialised transposed convs: depthwise on the ASPP features,
            dense on the class logits).
        se: Squeeze-excite after the ASPP projection and after the decoder convs.
        deformable: ``False``; ``True`` / ``"backbone"`` (last backbone stage);
            ``"aspp"`` (atrous branches).
    """

    low_level_channels = 48

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str = "mobilenet_v2",
        output_stride: int = 16,
        width: float = 1.0,
        aspp_channels: int = 256,
        upsample: str = "bilinear",
        se: bool = False,
        deformable: bool | str = False,
    ) -> None:
        super().__init__()
        if output_stride not in (16, 8):
            raise ConfigError(f"deeplabv3p: output_stride must be 16 or 8, got {output_stride}")
        if upsample not in ("bilinear", "transposed"):
            raise ConfigError(f"deeplabv3p: unknown upsample {upsample!r}")
        if not (isinstance(deformable, bool) or deformable in ("backbone", "aspp")):
            raise ConfigError(f"deeplabv3p: unknown deformable {deformable!r}")
        self.backbone: (
            MobileNetV2Backbone
            | ResNet50Backbone
            | EfficientNetB0Backbone
            | DenseNet121Backbone
            | GoogLeNetBackbone
        )
        fixed_width: dict[
            str, type[ResNet50Backbone | EfficientNetB0Backbone | DenseNet121Backbone | GoogLeNetBackbone]
        ] = {
            "resnet50": ResNet50Backbone,
            "efficientnet_b0": EfficientNetB0Backbone,
            "densenet121": DenseNet121Backbone,
            "googlenet": GoogLeNetBackbone,
        }
        if backbone == "mobilenet_v2":
            self.backbone = MobileNetV2Backbone(in_channels, width, output_stride)
        elif backbone in fixed_width:
            if width != 1.0:
                raise ConfigError(
                    f"deeplabv3p: width applies to mobilenet_v2 only; got width={width} with {backbone}"
                )
            self.backbone = fixed_width[backbone](in_channels, output_stride)
        else:
            raise ConfigError(f"deeplabv3p: unknown backbone {backbone!r}")
        c = aspp_channels
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.high_channels, c, rates, se=se)
        self.low_proj = ConvBNReLU(self.backbone.low_channels, self.low_level_channels, 1)
        decoder: list[nn.Module] = [
            SeparableConv(c + self.low_level_channels, c),
            SeparableConv(c, c),
        ]
        if se:
            decoder.append(SqueezeExcite(c))
        self.decoder = nn.Sequential(*decoder)
        self.classifier = nn.Conv2d(c, num_classes, 1)
        init_weights(self)
        transposed = upsample == "transposed"
        self.up_aspp = (
            BilinearConvTranspose2d(c, output_stride // 4, groups=c) if transposed else None
        )
        self.up_out = BilinearConvTranspose2d(num_classes, 4) if transposed else None
        if deformable is True or deformable == "backbone":
            for stage in self.backbone.last_stage():
                make_deformable(stage, kernel_sizes=self.backbone.deformable_kernel_sizes)
        elif deformable == "aspp":
            self.aspp.make_atrous_deformable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` for H and W multiples of 16."""
        check_spatial_size(x, "deeplabv3p", MULTIPLE_OF)
        low, high = self.backbone(x)
        y = self.aspp(high)
        low = self.low_proj(low)
        if self.up_aspp is not None:
            y = self.up_aspp(y)
        else:
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.decoder(torch.cat((y, low), dim=1)))
        if self.up_out is not None:
            return self.up_out(y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_deeplabv3p(
    *,
    num_classes: int,
    in_channels: int = 3,
    backbone: str,
    output_stride: int,
    width: float,
    aspp_channels: int,
    upsample: str,
    se: bool,
    deformable: bool | str,
) -> DeepLabV3Plus:
    """Factory used by the registry (options validated there; ranges checked here)."""
    if not width > 0:
        raise ConfigError(f"deeplabv3p: width must be > 0, got {width}")
    if aspp_channels < 1:
        raise ConfigError(f"deeplabv3p: aspp_channels must be >= 1, got {aspp_channels}")
    return DeepLabV3Plus(
        num_classes,
        in_channels,
        backbone=backbone,
        output_stride=output_stride,
        width=width,
        aspp_channels=aspp_channels,
        upsample=upsample,
        se=se,
        deformable=deformable,
    )


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="deeplabv3",
        description="DeepLabV3 (torchvision), ResNet-50 (OS 8) or MobileNetV3-Large (OS 16) backbone",
        factory=build_deeplabv3,
        options={"backbone": "resnet50", "deformable": False},
        choices={"backbone": ("resnet50", "mobilenet_v3_large")},
        multiple_of=MULTIPLE_OF,
        default_input_size=(512, 512),
    ),
    ModelSpec(
        name="deeplabv3p",
        description="DeepLabV3+, MobileNetV2/ResNet-50/EfficientNet-B0/DenseNet-121/GoogLeNet backbone, separable ASPP, stride-4 decoder",
        factory=build_deeplabv3p,
        options={
            "backbone": "mobilenet_v2",
            "output_stride": 16,
            "width": 1.0,
            "aspp_channels": 256,
            "upsample": "bilinear",
            "se": False,
            "deformable": False,
        },
        choices={
            "backbone": ("mobilenet_v2", "resnet50", "efficientnet_b0", "densenet121", "googlenet"),
            "output_stride": (16, 8),
            "upsample": ("bilinear", "transposed"),
            "deformable": (False, True, "backbone", "aspp"),
        },
        multiple_of=MULTIPLE_OF,
        default_input_size=(512, 512),
    ),
)
