"""The blocks of the modular U-Net's slots (ConvBlock, SkipConn, DownOp, UpOp), except the NASNet cells.

ConvBlocks map ``in_chns`` to ``out_chns`` channels at the same size; SkipConns join an encoder map and the
up-sampled decoder map of ``chns`` channels each into ``2 * chns`` channels; DownOps halve the size and keep
the channels; UpOps double the size and map ``in_chns`` to ``out_chns`` channels.

- ``DoubleConv``, max-pool, transposed conv, concatenation (with crop): Ronneberger et al., "U-Net:
  Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015, https://arxiv.org/abs/1505.04597
- residual block: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
  https://arxiv.org/abs/1512.03385 (MONAI's ``UnetResBlock``)
- MBConv: Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
  https://arxiv.org/abs/1905.11946 (MONAI's ``MBConvBlock``)
- attention gate: Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018,
  https://arxiv.org/abs/1804.03999 (MONAI's ``AttentionBlock``)
- strided convolution instead of pooling: Springenberg et al., "Striving for Simplicity: The All
  Convolutional Net", ICLR 2015 workshop, https://arxiv.org/abs/1412.6806
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.layers.factories import Conv, Dropout, Norm, Pool
from monai.networks.nets.attentionunet import AttentionBlock
from monai.networks.nets.efficientnet import MBConvBlock

__all__ = [
    "AttentionConcat",
    "Concat",
    "CropConcat",
    "DoubleConv",
    "center_crop",
    "interpolate_up",
    "max_pool",
    "mbconv_block",
    "residual_block",
    "strided_conv",
    "transpose_up",
]

_INTERP_MODES = {2: "bilinear", 3: "trilinear"}


def _with_dropout(block: nn.Module, spatial_dims: int, dropout: float) -> nn.Module:
    """``block`` followed by spatial dropout (Dropout2d/3d), or ``block`` alone when ``dropout`` is 0."""
    if dropout <= 0:
        return block
    return nn.Sequential(block, Dropout[Dropout.DROPOUT, spatial_dims](dropout))


# ---------------------------------------------------------------- ConvBlocks


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by an optional norm and a ReLU; then optional spatial dropout."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        norm: str | None,
        dropout: float,
        conv_padding: int = 1,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_chns: number of input channels.
            out_chns: number of output channels.
            norm: ``"batch"``, ``"instance"`` or None (no normalisation).
            dropout: probability of the spatial dropout (Dropout2d/3d) after the block; 0 for none.
            conv_padding: 1 for "same" convolutions, 0 for "valid" (unpadded) ones.
        """
        super().__init__()
        for i, chns in enumerate((in_chns, out_chns)):
            self.add_module(
                f"conv_{i}", Conv[Conv.CONV, spatial_dims](chns, out_chns, 3, padding=conv_padding)
            )
            if norm is not None:
                self.add_module(f"norm_{i}", Norm[norm, spatial_dims](out_chns))
            self.add_module(f"relu_{i}", nn.ReLU(inplace=True))
        if dropout > 0:
            self.add_module("dropout", Dropout[Dropout.DROPOUT, spatial_dims](dropout))


def residual_block(
    spatial_dims: int, in_chns: int, out_chns: int, norm: str | None, dropout: float
) -> nn.Module:
    """Two 3x3 convolutions with norm and ReLU around an identity (1x1 conv when the channels change).

    MONAI's ``UnetResBlock`` with ReLU; its convolutions have no bias. Then optional spatial dropout.
    """
    block = UnetResBlock(spatial_dims, in_chns, out_chns, 3, 1, norm_name=norm or "", act_name="relu")
    return _with_dropout(block, spatial_dims, dropout)


def mbconv_block(
    spatial_dims: int, in_chns: int, out_chns: int, norm: str | None, dropout: float
) -> nn.Module:
    """Two MBConv layers (``in_chns -> out_chns -> out_chns``), as the two convolutions of ``DoubleConv``.

    Each is MONAI's ``MBConvBlock``: 1x1 expansion by 6, 3x3 depthwise conv, squeeze-and-excitation (ratio
    0.25), 1x1 projection, swish; each adds its input when the channels do not change (the second always).
    No drop-connect. Then optional spatial dropout.
    """
    layers = [
        MBConvBlock(
            spatial_dims,
            chns,
            out_chns,
            kernel_size=3,
            stride=1,
            image_size=[1] * spatial_dims,  # stride 1: the "same" padding does not depend on the size
            expand_ratio=6,
            se_ratio=0.25,
            norm=norm or "",
            drop_connect_rate=0.0,
        )
        for chns in (in_chns, out_chns)
    ]
    return _with_dropout(nn.Sequential(*layers), spatial_dims, dropout)


# ---------------------------------------------------------------- SkipConns


def center_crop(x: torch.Tensor, spatial_shape: list[int]) -> torch.Tensor:
    """Crop the spatial dimensions of ``x`` (B, C, *spatial) around their centre to ``spatial_shape``."""
    for axis, target in enumerate(spatial_shape):
        dim = axis + 2
        x = x.narrow(dim, (x.shape[dim] - target) // 2, target)
    return x


class Concat(nn.Module):
    """Concatenation ``[skip, x]`` along the channels; both maps must have the same spatial shape."""

    def __init__(self, spatial_dims: int, chns: int):
        super().__init__()

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, x], dim=1)


class CropConcat(nn.Module):
    """Concatenation ``[skip, x]`` with ``skip`` centre-cropped to ``x`` (needed with valid padding)."""

    def __init__(self, spatial_dims: int, chns: int):
        super().__init__()

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([center_crop(skip, list(x.shape[2:])), x], dim=1)


class AttentionConcat(nn.Module):
    """Attention gate: ``skip`` weighted by a gate computed from ``skip`` and ``x``, then ``[gated skip, x]``.

    MONAI's ``AttentionBlock`` (1x1 convs with batch norm, intermediate channels ``chns // 2``), as MONAI's
    ``AttentionUnet`` uses it: the up-sampled decoder map is the gating signal.
    """

    def __init__(self, spatial_dims: int, chns: int):
        super().__init__()
        self.attention = AttentionBlock(spatial_dims, f_int=max(1, chns // 2), f_g=chns, f_l=chns)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.attention(g=x, x=skip), x], dim=1)


# ---------------------------------------------------------------- DownOps


def max_pool(spatial_dims: int, chns: int, norm: str | None) -> nn.Module:
    """2x2 max-pool, stride 2."""
    return Pool[Pool.MAX, spatial_dims](kernel_size=2)


def strided_conv(spatial_dims: int, chns: int, norm: str | None) -> nn.Module:
    """2x2 convolution with stride 2, then an optional norm and a ReLU."""
    layers = [Conv[Conv.CONV, spatial_dims](chns, chns, 2, stride=2)]
    if norm is not None:
        layers.append(Norm[norm, spatial_dims](chns))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- UpOps


def transpose_up(spatial_dims: int, in_chns: int, out_chns: int) -> nn.Module:
    """2x2 transposed convolution, stride 2."""
    return Conv[Conv.CONVTRANS, spatial_dims](in_chns, out_chns, 2, stride=2)


def interpolate_up(spatial_dims: int, in_chns: int, out_chns: int) -> nn.Module:
    """Bilinear / trilinear x2 up-sampling (``align_corners=False``), then a 1x1 convolution."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode=_INTERP_MODES[spatial_dims], align_corners=False),
        Conv[Conv.CONV, spatial_dims](in_chns, out_chns, 1),
    )
