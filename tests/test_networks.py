"""Tests of unet_monai.networks: RonnebergerUNet, the valid-size helpers, OverlapTileNet and the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from unet_monai.networks import (
    OverlapTileNet,
    RonnebergerUNet,
    create_network,
    list_networks,
    register_network,
    valid_input_size,
    valid_output_size,
)
from unet_monai.networks import registry as registry_module

BUILT_INS = ["attention_unet", "basic_unet", "dyn_unet", "monai_unet", "ronneberger_unet", "segresnet"]
MODULAR = [
    "modular_attention_unet",
    "modular_efficient_unet",
    "modular_nas_reduction_unet",
    "modular_nas_unet",
    "modular_residual_unet",
    "modular_unet",
    "modular_unet_bn",
]
BUILT_INS = sorted(BUILT_INS + MODULAR)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(net: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Forward a random input of ``shape`` in eval mode without gradients."""
    torch.manual_seed(0)
    net.eval()
    with torch.no_grad():
        return net(torch.randn(shape))


# ---------------------------------------------------------------- RonnebergerUNet, padding="same"


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_same_padding_output_shape(spatial_dims: int, size: int, depth: int) -> None:
    torch.manual_seed(0)
    net = RonnebergerUNet(spatial_dims=spatial_dims, in_channels=2, out_channels=3, depth=depth, features=4)
    out = _run(net, (2, 2, *[size] * spatial_dims))
    assert out.shape == (2, 3, *[size] * spatial_dims)
    assert net.depth == depth and net.padding == "same" and net.spatial_dims == spatial_dims


def test_channels_double_per_level() -> None:
    net = RonnebergerUNet(spatial_dims=2, depth=3, features=4)
    assert net.conv_0.conv_0.out_channels == 4
    assert [down.convs.conv_1.out_channels for down in net.downs] == [8, 16, 32]  # bottleneck: 4 * 2**3
    assert net.final_conv.in_channels == 4


def test_same_padding_non_divisible_size_raises() -> None:
    net = RonnebergerUNet(spatial_dims=2, depth=3, features=4)
    with pytest.raises(ValueError, match=r"spatial size 30 is not divisible .*depth 3"):
        net(torch.zeros(1, 1, 32, 30))


@pytest.mark.parametrize(
    "kwargs", [{"norm": "group"}, {"up_mode": "pixelshuffle"}, {"padding": "full"}, {"spatial_dims": 1}]
)
def test_bad_constructor_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RonnebergerUNet(**kwargs)


@pytest.mark.parametrize("spatial_dims, size", [(2, 32), (3, 16)])
def test_interpolate_up_mode(spatial_dims: int, size: int) -> None:
    torch.manual_seed(0)
    net = RonnebergerUNet(spatial_dims=spatial_dims, depth=3, features=4, up_mode="interpolate")
    assert any(isinstance(m, nn.Upsample) for m in net.modules())
    assert not any(isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)) for m in net.modules())
    out = _run(net, (1, 1, *[size] * spatial_dims))
    assert out.shape == (1, 2, *[size] * spatial_dims)


@pytest.mark.parametrize(
    "norm, norm_type", [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d), (None, None)]
)
def test_norm_builds_and_trains(norm: str | None, norm_type: type | None) -> None:
    torch.manual_seed(0)
    depth = 3
    net = RonnebergerUNet(spatial_dims=2, depth=depth, features=4, norm=norm)
    num_norms = sum(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in net.modules())
    # two convs per double-conv; 2 * depth + 1 double-convs (encoder, bottleneck, decoder)
    assert num_norms == (0 if norm is None else 2 * (2 * depth + 1))
    if norm_type is not None:
        assert any(type(m) is norm_type for m in net.modules())
    out = net.train()(torch.randn(2, 1, 32, 32))
    out.mean().backward()
    assert out.shape == (2, 2, 32, 32)


