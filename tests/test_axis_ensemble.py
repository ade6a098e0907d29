"""AxisEnsemble: one 2D network per slice direction, fused by SliceEnsembleInferer; member checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unet_monai.handlers import AxisEnsembleCheckpointLoader
from unet_monai.inference import volume_inferer
from unet_monai.networks import (
    AxisEnsemble,
    axis_ensemble,
    create_network,
    load_member_checkpoints,
    member_checkpoints,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AXES = [2, 0, 1]
ROI_SIZES = [[16, 24], [24, 16], [16, 16]]


def _member(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_network(
        "ronneberger_unet", spatial_dims=2, in_channels=3, out_channels=3, features=4, depth=2
    ).eval()


def test_each_member_segments_along_its_own_axis_and_the_probabilities_are_averaged() -> None:
    members = [_member(seed) for seed in range(3)]
    ensemble = AxisEnsemble(members, AXES)
    volume = torch.randn(1, 1, 14, 21, 11)
    with torch.no_grad():
        fused = volume_inferer(ROI_SIZES, slice_axis=AXES, neighbours=1)(volume, ensemble)
        singles = [
            torch.softmax(volume_inferer([size], slice_axis=[axis], neighbours=1)(volume, member), dim=1)
            for member, axis, size in zip(members, AXES, ROI_SIZES, strict=True)
        ]
    assert fused.shape == (1, 3, 14, 21, 11)
    torch.testing.assert_close(torch.softmax(fused, dim=1), sum(singles) / 3, atol=1e-5, rtol=1e-4)
    # Each member matters: the fusion differs from any one member alone.
    assert all(not torch.allclose(torch.softmax(fused, dim=1), single, atol=1e-3) for single in singles)


def test_inferer_refuses_an_ensemble_of_other_axes_and_the_ensemble_has_no_direct_forward() -> None:
    ensemble = AxisEnsemble([_member(0), _member(1)], [2, 0])
    volume = torch.randn(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"members segment axes \[2, 0\]"):
        volume_inferer([16, 16], slice_axis=[0, 2], neighbours=1)(volume, ensemble)
    with pytest.raises(RuntimeError, match="SliceEnsembleInferer"):
        ensemble(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="one member per slice axis"):
        AxisEnsemble([_member(0)], [2, 0])
    with pytest.raises(ValueError, match="one 2D size, or one per slice axis"):
        volume_inferer([[16, 16]], slice_axis=[2, 0], neighbours=1)


def test_member_checkpoints_load_into_their_members(tmp_path: Path) -> None:
    paths = member_checkpoints(tmp_path / "model.pt", 3)
    assert [p.name for p in paths] == ["model.pt", "model_member1.pt", "model_member2.pt"]
    trained = [_member(seed) for seed in (10, 11, 12)]
    for member, path in zip(trained, paths, strict=True):
        torch.save(member.state_dict(), path)

    ensemble = axis_ensemble(_member(0), AXES)
    assert all(m is not ensemble.members[0] for m in ensemble.members[1:])  # independent copies
    AxisEnsembleCheckpointLoader(ensemble, paths)(engine=None)
    for member, reference in zip(ensemble.members, trained, strict=True):
        for (name, value), expected in zip(
            member.state_dict().items(), reference.state_dict().values(), strict=True
        ):
            assert torch.equal(value, expected), name

    paths[2].unlink()
    with pytest.raises(
        FileNotFoundError, match=r"model_member2.pt: checkpoint of ensemble member 2 \(slice axis 1\)"
    ):
        load_member_checkpoints(ensemble, paths)
