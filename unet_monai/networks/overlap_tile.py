"""Overlap-tile wrapper: a valid-padding U-Net behaving like a same-size network (Ronneberger et al. 2015)."""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from unet_monai.networks.modular import ModularUNet
from unet_monai.networks.valid_size import valid_input_size, valid_output_size

__all__ = ["OverlapTileNet"]


class OverlapTileNet(nn.Module):
    def __init__(self, network: ModularUNet, tile_output_size: int | None = None):
        """
        The paper's overlap-tile strategy: output size == input size, for any input size.

        The image is mirror-padded ("reflect"; "replicate" when the image is too small to reflect) by the
        network's margin ``(tile_input - tile_output) / 2`` on each side, plus what is needed to fill whole
        tiles at the end of each axis. Each tile is run through the network (one tile at a time, the whole
        batch at once), the output tiles are stitched and the result is cropped to the input size.

        Args:
            network: a ``RonnebergerUNet`` (or any ``ModularUNet``) built with ``padding="valid"``.
            tile_output_size: output size of a tile along each axis, rounded up to the nearest valid output
                size. Defaults to ``8 * 2**depth`` rounded up: a modest tile (per axis, depth 4: 316 input
                -> 132 output pixels, a bit over half the paper's 572 -> 388 tile; depth 3: 156 -> 68).
                Along an axis shorter than the tile output, the smallest valid tile covering the axis is used.
        """
        super().__init__()
        if network.padding != "valid":
            raise ValueError(f"OverlapTileNet needs a network with padding='valid', got {network.padding!r}.")
        self.network = network
        self.spatial_dims = network.spatial_dims
        self.depth = network.depth
        if tile_output_size is None:
            tile_output_size = 8 * 2**network.depth
        if tile_output_size < 1:
            raise ValueError(f"tile_output_size must be >= 1, got {tile_output_size}.")
        self.tile_output_size = self._round_up_to_valid_output(tile_output_size)

    def _round_up_to_valid_output(self, size: int) -> int:
        """The smallest valid output size >= ``size``."""
        return valid_output_size(valid_input_size(size, self.depth), self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: input of shape ``(Batch, in_channels, *spatial)``, any spatial size.

        Returns:
            logits of shape ``(Batch, out_channels, *spatial)``, the same spatial shape as ``x``.
        """
        spatial_shape = tuple(x.shape[2:])
        tile_outputs: list[int] = []  # per axis: output size of one tile
        tile_inputs: list[int] = []  # per axis: input size of one tile
        pads: list[tuple[int, int]] = []  # per axis: (before, after) padding of the input
        output_shape: list[int] = []  # per axis: size of the stitched output, a whole number of tiles
        for size in spatial_shape:
            tile_output = self._round_up_to_valid_output(min(size, self.tile_output_size))
            tile_input = valid_input_size(tile_output, self.depth)
            margin = (tile_input - tile_output) // 2
            num_tiles = -(-size // tile_output)  # ceil division
            fill = num_tiles * tile_output - size
            tile_outputs.append(tile_output)
            tile_inputs.append(tile_input)
            pads.append((margin, margin + fill))
            output_shape.append(num_tiles * tile_output)

        # F.pad takes (left, right) pairs starting from the last axis.
        pad_arg = [p for pair in reversed(pads) for p in pair]
        can_reflect = all(max(pair) < size for pair, size in zip(pads, spatial_shape, strict=True))
        padded = F.pad(x, pad_arg, mode="reflect" if can_reflect else "replicate")

        output = x.new_zeros((x.shape[0], self.network.out_channels, *output_shape))
        tile_starts = [range(0, n, step) for n, step in zip(output_shape, tile_outputs, strict=True)]
        for starts in itertools.product(*tile_starts):
            # the tile whose output starts at `start` reads the padded input from `start` too
            in_slices = [slice(s, s + n) for s, n in zip(starts, tile_inputs, strict=True)]
            out_slices = [slice(s, s + n) for s, n in zip(starts, tile_outputs, strict=True)]
            tile = padded[(slice(None), slice(None), *in_slices)]
            output[(slice(None), slice(None), *out_slices)] = self.network(tile)

        return output[(slice(None), slice(None), *[slice(0, size) for size in spatial_shape])]