@pytest.mark.parametrize("spatial_dims, dropout_type", [(2, nn.Dropout2d), (3, nn.Dropout3d)])
def test_spatial_dropout(spatial_dims: int, dropout_type: type) -> None:
    torch.manual_seed(0)
    depth = 3
    net = RonnebergerUNet(spatial_dims=spatial_dims, depth=depth, features=4, dropout=0.5)
    dropouts = [m for m in net.modules() if isinstance(m, dropout_type)]
    assert len(dropouts) == 2 * depth + 1 and all(m.p == 0.5 for m in dropouts)
    x = torch.randn(1, 1, *[16] * spatial_dims)
    assert net.train()(x).shape == (1, 2, *[16] * spatial_dims)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # no dropout in eval mode
    assert not any(isinstance(m, dropout_type) for m in RonnebergerUNet(spatial_dims, depth=3).modules())


def test_paper_parameter_count() -> None:
    # Derived layer by layer, as in the paper's Fig. 1 (2D, 2x2 transposed-conv up, no norm, biases):
    # a conv with a k x k kernel from c_in to c_out channels has c_in * c_out * k**2 + c_out parameters.
    def conv(c_in: int, c_out: int, k: int) -> int:
        return c_in * c_out * k**2 + c_out

    chns = [64 * 2**i for i in range(5)]  # 64, 128, 256, 512, 1024
    expected = conv(1, 64, 3) + conv(64, 64, 3)  # first level
    for i in range(4):  # encoder levels 1..3 and the bottleneck: double conv from chns[i] to chns[i + 1]
        expected += conv(chns[i], chns[i + 1], 3) + conv(chns[i + 1], chns[i + 1], 3)
    for i in range(4):  # decoder: 2x2 up-conv halving, then double conv on the concatenation (2 * chns[i])
        expected += conv(chns[i + 1], chns[i], 2) + conv(2 * chns[i], chns[i], 3) + conv(chns[i], chns[i], 3)
    expected += conv(64, 2, 1)  # 1x1 head
    assert expected == 31_030_658  # the figure usually quoted for the paper's network

    net = RonnebergerUNet(spatial_dims=2, in_channels=1, out_channels=2, depth=4, features=64)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_state_dict_key_names_are_pinned() -> None:
    """Checkpoints saved from RonnebergerUNet must keep loading: these key names never change."""
    net = RonnebergerUNet(spatial_dims=2, in_channels=1, out_channels=2, depth=1, features=2)
    assert list(net.state_dict()) == [
        "conv_0.conv_0.weight",
        "conv_0.conv_0.bias",
        "conv_0.conv_1.weight",
        "conv_0.conv_1.bias",
        "downs.0.convs.conv_0.weight",
        "downs.0.convs.conv_0.bias",
        "downs.0.convs.conv_1.weight",
        "downs.0.convs.conv_1.bias",
        "ups.0.upsample.weight",
        "ups.0.upsample.bias",
        "ups.0.convs.conv_0.weight",
        "ups.0.convs.conv_0.bias",
        "ups.0.convs.conv_1.weight",
        "ups.0.convs.conv_1.bias",
        "final_conv.weight",
        "final_conv.bias",
    ]
    batch_norm = RonnebergerUNet(spatial_dims=2, depth=1, features=2, norm="batch")
    assert [key for key in batch_norm.state_dict() if key.startswith("conv_0.norm_1.")] == [
        "conv_0.norm_1.weight",
        "conv_0.norm_1.bias",
        "conv_0.norm_1.running_mean",
        "conv_0.norm_1.running_var",
        "conv_0.norm_1.num_batches_tracked",
    ]
    interpolate = RonnebergerUNet(spatial_dims=2, depth=1, features=2, up_mode="interpolate")
    assert [key for key in interpolate.state_dict() if key.startswith("ups.0.upsample.")] == [
        "ups.0.upsample.1.weight",
        "ups.0.upsample.1.bias",
    ]


# ---------------------------------------------------------------- padding="valid" and the size helpers


