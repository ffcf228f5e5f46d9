"""Building blocks shared by the models of the zoo.

The blocks are small and standard: conv + BN + ReLU, depthwise-separable
convolutions, squeeze-and-excitation, learnable bilinear-initialised upsampling
and a modulated deformable convolution (DCNv2) that exports to ONNX.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterator

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import nn

from edgeseg.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "BilinearConvTranspose2d",
    "ConvBNReLU",
    "ModulatedDeformConv2d",
    "SeparableConv",
    "SqueezeExcite",
    "bilinear_kernel",
    "check_spatial_size",
    "decomposed_deform_conv",
    "init_weights",
    "input_size_message",
    "make_deformable",
    "modulated_deform_conv2d_reference",
    "replace_first_conv",
]


def input_size_message(name: str, multiple: int, height: int, width: int) -> str:
    """The error text for an input size that is not a multiple of ``multiple``."""
    padded_h = -(-height // multiple) * multiple
    padded_w = -(-width // multiple) * multiple
    return (
        f"{name} needs input sides that are multiples of {multiple}; "
        f"{height}x{width} is not (use {padded_h}x{padded_w})"
    )


def check_spatial_size(x: torch.Tensor, name: str, multiple: int) -> None:
    """Raise ConfigError in eager mode when ``x``'s H or W is not a multiple of ``multiple``.

    Skipped while tracing or exporting with symbolic sizes (the sides are then
    not Python ints), so it adds no guard to an exported graph.

    Raises:
        ConfigError: ``x`` is not 4-D or its sides are not multiples.
    """
    if x.dim() != 4:
        raise ConfigError(f"{name} expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
    height, width = x.shape[-2], x.shape[-1]
    if not (isinstance(height, int) and isinstance(width, int)):
        return
    if height % multiple or width % multiple:
        raise ConfigError(input_size_message(name, multiple, height, width))


def replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A Kaiming-initialised copy of ``conv``'s configuration with ``in_channels`` inputs."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, tuple):
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


class ConvBNReLU(nn.Sequential):
    """Convolution without bias, BatchNorm and ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Stride of the convolution.
        dilation: Dilation; the padding is ``dilation * (kernel_size // 2)``
            so odd kernels keep the spatial size at stride 1.
        groups: Convolution groups.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 convolution + BN + ReLU, then pointwise 1x1 + BN + ReLU.

    This is the ``split_separable_conv2d`` of the DeepLab reference code
    (activation after the depthwise and after the pointwise convolution).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dilation: Dilation (atrous rate) of the depthwise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
            ConvBNReLU(in_channels, out_channels, 1),
        )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation block (Hu et al.): channel gates from global context.

    Args:
        channels: Channels of the input (and output).
        reduction: Reduction ratio of the bottleneck; the hidden width is
            ``max(1, channels // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ConfigError(f"SqueezeExcite reduction must be >= 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale every channel of ``x`` by its gate in (0, 1)."""
        scale = self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
        return x * scale


def bilinear_kernel(channels: int, kernel_size: int, groups: int = 1) -> torch.Tensor:
    """Weight of a ConvTranspose2d that performs bilinear upsampling.

    This is ``get_upsampling_weight`` of the FCN reference code. With
    ``stride = s``, ``kernel_size = 2 * s`` and ``padding = s // 2`` the
    transposed convolution reproduces ``F.interpolate(mode="bilinear",
    align_corners=False)`` away from the border (within the outer ``s // 2``
    pixels the missing neighbours count as zero instead of being clamped).

    Args:
        channels: Input and output channels of the transposed convolution.
        kernel_size: Size of the square kernel.
        groups: 1 for a dense transposed convolution (identity across
            channels), ``channels`` for a depthwise one.

    Returns:
        A tensor of shape ``(channels, channels // groups, k, k)``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    coords = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1.0 - (coords - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(channels, channels // groups, kernel_size, kernel_size)
    if groups == 1:
        idx = torch.arange(channels)
        weight[idx, idx] = filt
    else:
        weight[:, :] = filt
    return weight


class BilinearConvTranspose2d(nn.ConvTranspose2d):
    """Learnable upsampling by an integer factor, initialised to bilinear.

    ``stride = factor``, ``kernel = 2 * factor``, ``padding = factor // 2``, so
    the output is exactly ``factor`` times the input (for even factors).

    Args:
        channels: Channels in and out.
        factor: Upsampling factor (even).
        groups: 1 (dense, as in FCN) or ``channels`` (depthwise).
        bias: Whether the layer has a bias (initialised to zero).
    """

    def __init__(self, channels: int, factor: int, groups: int = 1, bias: bool = False) -> None:
        if factor < 2 or factor % 2:
            raise ConfigError(f"bilinear upsampling factor must be even and >= 2, got {factor}")
        super().__init__(
            channels,
            channels,
            kernel_size=2 * factor,
            stride=factor,
            padding=factor // 2,
            groups=groups,
            bias=bias,
        )
        self.factor = factor
        self.reset_bilinear()

    def reset_bilinear(self) -> None:
        """(Re)initialise the weight to bilinear interpolation, bias to zero."""
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(self.in_channels, self.kernel_size[0], self.groups))
            if self.bias is not None:
                self.bias.zero_()


_DECOMPOSE_DEFORM = False


@contextlib.contextmanager
def decomposed_deform_conv() -> Iterator[None]:
    """Run :class:`ModulatedDeformConv2d` layers through plain tensor ops.

    Inside the block the layers compute with
    :func:`modulated_deform_conv2d_reference` (``grid_sample`` + grouped 1x1
    conv), so an ONNX export holds ``GridSample`` / ``Conv`` instead of
    ``DeformConv``. Not thread-safe (a module-level switch).
    """
    global _DECOMPOSE_DEFORM
    previous = _DECOMPOSE_DEFORM
    _DECOMPOSE_DEFORM = True
    try:
        yield
    finally:
        _DECOMPOSE_DEFORM = previous


def modulated_deform_conv2d_reference(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Modulated deformable convolution from plain tensor ops.

    Same semantics and tensor layouts as ``torchvision.ops.deform_conv2d``
    (offset ``(N, 2*G*kh*kw, Ho, Wo)`` with interleaved ``(dy, dx)`` pairs,
    mask ``(N, G*kh*kw, Ho, Wo)``, bilinear sampling with zeros outside), built
    from ``grid_sample`` and a grouped 1x1 convolution, which export to
    standard ONNX ops (GridSample, Conv) with dynamic input sizes. Used inside
    :func:`decomposed_deform_conv` and as a test oracle.

    Args:
        x: Input ``(N, C, H, W)``.
        offset: Sampling offsets.
        mask: Modulation scalars (already passed through a sigmoid).
        weight: Convolution weight ``(Cout, C // groups, kh, kw)``.
        bias: Optional bias ``(Cout,)``.
        stride: Stride (h, w).
        padding: Padding (h, w).
        dilation: Dilation (h, w).
        groups: Convolution groups.

    Returns:
        Output ``(N, Cout, Ho, Wo)``.
    """
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2], offset.shape[-1]
    offset_groups = offset.shape[1] // (2 * k)
    device, dtype = x.device, x.dtype

    ky, kx = torch.meshgrid(
        torch.arange(kh, device=device, dtype=dtype) * dilation[0],
        torch.arange(kw, device=device, dtype=dtype) * dilation[1],
        indexing="ij",
    )
    base_y = torch.arange(ho, device=device, dtype=dtype) * stride[0] - padding[0]
    base_x = torch.arange(wo, device=device, dtype=dtype) * stride[1] - padding[1]
    # (1, 1, K, Ho, Wo)
    pos_y = ky.reshape(1, 1, k, 1, 1) + base_y.reshape(1, 1, 1, ho, 1)
    pos_x = kx.reshape(1, 1, k, 1, 1) + base_x.reshape(1, 1, 1, 1, wo)
    off = offset.reshape(n, offset_groups, k, 2, ho, wo)
    pos_y = pos_y + off[:, :, :, 0]
    pos_x = pos_x + off[:, :, :, 1]
    # pixel coordinates -> [-1, 1] with align_corners=False (no division by size - 1)
    grid_x = (2.0 * pos_x + 1.0) / w - 1.0
    grid_y = (2.0 * pos_y + 1.0) / h - 1.0
    grid = torch.stack((grid_x, grid_y), dim=-1).reshape(n * offset_groups, k * ho, wo, 2)
    sampled = F.grid_sample(
        x.reshape(n * offset_groups, c // offset_groups, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    sampled = sampled.reshape(n, offset_groups, c // offset_groups, k, ho, wo)
    sampled = sampled * mask.reshape(n, offset_groups, 1, k, ho, wo)
    cols = sampled.reshape(n, c * k, ho, wo)
    return F.conv2d(cols, weight.reshape(c_out, -1, 1, 1), bias, groups=groups)


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2, Zhu et al. 2019).

    Holds ``weight`` / ``bias`` exactly like ``nn.Conv2d`` (so plain
    convolution weights load into it) plus ``conv_offset``, a convolution with
    the same stride / padding / dilation that predicts ``2 * K`` offsets and
    ``K`` mask logits per offset group. ``conv_offset`` is zero-initialised, so
    at initialisation the layer is the plain convolution with every sample
    scaled by ``sigmoid(0) = 0.5`` (the standard DCNv2 initialisation).

    The forward runs ``torchvision.ops.deform_conv2d``, which torch's dynamo
    ONNX exporter (``torch.onnx.export(..., dynamo=True)``, opset >= 19)
    turns into one ONNX ``DeformConv`` node (ONNX Runtime >= 1.31 on the CPU,
    TensorRT >= 10.1 through its built-in plugin). Inside
    :func:`decomposed_deform_conv` it runs
    :func:`modulated_deform_conv2d_reference` instead, which exports as
    GridSample + Conv for runtimes without ``DeformConv``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size.
        stride: Stride.
        padding: Zero padding.
        dilation: Dilation.
        groups: Convolution groups (``in_channels`` for depthwise).
        bias: Whether the layer has a bias.
        offset_groups: Number of offset groups (``in_channels`` must be a
            multiple of it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        offset_groups: int = 1,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"channels ({in_channels} in, {out_channels} out) must be multiples of groups ({groups})"
            )
        if in_channels % offset_groups:
            raise ConfigError(
                f"in_channels ({in_channels}) must be a multiple of offset_groups ({offset_groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.offset_groups = offset_groups
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels,
            3 * offset_groups * kh * kw,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight like ``nn.Conv2d``; zero offsets (mask 0.5)."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / fan_in**0.5 if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        if self.conv_offset.bias is not None:
            nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, offset_groups: int = 1) -> ModulatedDeformConv2d:
        """Build a deformable copy of ``conv`` (same weight, bias and geometry).

        Args:
            conv: The convolution to copy; it must use zero padding given as
                integers.
            offset_groups: Offset groups of the new layer.

        Returns:
            A new module on the same device and dtype as ``conv``.

        Raises:
            ConfigError: The convolution uses a padding mode or padding that a
                deformable convolution cannot express.
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                f"cannot make a deformable copy of {conv}: only numeric zero padding is supported"
            )
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
            offset_groups=offset_groups,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deformable convolution of ``x`` with offsets predicted from ``x``."""
        o1, o2, m = torch.chunk(self.conv_offset(x), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(m)
        if _DECOMPOSE_DEFORM:
            return modulated_deform_conv2d_reference(
                x,
                offset,
                mask,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
            )
        return torchvision.ops.deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def extra_repr(self) -> str:
        """Summary like ``nn.Conv2d``'s."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, offset_groups={self.offset_groups}"
        )


def make_deformable(
    module: nn.Module,
    kernel_sizes: Collection[int] = (3,),
    offset_groups: int = 1,
) -> nn.Module:
    """Replace every square ``kernel_sizes`` ``nn.Conv2d`` inside ``module`` by a DCNv2 copy.

    The replacement keeps weight, bias, stride, padding, dilation and groups,
    so the result computes the same features as before up to the DCNv2 mask
    of 0.5 until ``conv_offset`` is trained. Existing
    :class:`ModulatedDeformConv2d` layers (and their ``conv_offset``) are left
    alone, so calling it twice is harmless.

    Args:
        module: The module to change in place.
        kernel_sizes: Kernel sizes to replace (3x3 by default; the last stage
            of MobileNetV3 uses 5x5 depthwise convolutions).
        offset_groups: Offset groups of the new layers.

    Returns:
        ``module`` itself, or its replacement when ``module`` is itself a
        matching convolution.
    """
    sizes = {(int(s), int(s)) for s in kernel_sizes}

    def matches(m: nn.Module) -> bool:
        return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) in sizes

    if matches(module):
        return ModulatedDeformConv2d.from_conv(module, offset_groups)  # type: ignore[arg-type]

    count = 0

    def visit(parent: nn.Module) -> None:
        nonlocal count
        for name, child in parent.named_children():
            if isinstance(child, ModulatedDeformConv2d):
                continue
            if matches(child):
                setattr(parent, name, ModulatedDeformConv2d.from_conv(child, offset_groups))  # type: ignore[arg-type]
                count += 1
            else:
                visit(child)

    visit(module)
    logger.debug("make_deformable replaced %d convolution(s) in %s", count, type(module).__name__)
    return module


def init_weights(module: nn.Module) -> None:
    """Initialise like torchvision: Kaiming (fan_out) convs, BN 1/0, zero biases.

    Transposed convolutions and deformable layers are left alone (they have
    their own initialisation).

    Args:
        module: The module whose submodules are initialised in place.
    """
    skip = {id(m.conv_offset) for m in module.modules() if isinstance(m, ModulatedDeformConv2d)}
    for m in module.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


#: FLOPs charged per sampled input value of a deformable convolution on top
#: of its convolution FLOPs. 0: a deformable conv counts as its plain conv
#: (its ``conv_offset`` is a plain conv and is counted as such), like
#: ``FlopCounterMode`` leaves interpolation and elementwise ops uncounted.
DEFORM_SAMPLE_FLOPS = 0


def _deform_conv2d_flops(
    input_shape: torch.Size,
    weight_shape: torch.Size,
    offset_shape: torch.Size,
    mask_shape: torch.Size | None,
    bias_shape: torch.Size | None,
    *args: object,
    out_shape: torch.Size,
    **kwargs: object,
) -> int:
    """FLOPs of ``torchvision::deform_conv2d`` for ``FlopCounterMode``.

    Convolution FLOPs counted like ``aten.convolution`` (2 per multiply-add),
    plus :data:`DEFORM_SAMPLE_FLOPS` per sampled input value (0: the bilinear
    sampling is not counted).
    """
    batch, c_in = int(input_shape[0]), int(input_shape[1])
    c_out, c_in_per_group, kh, kw = (int(v) for v in weight_shape)
    spatial = int(out_shape[2]) * int(out_shape[3])
    conv = 2 * batch * c_out * c_in_per_group * kh * kw * spatial
    sampling = DEFORM_SAMPLE_FLOPS * batch * c_in * kh * kw * spatial
    return conv + sampling


def _register_deform_flops() -> None:
    """Teach ``torch.utils.flop_counter`` the cost of torchvision's deform_conv2d."""
    from torch.utils import flop_counter

    target = torch.ops.torchvision.deform_conv2d
    if target not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(target)(_deform_conv2d_flops)


_register_deform_flops()
