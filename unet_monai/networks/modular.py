"""A U-Net assembled from four module slots, each filled by name: ConvBlock, SkipConn, DownOp and UpOp.

The decomposition of "U-Net based architectures for medical image segmentation" (the seed project 4 of
``../shared/SEEDS.md``), on the U-Net of Ronneberger, Fischer and Brox, MICCAI 2015,
https://arxiv.org/abs/1505.04597. The blocks and their papers are in ``blocks.py`` and ``nasnet.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from unet_monai.networks.blocks import (
    AttentionConcat,
    Concat,
    CropConcat,
    DoubleConv,
    interpolate_up,
    max_pool,
    mbconv_block,
    residual_block,
    strided_conv,
    transpose_up,
)
from unet_monai.networks.nasnet import NASNetNormalCell, NASNetReductionCell
from unet_monai.networks.valid_size import check_depth, valid_output_size

__all__ = ["CONV_BLOCKS", "DOWN_OPS", "SKIP_CONNS", "UP_OPS", "ModularUNet"]

# (spatial_dims, in_chns, out_chns, norm, dropout) -> module keeping the spatial size
CONV_BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "double_conv": DoubleConv,
    "residual": residual_block,
    "mbconv": mbconv_block,
    "nasnet_normal": NASNetNormalCell,
}
# (spatial_dims, chns) -> module whose forward(skip, x) gives 2 * chns channels
SKIP_CONNS: dict[str, Callable[..., nn.Module]] = {
    "concat": Concat,
    "crop_concat": CropConcat,
    "attention": AttentionConcat,
}
# (spatial_dims, chns, norm) -> module halving the spatial size, keeping the channels
DOWN_OPS: dict[str, Callable[..., nn.Module]] = {
    "max_pool": max_pool,
    "strided_conv": strided_conv,
    "nasnet_reduction": NASNetReductionCell,
}
# (spatial_dims, in_chns, out_chns) -> module doubling the spatial size
UP_OPS: dict[str, Callable[..., nn.Module]] = {
    "transpose": transpose_up,
    "interpolate": interpolate_up,
}

_NORMS = ("batch", "instance", None)
_PADDINGS = ("same", "valid")
_VALID_PADDING_SLOTS = {"conv_block": "double_conv", "skip_conn": "crop_concat", "down_op": "max_pool"}


def _pick(slot: str, name: str, table: dict[str, Callable[..., nn.Module]]) -> Callable[..., nn.Module]:
    """The factory registered under ``name`` for ``slot``; a ValueError listing the known names otherwise."""
    if name not in table:
        raise ValueError(f"unknown {slot} {name!r}; known {slot} names: {', '.join(sorted(table))}.")
    return table[name]


class DownStep(nn.Sequential):
    """A DownOp (half the size), then a ConvBlock (``in_chns -> out_chns``)."""

    def __init__(self, down: nn.Module, convs: nn.Module):
        super().__init__()
        self.add_module("down", down)
        self.add_module("convs", convs)


class UpStep(nn.Module):
    """An UpOp (double the size), a SkipConn joining the encoder map, then a ConvBlock.

    The attribute names (and DownStep's ``convs``) are those of RonnebergerUNet's saved checkpoints.
    """

    def __init__(self, upsample: nn.Module, skip_conn: nn.Module, convs: nn.Module):
        super().__init__()
        self.upsample = upsample
        self.skip_conn = skip_conn
        self.convs = convs

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: decoder map to up-sample.
            skip: encoder map of the same level.
        """
        return self.convs(self.skip_conn(skip, self.upsample(x)))


class ModularUNet(nn.Module):
    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        depth: int = 4,
        features: int = 32,
        norm: str | None = None,
        dropout: float = 0.0,
        conv_block: str = "double_conv",
        skip_conn: str = "concat",
        down_op: str = "max_pool",
        up_op: str = "transpose",
        padding: str = "same",
    ):
        """
        A U-Net whose ConvBlock, SkipConn, DownOp and UpOp are chosen by name, in 2D or 3D.

        Level ``i`` has ``features * 2**i`` channels, the bottleneck ``features * 2**depth``. The encoder is a
        ConvBlock, then ``depth`` times a DownOp and a ConvBlock doubling the channels; the decoder is
        ``depth`` times an UpOp halving the channels, a SkipConn with the encoder map of that level and a
        ConvBlock. The head is a 1x1 convolution giving logits (no activation). The defaults are the plain
        U-Net; ``RonnebergerUNet`` is this network with ``crop_concat`` skips.

        Args:
            spatial_dims: number of spatial dimensions, 2 or 3.
            in_channels: number of input channels.
            out_channels: number of output channels (classes).
            depth: number of down-sampling steps.
            features: channels of the first level.
            norm: ``"batch"``, ``"instance"`` or None, in every block that has a norm (the attention gate
                always uses batch norm).
            dropout: probability of spatial dropout (Dropout2d/3d) after each ConvBlock; 0 for none.
            conv_block: one of :data:`CONV_BLOCKS`: ``"double_conv"``, ``"residual"``, ``"mbconv"``,
                ``"nasnet_normal"``.
            skip_conn: one of :data:`SKIP_CONNS`: ``"concat"``, ``"crop_concat"``, ``"attention"``.
            down_op: one of :data:`DOWN_OPS`: ``"max_pool"``, ``"strided_conv"``, ``"nasnet_reduction"``.
            up_op: one of :data:`UP_OPS`: ``"transpose"`` (2x2 transposed conv), ``"interpolate"``
                (bilinear/trilinear up-sampling, then a 1x1 conv).
            padding: ``"same"``: output size == input size; every spatial size must be divisible by
                ``2**depth``. ``"valid"``: unpadded 3x3 convs as in Ronneberger et al., output smaller than
                the input (see ``valid_output_size``); only with ``double_conv``, ``crop_concat`` and
                ``max_pool``.

        Example::

            >>> net = ModularUNet(spatial_dims=2, features=16, skip_conn="attention", norm="batch")
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        check_depth(depth)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
        make_conv = _pick("conv_block", conv_block, CONV_BLOCKS)
        make_skip = _pick("skip_conn", skip_conn, SKIP_CONNS)
        make_down = _pick("down_op", down_op, DOWN_OPS)
        make_up = _pick("up_op", up_op, UP_OPS)
        slots = {"conv_block": conv_block, "skip_conn": skip_conn, "down_op": down_op}
        if padding == "valid" and slots != _VALID_PADDING_SLOTS:
            raise ValueError(f"padding='valid' needs {_VALID_PADDING_SLOTS}, got {slots}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.padding = padding

        def conv(in_chns: int, out_chns: int) -> nn.Module:
            if padding == "valid":
                return DoubleConv(spatial_dims, in_chns, out_chns, norm, dropout, conv_padding=0)
            return make_conv(spatial_dims, in_chns, out_chns, norm, dropout)

        chns = [features * 2**level for level in range(depth + 1)]
        self.conv_0 = conv(in_channels, chns[0])
        self.downs = nn.ModuleList(
            [
                DownStep(make_down(spatial_dims, chns[i], norm), conv(chns[i], chns[i + 1]))
                for i in range(depth)
            ]
        )
        # ups[0] is the deepest up-sampling step (from the bottleneck).
        self.ups = nn.ModuleList(
            [
                UpStep(
                    make_up(spatial_dims, chns[i + 1], chns[i]),
                    make_skip(spatial_dims, chns[i]),
                    conv(2 * chns[i], chns[i]),
                )
                for i in reversed(range(depth))
            ]
        )
        self.final_conv = Conv[Conv.CONV, spatial_dims](chns[0], out_channels, kernel_size=1)

    @torch.jit.unused
    def _check_input_size(self, spatial_shape: tuple[int, ...]) -> None:
        for size in spatial_shape:
            if self.padding == "same" and size % 2**self.depth != 0:
                raise ValueError(
                    f"spatial size {size} is not divisible by 2**depth = {2**self.depth} "
                    f"(depth {self.depth}, padding='same'); input spatial shape {spatial_shape}."
                )
            if self.padding == "valid":
                valid_output_size(size, self.depth)  # raises a ValueError naming the nearest valid sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(Batch, in_channels, dim_0[, dim_1, dim_2])``.

        Returns:
            logits of shape ``(Batch, out_channels, *spatial)``: the input's spatial shape with ``"same"``
            padding, ``valid_output_size`` of each axis with ``"valid"`` padding.
        """
        if not torch.jit.is_scripting():  # the size check is plain Python; a scripted network skips it
            self._check_input_size(tuple(x.shape[2:]))
        x = self.conv_0(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is not a skip
        for up in self.ups:
            x = up(x, skips.pop())
        return self.final_conv(x)