def test_paper_sizes() -> None:
    assert valid_output_size(572, depth=4) == 388
    assert valid_input_size(388, depth=4) == 572
    assert valid_input_size(389, depth=4) == 572 + 16  # valid inputs are 2**depth apart


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_valid_input_size_is_smallest(depth: int) -> None:
    for min_output in (1, 5, 30):
        size = valid_input_size(min_output, depth)
        assert valid_output_size(size, depth) >= min_output
        for smaller in range(1, size):  # no smaller input is valid with a large enough output
            try:
                assert valid_output_size(smaller, depth) < min_output
            except ValueError:
                pass


def test_invalid_valid_sizes_raise_with_neighbours() -> None:
    with pytest.raises(ValueError, match=r"570 .*depth 4.*556 and 572"):
        valid_output_size(570, depth=4)
    with pytest.raises(ValueError, match=r"smallest valid size is 188"):
        valid_output_size(100, depth=4)
    with pytest.raises(ValueError, match="depth"):
        valid_output_size(572, depth=0)
    net = RonnebergerUNet(spatial_dims=2, depth=2, features=2, padding="valid")
    with pytest.raises(ValueError, match=r"45 .*44 and 48"):
        net(torch.zeros(1, 1, 44, 45))


@pytest.mark.parametrize("spatial_dims, depth", [(2, 2), (2, 3), (2, 4), (3, 2)])
def test_valid_padding_output_size(spatial_dims: int, depth: int) -> None:
    torch.manual_seed(0)
    first = valid_input_size(1, depth)
    sizes = [first, first + 2**depth, first][:spatial_dims]  # non-square: the next valid size on one axis
    net = RonnebergerUNet(spatial_dims=spatial_dims, depth=depth, features=2, padding="valid")
    out = _run(net, (1, 1, *sizes))
    assert out.shape == (1, 2, *[valid_output_size(s, depth) for s in sizes])
    assert all(o < s for o, s in zip(out.shape[2:], sizes, strict=True))


@pytest.mark.parametrize("padding, size", [("same", 32), ("valid", 44)])
@pytest.mark.parametrize("up_mode", ["transpose", "interpolate"])
def test_scripted_network_matches_eager(padding: str, size: int, up_mode: str) -> None:
    """torch.jit.script compiles the network (bundle ckpt_export without tracing) and keeps its output."""
    net = RonnebergerUNet(2, 2, 3, depth=2, features=4, norm="batch", padding=padding, up_mode=up_mode)
    net.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 2, size, size + 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_valid_padding_interpolate() -> None:
    torch.manual_seed(0)
    net = RonnebergerUNet(spatial_dims=2, depth=2, features=2, padding="valid", up_mode="interpolate")
    assert _run(net, (1, 1, 48, 48)).shape == (1, 2, valid_output_size(48, 2), valid_output_size(48, 2))


# ---------------------------------------------------------------- OverlapTileNet


def test_overlap_tile_needs_valid_padding() -> None:
    with pytest.raises(ValueError, match="valid"):
        OverlapTileNet(RonnebergerUNet(depth=2, features=2))


def test_overlap_tile_default_tile_size() -> None:
    net = OverlapTileNet(RonnebergerUNet(depth=4, features=2, padding="valid"))
    assert net.tile_output_size == 132  # 8 * 2**4 = 128, rounded up to a valid output size
    assert valid_input_size(net.tile_output_size, 4) == 316


@pytest.mark.parametrize("shape", [(37, 50), (5, 9), (61, 23), (1, 17)])
def test_overlap_tile_2d_same_size(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = OverlapTileNet(RonnebergerUNet(2, 2, 3, depth=2, features=2, padding="valid"), tile_output_size=16)
    out = _run(net, (2, 2, *shape))
    assert out.shape == (2, 3, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(13, 10, 7), (3, 5, 17)])
