"""Mirror test-time augmentation around any MONAI inferer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer


class MirrorTTAInferer(Inferer):
    """Average a base inferer's output over the input and its mirror images.

    The prediction of each flipped input is flipped back before averaging, so only mirrors that are
    anatomically valid should be listed (e.g. left-right, not anterior-posterior when the classes are
    "anterior" and "posterior").

    Args:
        inferer: the inferer doing the work (``SliceInferer``, ``SlidingWindowInferer`` ...).
        spatial_axes: spatial axes (0, 1, 2 of the volume) to mirror, one pass each.
        softmax: average softmax probabilities (as nnU-Net does) rather than logits; the output is then
            log-probabilities, so a downstream softmax gives back the averaged probabilities.
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = (0,), softmax: bool = True) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(spatial_axes)
        self.softmax = softmax

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        def predict(x: torch.Tensor) -> torch.Tensor:
            out = self.inferer(x, network, *args, **kwargs)
            return torch.softmax(out, dim=1) if self.softmax else out

        total = predict(inputs)
        for axis in self.spatial_axes:
            dims = [axis + 2]  # batch and channel come first
            total = total + torch.flip(predict(torch.flip(inputs, dims)), dims)
        mean = total / (1 + len(self.spatial_axes))
        return torch.log(mean.clamp_min(1e-8)) if self.softmax else mean
