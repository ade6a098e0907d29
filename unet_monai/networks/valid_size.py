"""Sizes of a valid-padding (unpadded) U-Net: which input sizes work, and what output size they give.

Ronneberger, Fischer and Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation".
MICCAI 2015, https://arxiv.org/abs/1505.04597 (Fig. 1: 572x572 input, 388x388 output).
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["check_depth", "valid_input_size", "valid_output_size"]


def check_depth(depth: int) -> None:
    """Raise a ValueError unless ``depth`` (the number of down-sampling steps) is at least 1."""
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
    check_depth(depth)
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
    check_depth(depth)
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
