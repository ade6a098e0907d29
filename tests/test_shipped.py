"""Compact shipped weights: int8 / fp16 packing, loading through every loader, the sha256 check."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from unet_monai.checkpoints import CheckpointError, load_weights, read_state_dict
from unet_monai.networks import AxisEnsemble, RonnebergerUNet, available_member_checkpoints, axis_ensemble
from unet_monai.networks.ensemble import load_member_checkpoints
from unet_monai.shipped import pack_files, pack_int8, sha256, unpack, verify_listed


def _network(seed: int, features: int = 4) -> RonnebergerUNet:
    torch.manual_seed(seed)
    return RonnebergerUNet(spatial_dims=2, in_channels=1, out_channels=3, features=features, depth=2)


def test_int8_packing_keeps_every_weight_within_half_a_step() -> None:
    state = _network(0).state_dict()
    unpacked = unpack(pack_int8(state), "memory")
    assert unpacked.keys() == state.keys()
    for name, value in state.items():
        restored = unpacked[name]
        assert restored.dtype == value.dtype and restored.shape == value.shape, name
        if value.is_floating_point() and value.ndim >= 2:
            step = value.reshape(value.shape[0], -1).abs().amax(dim=1) / 127
            error = (restored - value).reshape(value.shape[0], -1).abs().amax(dim=1)
            assert torch.all(error <= step / 2 + 1e-7), name
            assert not torch.equal(restored, value) or value.abs().max() == 0  # really quantised
        elif value.is_floating_point():
            assert torch.allclose(restored, value.half().float()), name
        else:
            assert torch.equal(restored, value), name


def test_packed_ensemble_file_loads_every_member(tmp_path: Path) -> None:
    members = [_network(seed, features=32) for seed in (1, 2, 3)]
    files = []
    for k, member in enumerate(members):
        files.append(tmp_path / f"member{k}.pt")
        torch.save(member.state_dict(), files[-1])
    shipped = tmp_path / "models" / "model.pt"
    shipped.parent.mkdir()
    size = pack_files(files, shipped, "int8", [f"members.{k}." for k in range(3)])
    assert size == shipped.stat().st_size
    float32_bytes = sum(v.numel() * 4 for m in members for v in m.state_dict().values())
    assert size < float32_bytes * 0.3  # int8 weights: about a quarter of float32

    ensemble = axis_ensemble(_network(9, features=32), [2, 0, 1])
    assert isinstance(ensemble, AxisEnsemble)
    paths = available_member_checkpoints(shipped, 3)
    assert paths == [shipped]  # no model_member<k>.pt beside it: the one file holds the ensemble
    load_member_checkpoints(ensemble, paths)
    x = torch.randn(1, 1, 16, 16)
    for member, original in zip(ensemble.members, members, strict=True):
        with torch.no_grad():
            difference = (member(x) - original(x)).abs().max().item()
        assert difference < 0.05 * original(x).abs().max().item()

    (tmp_path / "models" / "model_member1.pt").write_bytes(b"")
    assert len(available_member_checkpoints(shipped, 3)) == 3  # trained member files take over


def test_fp16_file_loads_into_a_float32_network(tmp_path: Path) -> None:
    network = _network(4)
    torch.save(network.state_dict(), tmp_path / "trained.pt")
    pack_files([tmp_path / "trained.pt"], tmp_path / "model.pt", "fp16", [""])
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    fresh = _network(5)
    load_weights(fresh, tmp_path / "model.pt")
    for name, value in fresh.state_dict().items():
        assert value.dtype == network.state_dict()[name].dtype
        assert torch.allclose(value, network.state_dict()[name].half().float()), name


def test_damaged_packed_file_is_one_line(tmp_path: Path) -> None:
    packed = pack_int8(_network(6).state_dict())
    del packed["tensors"]  # type: ignore[arg-type]
    torch.save(packed, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model.pt: damaged packed weights"):
        read_state_dict(tmp_path / "model.pt")


def test_sha256_listed_in_large_files_yml_says_which_weights_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    weights = bundle / "models" / "model.pt"
    torch.save(_network(7).state_dict(), weights)
    assert verify_listed(bundle, weights) is None  # no large_files.yml
    entry = f'  - path: "models/model.pt"\n    hash_val: "{sha256(weights)}"\n    hash_type: "sha256"\n'
    (bundle / "large_files.yml").write_text("large_files:\n" + entry)
    assert verify_listed(bundle, weights) is True
    torch.save(_network(8).state_dict(), weights)  # retrained here
    with caplog.at_level(logging.WARNING, logger="unet_monai.shipped"):
        assert verify_listed(bundle, weights) is False
    assert "differs from the shipped weights" in caplog.text
