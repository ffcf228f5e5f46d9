"""DeepLabV3+ backbones from torchvision: EfficientNet-B0, DenseNet-121 and GoogLeNet.

Each gives what :class:`edgeseg.models.deeplab.DeepLabV3Plus` wires together,
like ``MobileNetV2Backbone`` and ``ResNet50Backbone``: ``forward(x)`` returns
the stride-4 low-level features and the high-level features at output stride
16 or 8; ``low_channels`` / ``high_channels`` say their widths;
``last_stage()`` lists the modules after stride 16 (where ``deformable`` puts
DCNv2 layers) and ``deformable_kernel_sizes`` the kernel sizes replaced
there. Parameter keys are torchvision's (``efficientnet_b0().features``,
``densenet121().features``, ``googlenet()``'s modules) under ``backbone.``, so
torchvision checkpoints load into them. No weights are downloaded.

How each reaches output stride 16 or 8 (the natural stride of all three is 32):

- **EfficientNet-B0**: the stride-2 depthwise convolution of a stage past
  the target stride gets stride 1 and the stage's later depthwise convolutions
  are dilated, as DeepLab does with MobileNetV2. The stride-2 convolution itself
  keeps the previous dilation, which makes the convolutions exact on the
  strided network's grid; the squeeze-excite blocks then average over a denser
  grid, so the features are close to, not equal to, the strided network's.
- **DenseNet-121**: a transition's 2x2 average pool past the target stride gets
  stride 1 (padded at the bottom/right so the size is kept) and every 3x3
  convolution after it is dilated, as are later pools. This is the "a trous"
  algorithm: on the even grid the features equal the strided network's exactly
  (its convolutions, BN and ReLU are pointwise or dilated; nothing pools
  globally).
- **GoogLeNet**: ``maxpool3`` (3x3, stride 2, ceil mode) / ``maxpool4`` (2x2,
  stride 2, ceil mode) get stride 1 (padded at the bottom/right), the later
  inception blocks' 3x3 convolutions (torchvision's GoogLeNet has 3x3 where the
  paper has 5x5) are dilated, and so are their 3x3 branch max pools. TensorRT
  pools without dilation, so a dilated max pool is written as the maximum of
  shifted slices. The zero padding of these pools equals max pooling's own
  (-inf) because every pooled tensor comes out of a ReLU. Exact on the strided
  network's grid, as for DenseNet.

``width`` (a MobileNetV2 option) does not apply to these backbones.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import densenet121, efficientnet_b0, googlenet
from torchvision.models.googlenet import BasicConv2d, Inception

from edgeseg.models.layers import replace_first_conv

__all__ = ["AtrousPool2d", "DenseNet121Backbone", "EfficientNetB0Backbone", "GoogLeNetBackbone"]


class AtrousPool2d(nn.Module):
    """A stride-1, optionally dilated, square max or average pool that TensorRT imports.

    The input is zero-padded by ``pad_before`` (top/left) and ``pad_after``
    (bottom/right); with ``dilation == 1`` a plain stride-1 pool follows, with a
    larger dilation the pool is the maximum (or mean) of the ``kernel**2``
    shifted slices, computed separably (rows, then columns), because TensorRT's
    pooling layer has no dilation.

    Args:
        mode: ``"max"`` or ``"avg"``.
        kernel: Window side.
        dilation: Spacing of the window's taps.
        pad_before: Zeros before each spatial axis.
        pad_after: Zeros after each spatial axis.
    """

    def __init__(
        self, mode: str, kernel: int, dilation: int, pad_before: int, pad_after: int
    ) -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"AtrousPool2d: mode must be 'max' or 'avg', got {mode!r}")
        if pad_before + pad_after != (kernel - 1) * dilation:
            raise ValueError(
                "AtrousPool2d keeps the size: pad_before + pad_after = (kernel - 1) * dilation"
            )
        self.mode, self.kernel, self.dilation = mode, kernel, dilation
        self.pad_before, self.pad_after = pad_before, pad_after

    def _reduce(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Max or mean of the ``kernel`` taps along ``dim`` (the padded axis shrinks back)."""
        length = x.shape[dim] - (self.kernel - 1) * self.dilation
        taps = [x.narrow(dim, i * self.dilation, length) for i in range(self.kernel)]
        out = taps[0]
        for tap in taps[1:]:
            out = torch.maximum(out, tap) if self.mode == "max" else out + tap
        return out if self.mode == "max" else out / self.kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled tensor, at ``x``'s size."""
        x = F.pad(x, (self.pad_before, self.pad_after, self.pad_before, self.pad_after))
        if self.dilation == 1:
            pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
            return pool(x, self.kernel, stride=1)
        return self._reduce(self._reduce(x, 2), 3)

    def extra_repr(self) -> str:
        return (
            f"{self.mode}, kernel={self.kernel}, dilation={self.dilation}, "
            f"pad=({self.pad_before}, {self.pad_after})"
        )


