"""The U-Net of Ronneberger et al. 2015, in 2D or 3D, with "same" or "valid" (unpadded) convolutions.

Ronneberger, Fischer and Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation".
MICCAI 2015, https://arxiv.org/abs/1505.04597

It is one configuration of the modular U-Net (``modular.py``): double convolutions, max-pool, centre-cropped
concatenated skips, transposed-conv or interpolation up-sampling. Its blocks live in ``blocks.py``, its size
helpers in ``valid_size.py``; the state_dict key names of saved checkpoints are unchanged.
"""

from __future__ import annotations

from unet_monai.networks.modular import ModularUNet
from unet_monai.networks.valid_size import valid_input_size, valid_output_size

__all__ = ["RonnebergerUNet", "valid_input_size", "valid_output_size"]

_UP_MODES = ("transpose", "interpolate")


class RonnebergerUNet(ModularUNet):
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
        if up_mode not in _UP_MODES:
            raise ValueError(f"up_mode must be one of {_UP_MODES}, got {up_mode!r}.")
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            depth=depth,
            features=features,
            norm=norm,
            dropout=dropout,
            conv_block="double_conv",
            skip_conn="crop_concat",
            down_op="max_pool",
            up_op=up_mode,
            padding=padding,
        )
