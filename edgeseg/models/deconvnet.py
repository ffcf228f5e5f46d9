"""DeconvNet (Noh, Hong & Han, 2015): a VGG-16 encoder and its mirror, unpooling with the encoder's switches.

The encoder is VGG-16's thirteen convolutions with batch normalisation and its
five 2x2 max-pools; fc6 (7x7) and fc7 (1x1) as convolutions and a 7x7 "deconv-
fc6" follow; the decoder mirrors the encoder: each stage unpools with the
switches (where each 2x2 window's maximum was) recorded by the pool it
mirrors, then runs transposed 3x3 convolutions with batch normalisation, and a
1x1 score layer ends it. Departures from the paper: fc6 and deconv-fc6 are
padded ("same"), so any input whose sides are multiples of 32 works instead of
224x224 only, and ``width``/``fc_channels`` scale the network.

Unpooling (:class:`SwitchUnpool`) reproduces ``nn.MaxUnpool2d`` with
``nn.MaxPool2d(2, 2, return_indices=True)``'s indices exactly, ties included
(the first maximum of a window in row-major order, as PyTorch's kernel picks),
but is built from slices, comparisons and a depth-to-space, because TensorRT's
ONNX parser imports neither MaxUnpool nor MaxPool's ``Indices`` output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeseg.errors import ConfigError
from edgeseg.models.layers import check_spatial_size, init_weights
from edgeseg.models.registry import ModelSpec

MULTIPLE_OF = 32
_STAGES = (2, 2, 3, 3, 3)  # convolutions per VGG-16 stage
_CHANNELS = (64, 128, 256, 512, 512)

__all__ = ["SPECS", "DeconvNet", "SwitchPool", "SwitchUnpool", "build_deconvnet", "vgg16_bn_stages"]


def _quarters(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four positions of every 2x2 window: top-left, top-right, bottom-left, bottom-right."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


class SwitchPool(nn.Module):
    """2x2 max-pool, stride 2, that also returns its switches: which position of each window
    held the maximum (the first in row-major order among ties), as four float masks."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, c, d = _quarters(x)
        pooled = torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
        at_a = a == pooled
        at_b = (b == pooled) & ~at_a
        at_c = (c == pooled) & ~(at_a | at_b)
        at_d = ~(at_a | at_b | at_c)
        switches = torch.stack([at_a, at_b, at_c, at_d], dim=2).to(x.dtype)  # (N, C, 4, h, w)
        return pooled, switches


class SwitchUnpool(nn.Module):
    """Places each value at its window's switch position and zeros elsewhere (2x the size)."""

    def forward(self, y: torch.Tensor, switches: torch.Tensor) -> torch.Tensor:
        n, c, h, w = y.shape
        spread = switches * y.unsqueeze(2)  # (N, C, 4, h, w)
        return F.pixel_shuffle(spread.reshape(n, c * 4, h, w), 2)  # channel k*4 + 2i + j -> (i, j)


def _conv_bn(cin: int, cout: int, transposed: bool = False) -> nn.Sequential:
    conv: nn.Module = (
        nn.ConvTranspose2d(cin, cout, 3, padding=1) if transposed else nn.Conv2d(cin, cout, 3, padding=1)
    )
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def vgg16_bn_stages(in_channels: int, width: float) -> tuple[nn.ModuleList, list[int]]:
    """VGG-16's five convolution stages with batch normalisation (pools left out), channels
    scaled by ``width``; and each stage's channels."""
    channels = [max(1, int(round(c * width))) for c in _CHANNELS]
    stages = nn.ModuleList()
    last = in_channels
    for count, cout in zip(_STAGES, channels, strict=True):
        stages.append(nn.Sequential(*[_conv_bn(last if i == 0 else cout, cout) for i in range(count)]))
        last = cout
    return stages, channels


class DeconvNet(nn.Module):
    """DeconvNet: VGG-16 encoder, fc6/fc7, deconv-fc6 and the mirrored unpooling decoder.

    Args:
        num_classes: output classes.
        in_channels: input channels.
        width: scale of the VGG channels (1.0 = VGG-16).
        fc_channels: channels of fc6 / fc7 (4096 in the paper).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0, fc_channels: int = 4096) -> None:
        super().__init__()
        self.encoder, channels = vgg16_bn_stages(in_channels, width)
        last = channels[-1]
        self.pool = SwitchPool()
        self.unpool = SwitchUnpool()
        self.fc = nn.Sequential(
            nn.Conv2d(last, fc_channels, 7, padding=3),
            nn.BatchNorm2d(fc_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.BatchNorm2d(fc_channels),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(fc_channels, last, 7, padding=3),  # deconv-fc6
            nn.BatchNorm2d(last),
            nn.ReLU(inplace=True),
        )
        self.decoder = nn.ModuleList()
        for stage in reversed(range(5)):
            cin, count = channels[stage], _STAGES[stage]
            cout = channels[stage - 1] if stage > 0 else channels[0]
            layers = [_conv_bn(cin, cin, transposed=True) for _ in range(count - 1)]
            layers.append(_conv_bn(cin, cout, transposed=True))
            self.decoder.append(nn.Sequential(*layers))
        self.score = nn.Conv2d(channels[0], num_classes, 1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` for ``x`` ``(N, C, H, W)``, H and W multiples of 32."""
        check_spatial_size(x, "deconvnet", MULTIPLE_OF)
        switches = []
        for stage in self.encoder:
            x, switch = self.pool(stage(x))
            switches.append(switch)
        x = self.fc(x)
        for stage, switch in zip(self.decoder, reversed(switches), strict=True):
            x = stage(self.unpool(x, switch))
        return self.score(x)


def build_deconvnet(*, num_classes: int, in_channels: int = 3, width: float, fc_channels: int) -> DeconvNet:
    """Factory used by the registry (options validated there; ranges checked here)."""
    if not width > 0:
        raise ConfigError(f"deconvnet: width must be > 0, got {width}")
    if fc_channels < 1:
        raise ConfigError(f"deconvnet: fc_channels must be >= 1, got {fc_channels}")
    return DeconvNet(num_classes, in_channels, width=width, fc_channels=fc_channels)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="deconvnet",
        description="DeconvNet, VGG-16 encoder (BN), fc6/fc7, mirrored decoder unpooling with the pools' switches",
        factory=build_deconvnet,
        options={"width": 1.0, "fc_channels": 4096},
        choices={},
        multiple_of=MULTIPLE_OF,
        default_input_size=(512, 512),
    ),
)