def _dilate_conv(conv: nn.Conv2d, dilation: int) -> None:
    """Dilate a stride-1 odd-kernel convolution, keeping its output size."""
    k = conv.kernel_size[0]
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation * (k - 1) // 2, dilation * (k - 1) // 2)


class IndexedFeatures(nn.Module):
    """A backbone whose ``features`` is a sequence of blocks; the low-level features are
    the output of block ``low_index`` (stride 4), the high-level ones the last block's."""

    features: nn.Sequential
    low_index: int

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stride-4 low-level features and the high-level features."""
        low = x
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.low_index:
                low = x
        return low, x


class EfficientNetB0Backbone(IndexedFeatures):
    """torchvision EfficientNet-B0 features (without the final 1x1 to 1280) at output stride 16 or 8.

    Stage past the target stride: the stride-2 depthwise convolution gets
    stride 1 (keeping the previous dilation), the later depthwise convolutions
    of the network are dilated (padding ``dilation * (k - 1) / 2``).

    Args:
        in_channels: Input channels.
        output_stride: 16 or 8.
    """

    low_index = 2  # features[2]: the 24-channel stage at stride 4
    low_channels = 24
    high_channels = 320
    deformable_kernel_sizes = (3, 5)  # stage 6's depthwise convs are 5x5, stage 7's 3x3

    def __init__(self, in_channels: int = 3, output_stride: int = 16) -> None:
        super().__init__()
        features = efficientnet_b0(weights=None).features
        self.features = nn.Sequential(*list(features.children())[:-1])
        if in_channels != 3:
            stem = cast(nn.Sequential, self.features[0])
            stem[0] = replace_first_conv(cast(nn.Conv2d, stem[0]), in_channels)
        current_stride, dilation = 2, 1  # the stem
        for stage in list(self.features.children())[1:]:
            for block in stage.children():
                depthwise = next(
                    m
                    for m in block.modules()
                    if isinstance(m, nn.Conv2d)
                    and m.groups == m.in_channels
                    and m.kernel_size[0] > 1
                )
                stride, block_dilation = depthwise.stride[0], dilation
                if current_stride * stride > output_stride:
                    dilation *= stride
                    stride = 1
                else:
                    current_stride *= stride
                depthwise.stride = (stride, stride)
                _dilate_conv(depthwise, block_dilation)

    def last_stage(self) -> list[nn.Module]:
        """The stages after stride 16 (``features[6:8]``)."""
        return list(self.features.children())[6:8]


class DenseNet121Backbone(nn.Module):
    """torchvision DenseNet-121 features (with the final BN and ReLU) at output stride 16 or 8.

    The low-level features are ``denseblock1``'s (256 channels, stride 4).
    Output stride 16: ``transition3``'s pool gets stride 1 and ``denseblock4``
    is dilated by 2; output stride 8: also ``transition2``'s pool, with
    ``denseblock3`` dilated by 2, ``transition3``'s pool by 2 and ``denseblock4``
    by 4.

    Args:
        in_channels: Input channels.
        output_stride: 16 or 8.
    """

    low_channels = 256
    high_channels = 1024
    deformable_kernel_sizes = (3,)

    def __init__(self, in_channels: int = 3, output_stride: int = 16) -> None:
        super().__init__()
        self.features = densenet121(weights=None).features
        if in_channels != 3:
            self.features.conv0 = replace_first_conv(self.features.conv0, in_channels)
        stride, dilation = 8, 1  # after transition1
        for index in (2, 3):  # transition2 halves 8 -> 16, transition3 16 -> 32
            if stride * 2 <= output_stride:
                stride *= 2
                continue
            # stride 1, the pool's taps kept on the strided grid; everything after is dilated
            transition = cast(nn.Module, getattr(self.features, f"transition{index}"))
            transition.pool = AtrousPool2d("avg", 2, dilation, 0, dilation)
            dilation *= 2
            for m in cast(nn.Module, getattr(self.features, f"denseblock{index + 1}")).modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    _dilate_conv(m, dilation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``denseblock1``'s features (stride 4) and the final ones (after ``norm5`` and ReLU)."""
        low = x
        for name, module in self.features.named_children():
            x = module(x)
            if name == "denseblock1":
                low = x
        return low, F.relu(x)

    def last_stage(self) -> list[nn.Module]:
        """``denseblock4``."""
        return [self.features.denseblock4]


