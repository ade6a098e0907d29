"""Tests of the modular U-Net: every slot and variant, the parameter budget, TorchScript, bad names.

Tiny widths and inputs only. Every block scripts with torch.jit.script, in 2D and 3D; the scripting tests
run in 2D only, to keep this file fast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from unet_monai.networks import OverlapTileNet, RonnebergerUNet, create_network, valid_output_size
from unet_monai.networks.modular import CONV_BLOCKS, DOWN_OPS, SKIP_CONNS, UP_OPS, ModularUNet
from unet_monai.networks.variants import VARIANTS, build_variant, count_parameters, features_for_budget

SLOTS = {"conv_block": CONV_BLOCKS, "skip_conn": SKIP_CONNS, "down_op": DOWN_OPS, "up_op": UP_OPS}
SLOT_CHOICES = [(slot, name) for slot, table in SLOTS.items() for name in table]
BUDGET_TOLERANCE = 0.05  # the nearest width lands within half a width step: under 5 % at 8.5 M in 2D


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _check_shape_and_gradients(net: nn.Module, spatial_dims: int, size: int = 16) -> None:
    """Output shape == input shape (2 -> 3 channels); every parameter gets a gradient, every weight a
    non-zero one (a bias followed by batch norm, as in the attention gate, rightly gets a zero gradient).
    """
    torch.manual_seed(0)
    x = torch.randn(2, 2, *[size] * spatial_dims)
    out = net.train()(x)
    assert out.shape == (2, 3, *x.shape[2:])
    (out * torch.randn_like(out)).sum().backward()
    assert [name for name, p in net.named_parameters() if p.grad is None] == []
    weights = [(name, p) for name, p in net.named_parameters() if name.endswith("weight")]
    assert [name for name, p in weights if not p.grad.abs().sum() > 0] == []


# ---------------------------------------------------------------- slots and variants


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("slot, name", SLOT_CHOICES)
def test_every_slot_builds_and_trains(slot: str, name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = ModularUNet(spatial_dims, 2, 3, depth=2, features=4, norm="batch", dropout=0.1, **{slot: name})
    _check_shape_and_gradients(net, spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_and_trains(variant: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = create_network(
        f"modular_{variant}", spatial_dims=spatial_dims, in_channels=2, out_channels=3, features=4, depth=2
    )
    assert isinstance(net, ModularUNet)
    _check_shape_and_gradients(net, spatial_dims)


def test_variants_are_the_paper_configurations() -> None:
    assert {name: tuple(vars(v).values()) for name, v in VARIANTS.items()} == {
        # conv_block, skip_conn, down_op, up_op, norm
        "unet": ("double_conv", "concat", "max_pool", "transpose", None),
        "unet_bn": ("double_conv", "concat", "max_pool", "transpose", "batch"),
        "residual_unet": ("residual", "concat", "max_pool", "transpose", "batch"),
        "attention_unet": ("double_conv", "attention", "max_pool", "transpose", None),
        "nas_unet": ("nasnet_normal", "concat", "max_pool", "transpose", "batch"),
        "nas_reduction_unet": ("nasnet_normal", "concat", "nasnet_reduction", "transpose", "batch"),
        "efficient_unet": ("mbconv", "concat", "max_pool", "transpose", "batch"),
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_named_variant_equals_its_slot_configuration(variant: str) -> None:
    torch.manual_seed(0)
    named = create_network(f"modular_{variant}", features=4, depth=2).eval()
    torch.manual_seed(0)
    v = VARIANTS[variant]
    explicit = ModularUNet(
        features=4,
        depth=2,
        norm=v.norm,
        conv_block=v.conv_block,
        skip_conn=v.skip_conn,
        down_op=v.down_op,
        up_op=v.up_op,
    ).eval()
    assert repr(named) == repr(explicit)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(named(x), explicit(x))  # same modules, same initialisation


def test_registry_slot_arguments_override_the_variant() -> None:
    net = create_network("modular_unet", features=4, depth=2, skip_conn="attention")
    assert repr(net) == repr(create_network("modular_attention_unet", features=4, depth=2))


def test_dropout_after_every_conv_block() -> None:
    for conv_block in CONV_BLOCKS:
        net = ModularUNet(depth=2, features=4, dropout=0.3, conv_block=conv_block)
        dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout2d)]
        assert len(dropouts) == 2 * 2 + 1 and all(m.p == 0.3 for m in dropouts), conv_block


def test_3d_nasnet_cells_on_a_2x2x2_bottleneck() -> None:
    """PyTorch's avg_pool3d refuses maps smaller than its kernel; the cells' own pool does not."""
    net = ModularUNet(3, 1, 2, depth=3, features=2, conv_block="nasnet_normal", down_op="nasnet_reduction")
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


# ---------------------------------------------------------------- the Ronneberger U-Net is one configuration


@pytest.mark.parametrize("padding, size", [("same", 16), ("valid", 44)])
@pytest.mark.parametrize("up_mode", ["transpose", "interpolate"])
def test_ronneberger_unet_is_a_modular_configuration(padding: str, size: int, up_mode: str) -> None:
    kwargs = {"depth": 2, "features": 3, "norm": "batch", "dropout": 0.1, "padding": padding}
    torch.manual_seed(0)
    ronneberger = RonnebergerUNet(2, 1, 2, up_mode=up_mode, **kwargs).eval()
    torch.manual_seed(0)
    modular = ModularUNet(2, 1, 2, skip_conn="crop_concat", up_op=up_mode, **kwargs).eval()
    assert list(modular.state_dict()) == list(ronneberger.state_dict())
    modular.load_state_dict(ronneberger.state_dict())  # a Ronneberger checkpoint loads as it is
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        assert torch.equal(modular(x), ronneberger(x))


def test_valid_padding() -> None:
    torch.manual_seed(0)
    net = ModularUNet(depth=2, features=2, skip_conn="crop_concat", padding="valid")
    out = net(torch.randn(1, 1, 44, 60))
    assert out.shape == (1, 2, valid_output_size(44, 2), valid_output_size(60, 2))
    with pytest.raises(ValueError, match=r"45 .*44 and 48"):
        net(torch.zeros(1, 1, 44, 45))
    tiled = create_network("modular_unet", depth=2, features=2, skip_conn="crop_concat", padding="valid")
    assert isinstance(tiled, OverlapTileNet)
    assert tiled(torch.randn(1, 1, 30, 21)).shape == (1, 2, 30, 21)


def test_valid_padding_needs_the_ronneberger_slots() -> None:
    with pytest.raises(ValueError, match=r"padding='valid' needs .*crop_concat.*got.*'concat'"):
        ModularUNet(padding="valid")


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("slot", list(SLOTS))
def test_bad_slot_name_lists_the_known_names(slot: str) -> None:
    known = ", ".join(sorted(SLOTS[slot]))
    with pytest.raises(ValueError, match=rf"^unknown {slot} 'nope'; known {slot} names: {known}\.$"):
        create_network("modular_unet", **{slot: "nope"})


def test_bad_arguments_raise() -> None:
    for kwargs in ({"norm": "group"}, {"padding": "full"}, {"spatial_dims": 1}, {"depth": 0}):
        with pytest.raises(ValueError):
            ModularUNet(**kwargs)
    with pytest.raises(ValueError, match=r"spatial size 30 is not divisible"):
        ModularUNet(depth=2, features=2)(torch.zeros(1, 1, 32, 30))
    with pytest.raises(ValueError, match=r"unknown variant 'nope'; known variants: attention_unet, "):
        build_variant("nope")
    with pytest.raises(ValueError, match=r"unknown variant 'nope'"):
        features_for_budget("nope")


# ---------------------------------------------------------------- parameter budget


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_features_for_budget_lands_on_the_paper_budget(variant: str) -> None:
    budget = 8_500_000
    features, num_params = features_for_budget(variant, budget, in_channels=2, out_channels=2)
    assert abs(num_params - budget) <= BUDGET_TOLERANCE * budget

    def distance(width: int) -> int:
        with torch.device("meta"):
            net = build_variant(variant, features=width, in_channels=2, out_channels=2)
        return abs(count_parameters(net) - budget)

    nearest = abs(num_params - budget)
    assert distance(features - 1) >= nearest <= distance(features + 1)


def test_features_for_budget_counts_like_a_real_network() -> None:
    features, num_params = features_for_budget("unet", 200_000, spatial_dims=3, depth=3)
    assert count_parameters(build_variant("unet", features=features, spatial_dims=3, depth=3)) == num_params
    assert features_for_budget("unet", budget=10) == (1, count_parameters(build_variant("unet", features=1)))


# ---------------------------------------------------------------- TorchScript


# nas_reduction_unet has both NASNet cells: nas_unet adds nothing to script
@pytest.mark.parametrize("variant", [name for name in VARIANTS if name != "nas_unet"])
def test_scripted_variant_matches_eager(variant: str) -> None:
    torch.manual_seed(0)
    net = create_network(f"modular_{variant}", in_channels=2, out_channels=3, features=4, depth=1).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


@pytest.mark.parametrize("slot, name", [("down_op", "strided_conv"), ("up_op", "interpolate")])
def test_scripted_slots_match_eager(slot: str, name: str) -> None:
    net = ModularUNet(2, 1, 2, depth=1, features=4, norm="instance", **{slot: name}).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))
