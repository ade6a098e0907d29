"""The U-Net of Ronneberger et al. 2015, in 2D or 3D, with "same" or "valid" (unpadded) convolutions.

Ronneberger, Fischer and Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation".
MICCAI 2015, https://arxiv.org/abs/1505.04597
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Dropout, Norm, Pool

__all__ = ["RonnebergerUNet", "valid_input_size", "valid_output_size"]

_NORMS = ("batch", "instance", None)
_UP_MODES = ("transpose", "interpolate")
_PADDINGS = ("same", "valid")
_INTERP_MODES = {2: "bilinear", 3: "trilinear"}


def _check_depth(depth: int) -> None:
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}.")


def _output_size_or_none(input_size: int, depth: int) -> int | None:
    """Spatial output size of a valid-padding U-Net along one axis, or None if the input size is not valid.

    Every 3x3 unpadded convolution removes 2 pixels, so each double-conv removes 4.
    Every 2x2 max-pool needs an even size; every 2x2 up-conv doubles the size.
    """
    size = input_size
    for _ in range(depth):  # encoder: double-conv, then max-pool
        size -= 4
        if size <= 0 or size % 2 != 0:
            return None
        size //= 2
    size -= 4  # bottleneck double-conv
    if size <= 0:
        return None
    for _ in range(depth):  # decoder: up-conv, then double-conv
        size = 2 * size - 4
        if size <= 0:
            return None
    return size


def _valid_input_sizes(depth: int) -> Iterator[int]:
    """Yield every valid input size of a valid-padding U-Net, in increasing order."""
    bottleneck_input = 5  # the bottleneck double-conv needs at least 5 pixels to give 1
    while True:
        size = bottleneck_input
        for _ in range(depth):  # walk the encoder backwards: undo the max-pool, then the double-conv
            size = 2 * size + 4
        if _output_size_or_none(size, depth) is not None:
            yield size
        bottleneck_input += 1


def valid_output_size(input_size: int, depth: int) -> int:
    """Output size, along one axis, of a valid-padding (unpadded) U-Net.

    Args:
        input_size: input size along one spatial axis.
        depth: number of 2x2 max-pool steps.

    Raises:
        ValueError: if a map before a max-pool has an odd size, or a size drops to 0 or below.

    Example: ``valid_output_size(572, depth=4) == 388`` (the paper's Fig. 1).
    """
    _check_depth(depth)
    output_size = _output_size_or_none(input_size, depth)
    if output_size is None:
        raise ValueError(
            f"input size {input_size} is not valid for a valid-padding U-Net of depth {depth}: "
            f"{_describe_neighbours(input_size, depth)}."
        )
    return output_size


def valid_input_size(min_output_size: int, depth: int) -> int:
    """Smallest valid input size whose valid-padding output size is at least ``min_output_size``.

    Args:
        min_output_size: smallest acceptable output size along one axis.
        depth: number of 2x2 max-pool steps.
    """
    _check_depth(depth)
    for input_size in _valid_input_sizes(depth):
        if valid_output_size(input_size, depth) >= min_output_size:
            return input_size
    raise AssertionError("unreachable: _valid_input_sizes is infinite")


def _describe_neighbours(input_size: int, depth: int) -> str:
    """Name the valid input sizes just below and just above ``input_size``."""
    below = None
    for candidate in _valid_input_sizes(depth):
        if candidate > input_size:
            if below is None:
                return f"the smallest valid size is {candidate}"
            return f"the nearest valid sizes are {below} and {candidate}"
        below = candidate
    raise AssertionError("unreachable: _valid_input_sizes is infinite")


def _center_crop(x: torch.Tensor, spatial_shape: list[int]) -> torch.Tensor:
    """Crop the spatial dimensions of ``x`` (B, C, *spatial) around their centre to ``spatial_shape``."""
    for axis, target in enumerate(spatial_shape):
        dim = axis + 2
        x = x.narrow(dim, (x.shape[dim] - target) // 2, target)
    return x


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by an optional norm and a ReLU; then optional spatial dropout."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        norm: str | None,
        dropout: float,
        conv_padding: int,
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


class Down(nn.Sequential):
    """2x2 max-pool, then a double convolution."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        norm: str | None,
        dropout: float,
        conv_padding: int,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_chns: number of input channels.
            out_chns: number of output channels.
            norm: ``"batch"``, ``"instance"`` or None.
            dropout: spatial dropout probability after the double convolution.
            conv_padding: 1 for "same" convolutions, 0 for "valid" ones.
        """
        super().__init__()
        self.add_module("max_pooling", Pool[Pool.MAX, spatial_dims](kernel_size=2))
        self.add_module("convs", DoubleConv(spatial_dims, in_chns, out_chns, norm, dropout, conv_padding))


class Up(nn.Module):
    """x2 up-sampling halving the channels, concatenation with the (cropped) skip, double convolution."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        norm: str | None,
        dropout: float,
        conv_padding: int,
        up_mode: str,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_chns: number of channels of the map to up-sample; the skip has ``in_chns // 2`` channels.
            out_chns: number of output channels.
            norm: ``"batch"``, ``"instance"`` or None.
            dropout: spatial dropout probability after the double convolution.
            conv_padding: 1 for "same" convolutions, 0 for "valid" ones.
            up_mode: ``"transpose"`` (2x2 transposed conv, stride 2) or ``"interpolate"``
                (bilinear/trilinear x2 up-sampling, then a 1x1 conv).
        """
        super().__init__()
        up_chns = in_chns // 2
        if up_mode == "transpose":
            self.upsample: nn.Module = Conv[Conv.CONVTRANS, spatial_dims](in_chns, up_chns, 2, stride=2)
        else:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=_INTERP_MODES[spatial_dims], align_corners=False),
                Conv[Conv.CONV, spatial_dims](in_chns, up_chns, 1),
            )
        self.convs = DoubleConv(spatial_dims, up_chns * 2, out_chns, norm, dropout, conv_padding)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: decoder map to up-sample.
            skip: encoder map of the same level; centre-cropped to the up-sampled map (valid padding).
        """
        x = self.upsample(x)
        skip = _center_crop(skip, list(x.shape[2:]))
        return self.convs(torch.cat([skip, x], dim=1))


class RonnebergerUNet(nn.Module):
    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        depth: int = 4,
        features: int = 64,
        norm: str | None = None,
        dropout: float = 0.0,
        up_mode: str = "transpose",
        padding: str = "same",
    ):
        """
        The U-Net of Ronneberger et al. 2015, in 2D or 3D.

        Each level has two 3x3 convolutions, each followed by an optional norm and a ReLU; levels are joined
        by 2x2 max-pools (encoder) and x2 up-samplings halving the channels (decoder), with concatenated skip
        connections. The head is a 1x1 convolution giving logits (no activation).

        Args:
            spatial_dims: number of spatial dimensions, 2 or 3.
            in_channels: number of input channels.
            out_channels: number of output channels (classes).
            depth: number of 2x2 max-pool steps (4 in the paper; 3 suits small images).
            features: channels of the first level; level ``i`` has ``features * 2**i`` channels,
                the bottleneck ``features * 2**depth``.
            norm: ``"batch"``, ``"instance"`` or None (the paper: no normalisation).
            dropout: probability of spatial dropout (Dropout2d/3d) after each double convolution; 0 for none.
            up_mode: ``"transpose"`` (2x2 transposed conv, stride 2, as in the paper) or ``"interpolate"``
                (bilinear/trilinear up-sampling, ``align_corners=False``, then a 1x1 conv).
            padding: ``"same"``: 3x3 convs padded by 1, output size == input size; every spatial size
                must be divisible by ``2**depth``.
                ``"valid"``: unpadded convs as in the paper, skips centre-cropped, output smaller than input
                (see :func:`valid_output_size`; wrap in ``OverlapTileNet`` for a same-size output).

        Examples::

            # the paper's network: 572x572 input, 388x388 output
            >>> net = RonnebergerUNet(spatial_dims=2, features=64, depth=4, padding="valid")

            # a small 3D network with same-size output
            >>> net = RonnebergerUNet(spatial_dims=3, features=16, depth=3, norm="instance")
        """
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        _check_depth(depth)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
        if up_mode not in _UP_MODES:
            raise ValueError(f"up_mode must be one of {_UP_MODES}, got {up_mode!r}.")
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.depth = depth
        self.padding = padding
        conv_padding = 1 if padding == "same" else 0

        chns = [features * 2**level for level in range(depth + 1)]
        self.conv_0 = DoubleConv(spatial_dims, in_channels, chns[0], norm, dropout, conv_padding)
        self.downs = nn.ModuleList(
            [Down(spatial_dims, chns[i], chns[i + 1], norm, dropout, conv_padding) for i in range(depth)]
        )
        # ups[0] is the deepest up-sampling step (from the bottleneck).
        self.ups = nn.ModuleList(
            [
                Up(spatial_dims, chns[i + 1], chns[i], norm, dropout, conv_padding, up_mode)
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