class GoogLeNetBackbone(nn.Module):
    """torchvision GoogLeNet (no auxiliary heads, no classifier) at output stride 16 or 8.

    The low-level features are ``conv3``'s (192 channels, stride 4).
    Output stride 16: ``maxpool4`` gets stride 1 and ``inception5a``/``5b`` are
    dilated by 2; output stride 8: ``maxpool3`` too, with ``inception4a``..``4e``
    dilated by 2, ``maxpool4`` by 2 and ``inception5a``/``5b`` by 4.

    Args:
        in_channels: Input channels.
        output_stride: 16 or 8.
    """

    low_channels = 192
    high_channels = 1024
    deformable_kernel_sizes = (3,)
    _STAGES = (("maxpool3", 3, ("4a", "4b", "4c", "4d", "4e")), ("maxpool4", 2, ("5a", "5b")))

    def __init__(self, in_channels: int = 3, output_stride: int = 16) -> None:
        super().__init__()
        net = googlenet(weights=None, aux_logits=False, init_weights=True)
        names = [n for n, _ in net.named_children() if n not in ("avgpool", "dropout", "fc")]
        for name in names:
            setattr(self, name, getattr(net, name))
        self._order = tuple(names)
        if in_channels != 3:
            stem = cast(BasicConv2d, self.conv1)
            stem.conv = replace_first_conv(stem.conv, in_channels)
        stride, dilation = 8, 1  # after maxpool2
        for pool_name, kernel, blocks in self._STAGES:
            if stride * 2 <= output_stride:
                stride *= 2
                continue
            # stride 1, the pool's taps kept on the strided grid; everything after is dilated
            setattr(
                self, pool_name, AtrousPool2d("max", kernel, dilation, 0, (kernel - 1) * dilation)
            )
            dilation *= 2
            for block in blocks:
                self._dilate_inception(
                    cast(Inception, getattr(self, f"inception{block}")), dilation
                )

    @staticmethod
    def _dilate_inception(block: Inception, dilation: int) -> None:
        for branch in (block.branch2, block.branch3):
            _dilate_conv(cast(BasicConv2d, branch[1]).conv, dilation)
        block.branch4[0] = AtrousPool2d("max", 3, dilation, dilation, dilation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv3``'s features (stride 4) and ``inception5b``'s."""
        low = x
        for name in self._order:
            x = getattr(self, name)(x)
            if name == "conv3":
                low = x
        return low, x

    def last_stage(self) -> list[nn.Module]:
        """``inception5a`` and ``inception5b``."""
        return [cast(nn.Module, self.inception5a), cast(nn.Module, self.inception5b)]
