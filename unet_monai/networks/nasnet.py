"""The NASNet-A normal and reduction cells, 2D or 3D, with one input: a ConvBlock and a DownOp of the U-Net.

Zoph, Vasudevan, Shlens and Le. "Learning Transferable Architectures for Scalable Image Recognition".
CVPR 2018, https://arxiv.org/abs/1707.07012 (Fig. 4: NASNet-A). Operations and their wiring follow the
paper's figure as the widely used PyTorch port (Cadene's ``pretrainedmodels``, NASNet-A Large) reads it.

Changes for a U-Net slot: a cell in NASNet takes the two previous cells' outputs; here both of its hidden
states are 1x1 projections (conv + norm) of the one input, without NASNet's leading ReLU, so that the first
ConvBlock keeps the image's negative intensities. The concatenated block outputs are mapped back to the
slot's channels by a 1x1 conv + norm + ReLU, as the next NASNet cell's first 1x1 conv would do. Block ``i``
sums two operations, ``op_<i>a`` and ``op_<i>b`` (pools and identities have no parameters, no module).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Dropout, Norm, Pool

__all__ = ["AvgPool", "NASNetNormalCell", "NASNetReductionCell", "SeparableConv"]


def _conv_norm(spatial_dims: int, in_chns: int, out_chns: int, norm: str | None) -> list[nn.Module]:
    """A 1x1 convolution and an optional norm."""
    layers = [Conv[Conv.CONV, spatial_dims](in_chns, out_chns, 1, bias=norm is None)]
    if norm is not None:
        layers.append(Norm[norm, spatial_dims](out_chns))
    return layers


class SeparableConv(nn.Sequential):
    """NASNet's separable ``k x k`` operation: twice (ReLU, depthwise ``k x k`` conv, 1x1 conv, norm)."""

    def __init__(self, spatial_dims: int, chns: int, kernel_size: int, stride: int, norm: str | None):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            chns: number of input and output channels.
            kernel_size: size of the depthwise kernel (3, 5 or 7).
            stride: stride of the first depthwise convolution (2 in a reduction cell).
            norm: ``"batch"``, ``"instance"`` or None.
        """
        super().__init__()
        for i in range(2):
            self.add_module(f"relu_{i}", nn.ReLU())
            depthwise = Conv[Conv.CONV, spatial_dims](
                chns, chns, kernel_size, stride=stride if i == 0 else 1, padding=kernel_size // 2, groups=chns
            )
            self.add_module(f"depthwise_{i}", depthwise)
            self.add_module(f"pointwise_{i}", nn.Sequential(*_conv_norm(spatial_dims, chns, chns, norm)))


class AvgPool(nn.Module):
    """3x3 average pool padded by 1, averaging only the pixels inside the map (``count_include_pad=False``).

    The padding is done by hand: PyTorch's ``avg_pool3d`` refuses maps smaller than its kernel (a bottleneck
    of 2x2x2 voxels) even when padded.
    """

    def __init__(self, spatial_dims: int, stride: int):
        super().__init__()
        self.pool = Pool[Pool.AVG, spatial_dims](3, stride=stride)
        self.padding = [1] * (2 * spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = torch.ones_like(x[:, :1])
        return self.pool(F.pad(x, self.padding)) / self.pool(F.pad(inside, self.padding))


def _max_pool(spatial_dims: int, stride: int) -> nn.Module:
    return Pool[Pool.MAX, spatial_dims](3, stride=stride, padding=1)


class _Cell(nn.Module):
    """The parts both cells share: two 1x1 projections of the input, and the output 1x1 conv + norm + ReLU."""

    def __init__(self, spatial_dims: int, in_chns: int, out_chns: int, num_outputs: int, norm: str | None):
        super().__init__()
        self.project_prev = nn.Sequential(*_conv_norm(spatial_dims, in_chns, out_chns, norm))
        self.project_last = nn.Sequential(*_conv_norm(spatial_dims, in_chns, out_chns, norm))
        self.combine = nn.Sequential(
            *_conv_norm(spatial_dims, num_outputs * out_chns, out_chns, norm), nn.ReLU(inplace=True)
        )


class NASNetNormalCell(_Cell):
    """NASNet-A normal cell: five blocks of separable convs, 3x3 average pools and identities; same size."""

    def __init__(self, spatial_dims: int, in_chns: int, out_chns: int, norm: str | None, dropout: float):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            in_chns: number of input channels.
            out_chns: number of output channels, also the width of every operation inside the cell.
            norm: ``"batch"``, ``"instance"`` or None.
            dropout: probability of the spatial dropout (Dropout2d/3d) after the cell; 0 for none.
        """
        super().__init__(spatial_dims, in_chns, out_chns, num_outputs=6, norm=norm)
        c = out_chns
        self.op_0a = SeparableConv(spatial_dims, c, 5, 1, norm)
        self.op_0b = SeparableConv(spatial_dims, c, 3, 1, norm)
        self.op_1a = SeparableConv(spatial_dims, c, 5, 1, norm)
        self.op_1b = SeparableConv(spatial_dims, c, 3, 1, norm)
        self.avg_pool = AvgPool(spatial_dims, stride=1)
        self.op_4a = SeparableConv(spatial_dims, c, 3, 1, norm)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_prev = self.project_prev(x)  # NASNet: the output of the cell before the previous one
        h_last = self.project_last(x)  # NASNet: the output of the previous cell
        block_0 = self.op_0a(h_last) + self.op_0b(h_prev)
        block_1 = self.op_1a(h_prev) + self.op_1b(h_prev)
        block_2 = self.avg_pool(h_last) + h_prev
        block_3 = 2 * self.avg_pool(h_prev)  # two identical average pools, summed
        block_4 = self.op_4a(h_last) + h_last
        out = self.combine(torch.cat([h_prev, block_0, block_1, block_2, block_3, block_4], dim=1))
        return self.dropout(out)


class NASNetReductionCell(_Cell):
    """NASNet-A reduction cell: five blocks of stride-2 separable convs and 3x3 pools; half the size."""

    def __init__(self, spatial_dims: int, chns: int, norm: str | None):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 or 3).
            chns: number of input and output channels, also the width of every operation inside the cell.
            norm: ``"batch"``, ``"instance"`` or None.
        """
        super().__init__(spatial_dims, chns, chns, num_outputs=4, norm=norm)
        self.op_0a = SeparableConv(spatial_dims, chns, 5, 2, norm)
        self.op_0b = SeparableConv(spatial_dims, chns, 7, 2, norm)
        self.op_1b = SeparableConv(spatial_dims, chns, 7, 2, norm)
        self.op_2b = SeparableConv(spatial_dims, chns, 5, 2, norm)
        self.op_4a = SeparableConv(spatial_dims, chns, 3, 1, norm)
        self.max_pool_2 = _max_pool(spatial_dims, stride=2)
        self.avg_pool_2 = AvgPool(spatial_dims, stride=2)
        self.avg_pool_1 = AvgPool(spatial_dims, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_prev = self.project_prev(x)
        h_last = self.project_last(x)
        block_0 = self.op_0a(h_last) + self.op_0b(h_prev)
        block_1 = self.max_pool_2(h_last) + self.op_1b(h_prev)
        block_2 = self.avg_pool_2(h_last) + self.op_2b(h_prev)
        block_3 = self.avg_pool_1(block_0) + block_1
        block_4 = self.op_4a(block_0) + self.max_pool_2(h_last)
        return self.combine(torch.cat([block_1, block_2, block_3, block_4], dim=1))
