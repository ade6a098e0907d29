"""2.5D neighbour-slice stacking and mirror test-time augmentation."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SliceInferer

from tests.conftest import HIPPOCAMPUS, require
from unet_monai.data import msd_datalist
from unet_monai.inference import MirrorTTAInferer, volume_inferer
from unet_monai.inference.inferers import SliceEnsembleInferer
from unet_monai.networks import create_network
from unet_monai.transforms import (
    build_train_transforms,
    neighbour_channels,
    stack_neighbour_slices,
)
from unet_monai.transforms.slices import reverse_neighbour_order, stack_neighbour_slices_of


def test_stack_neighbour_slices_shifts_each_channel() -> None:
    volume = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for axis in (0, 1, 2):
        stacked = stack_neighbour_slices(volume, slice_axis=axis, neighbours=2)
        assert stacked.shape == (10, 3, 4, 5)
        dim = axis + 1
        length = volume.shape[dim]
        for channel in range(2):
            for offset in range(-2, 3):
                shifted = stacked[channel * 5 + offset + 2]
                for k in range(length):
                    source = k + offset
                    expected = volume[channel].select(axis, source) if 0 <= source < length else 0.0
                    torch.testing.assert_close(
                        shifted.select(axis, k), torch.as_tensor(expected).expand_as(shifted.select(axis, k))
                    )
    assert torch.equal(stack_neighbour_slices(volume, 2, 0), volume)
    with pytest.raises(ValueError):
        stack_neighbour_slices(volume, 2, -1)
    assert neighbour_channels(1, 1) == 3 and neighbour_channels(2, 2) == 10


def test_two_and_a_half_d_training_chain_on_real_volumes() -> None:
    item = msd_datalist(require(HIPPOCAMPUS))[0]
    samples = build_train_transforms(slice_axis=2, neighbours=1, roi_size=(48, 64), num_samples=3)(item)
    assert [tuple(s["image"].shape) for s in samples] == [(3, 48, 64)] * 3
    assert [tuple(s["label"].shape) for s in samples] == [(1, 48, 64)] * 3
    chain = build_train_transforms(
        slice_axis=[0, 1, 2], neighbours=1, roi_size=(64, 64), num_samples=2, flip_axes=[0]
    )
    for _ in range(4):
        samples = chain(item)
        assert [tuple(s["image"].shape) for s in samples] == [(3, 64, 64)] * 2


def test_slice_ensemble_inferer_equals_a_loop_over_stacked_slices() -> None:
    torch.manual_seed(0)
    net = create_network(
        "ronneberger_unet", spatial_dims=2, in_channels=3, out_channels=3, features=4, depth=2
    ).eval()
    volume = torch.randn(1, 1, 16, 16, 16)

    def loop(axis: int) -> torch.Tensor:
        stacked = stack_neighbour_slices(volume[0], axis, 1)  # (3, 16, 16, 16)
        slices = [torch.softmax(net(stacked.select(axis + 1, k)[None]), dim=1) for k in range(16)]
        return torch.stack(slices, dim=axis + 2)

    with torch.no_grad():
        single = torch.softmax(volume_inferer([16, 16], slice_axis=2, neighbours=1)(volume, net), dim=1)
        torch.testing.assert_close(single, loop(2), atol=1e-5, rtol=1e-4)
        fused = torch.softmax(
            volume_inferer([16, 16], slice_axis=[0, 1, 2], neighbours=1)(volume, net), dim=1
        )
        torch.testing.assert_close(fused, (loop(0) + loop(1) + loop(2)) / 3, atol=1e-5, rtol=1e-4)


def test_mirror_tta_averages_flipped_predictions() -> None:
    torch.manual_seed(0)
    net = create_network("ronneberger_unet", spatial_dims=2, out_channels=3, features=4, depth=2).eval()
    image = torch.randn(1, 1, 16, 16)
    tta = MirrorTTAInferer(SimpleInferer(), spatial_axes=(0,))
    with torch.no_grad():
        plain = torch.softmax(net(image), dim=1)
        mirrored = torch.flip(torch.softmax(net(torch.flip(image, [2])), dim=1), [2])
        result = torch.softmax(tta(image, net), dim=1)
        torch.testing.assert_close(result, (plain + mirrored) / 2, atol=1e-5, rtol=1e-4)
        # a network that is itself mirror-symmetric gains nothing: TTA equals the plain prediction
        symmetric = lambda x: net(x) + torch.flip(net(torch.flip(x, [2])), [2])  # noqa: E731
        torch.testing.assert_close(
            torch.softmax(tta(image, symmetric), dim=1),
            torch.softmax(symmetric(image), dim=1),
            atol=1e-5,
            rtol=1e-4,
        )
    assert isinstance(volume_inferer([16, 16], slice_axis=2, mirror_axes=[0]), SliceEnsembleInferer)
    assert isinstance(volume_inferer([16, 16, 16], slice_axis=None, mirror_axes=[0]), MirrorTTAInferer)


def test_neighbour_stack_of_a_chunk_is_that_part_of_the_whole_stack() -> None:
    volume = torch.randn(2, 5, 6, 7)
    for axis in (0, 1, 2):
        whole = stack_neighbour_slices(volume, axis, 2)
        length = volume.shape[axis + 1]
        for start, stop in [(0, 1), (0, length), (1, 3), (length - 2, length)]:
            part = stack_neighbour_slices_of(volume, axis, 2, start, stop)
            assert torch.equal(part, whole.narrow(axis + 1, start, stop - start))
    with pytest.raises(ValueError, match="outside"):
        stack_neighbour_slices_of(volume, 0, 1, 3, 9)
    reversed_stack = reverse_neighbour_order(stack_neighbour_slices(volume, 2, 1), in_channels=2)
    mirrored = torch.flip(stack_neighbour_slices(torch.flip(volume, [3]), 2, 1), [3])
    assert torch.equal(reversed_stack, mirrored)


def reference_ensemble_with_mirrors(
    volume: torch.Tensor, net: torch.nn.Module, axes: list[int], roi: list[int], mirror_axes: list[int]
) -> torch.Tensor:
    """The unstreamed computation: whole-volume neighbour stacks, MONAI SliceInferer, mirrored volumes."""

    def ensemble(x: torch.Tensor) -> torch.Tensor:
        total = 0
        for axis in axes:
            stacked = stack_neighbour_slices(x[0], axis, 1)[None]
            inferer = SliceInferer(
                roi_size=roi, spatial_dim=axis, sw_batch_size=5, overlap=0.25, mode="gaussian"
            )
            total = total + torch.softmax(inferer(stacked, net), dim=1)
        return total

    total = ensemble(volume)
    for mirror in mirror_axes:
        total = total + torch.flip(ensemble(torch.flip(volume, [mirror + 2])), [mirror + 2])
    return total / (len(axes) * (1 + len(mirror_axes)))


def test_streamed_ensemble_with_mirrors_equals_the_whole_volume_computation() -> None:
    """Chunks of a few slices, mirrors batched with the chunk: the same probabilities as whole volumes."""
    torch.manual_seed(0)
    net = create_network(
        "ronneberger_unet", spatial_dims=2, in_channels=3, out_channels=3, features=4, depth=2
    ).eval()
    volume = torch.randn(1, 1, 13, 17, 11)  # slices larger and smaller than the 12 x 12 windows
    for mirror_axes in ([], [0], [2], [0, 1, 2]):
        streamed = SliceEnsembleInferer(
            [12, 12], [0, 1, 2], neighbours=1, sw_batch_size=5, mirror_axes=mirror_axes, chunk_windows=7
        )
        assert streamed.slices_per_chunk([13, 17, 11], 2, [12, 12]) < 11  # several chunks per axis
        with torch.no_grad():
            result = torch.softmax(streamed(volume, net), dim=1)
            expected = reference_ensemble_with_mirrors(volume, net, [0, 1, 2], [12, 12], mirror_axes)
        assert result.shape == (1, 3, 13, 17, 11)
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-4)