def test_overlap_tile_3d_same_size(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = OverlapTileNet(RonnebergerUNet(3, 1, 2, depth=2, features=2, padding="valid"), tile_output_size=8)
    assert _run(net, (1, 1, *shape)).shape == (1, 2, *shape)


def test_overlap_tile_single_tile_is_exact() -> None:
    torch.manual_seed(0)
    depth = 2
    unet = RonnebergerUNet(spatial_dims=2, depth=depth, features=2, padding="valid").eval()
    tile_output = valid_output_size(valid_input_size(24, depth), depth)  # > margin 20: reflect works
    margin = (valid_input_size(tile_output, depth) - tile_output) // 2
    net = OverlapTileNet(unet, tile_output_size=tile_output)

    x = torch.randn(1, 1, tile_output, tile_output)  # exactly one tile
    with torch.no_grad():
        expected = unet(F.pad(x, [margin] * 4, mode="reflect"))
        assert torch.allclose(net(x), expected)


def test_overlap_tile_stitches_tiles() -> None:
    torch.manual_seed(0)
    depth = 2
    unet = RonnebergerUNet(spatial_dims=2, depth=depth, features=2, padding="valid").eval()
    tile_output = valid_output_size(valid_input_size(24, depth), depth)
    tile_input = valid_input_size(tile_output, depth)
    margin = (tile_input - tile_output) // 2
    net = OverlapTileNet(unet, tile_output_size=tile_output)

    x = torch.randn(1, 1, tile_output, 2 * tile_output)  # two tiles side by side
    with torch.no_grad():
        padded = F.pad(x, [margin] * 4, mode="reflect")
        left = unet(padded[..., :tile_input])
        right = unet(padded[..., tile_output : tile_output + tile_input])
        assert torch.allclose(net(x), torch.cat([left, right], dim=-1))


def test_overlap_tile_backward() -> None:
    torch.manual_seed(0)
    net = OverlapTileNet(RonnebergerUNet(depth=2, features=2, padding="valid"), tile_output_size=8)
    net(torch.randn(1, 1, 11, 9)).sum().backward()
    assert net.network.final_conv.weight.grad is not None


# ---------------------------------------------------------------- registry


def test_list_networks_has_built_ins_sorted() -> None:
    assert list_networks() == BUILT_INS


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", BUILT_INS)
def test_create_every_network(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    depth = 4 if name == "basic_unet" else 3  # BasicUNet has a fixed depth of 4
    size = 2 ** (depth + 1)  # divisible by 2**depth, and more than one pixel at the bottleneck
    net = create_network(
        name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, features=8, depth=depth, dropout=0.1
    )
    assert _run(net, (1, 2, *[size] * spatial_dims)).shape == (1, 3, *[size] * spatial_dims)


def test_basic_unet_depth_must_be_4() -> None:
    with pytest.raises(ValueError, match="depth"):
        create_network("basic_unet", depth=3)


def test_create_ronneberger_valid_is_same_size() -> None:
    torch.manual_seed(0)
    net = create_network("ronneberger_unet", padding="valid", features=2, depth=2, tile_output_size=16)
    assert isinstance(net, OverlapTileNet) and isinstance(net.network, RonnebergerUNet)
    assert _run(net, (1, 1, 30, 21)).shape == (1, 2, 30, 21)
    assert isinstance(create_network("ronneberger_unet", features=2), RonnebergerUNet)


def test_unknown_network_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown network 'nope'.*ronneberger_unet"):
        create_network("nope")


def test_register_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # work on a copy of the registry: the global registry is restored after the test
    monkeypatch.setattr(registry_module, "_NETWORK_REGISTRY", dict(registry_module._NETWORK_REGISTRY))

    @register_network
    def tiny_net(in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, 1)

    register_network(name="tiny_alias")(tiny_net)
    assert "tiny_net" in list_networks() and "tiny_alias" in list_networks()
    assert isinstance(create_network("tiny_alias", out_channels=5), nn.Conv2d)
    with pytest.raises(ValueError, match="already registered"):
        register_network(tiny_net)
    with pytest.raises(ValueError, match="already registered"):
        register_network(name="ronneberger_unet")(tiny_net)


def test_registry_unchanged_after_register_test() -> None:
    assert list_networks() == BUILT_INS
