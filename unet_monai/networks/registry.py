"""A timm-style registry of networks: ``register_network``, ``create_network``, ``list_networks``.

Every built-in factory takes the same common keyword arguments, so a bundle can switch network by changing
only its name::

    net = create_network("monai_unet", spatial_dims=2, in_channels=1, out_channels=2, features=32, depth=4)

- ``features``: base width, the channels of the first level; channels double at each level.
- ``depth``: number of down-sampling steps.
- ``norm``: "batch", "instance" or None (no normalisation), where the network supports it; each
  factory's default is its network's own default.
Any other keyword argument is passed through to the underlying network class.

The modular U-Net is registered as ``modular_<variant>`` for each of ``variants.VARIANTS``:
``modular_unet`` (its slot arguments ``conv_block``, ``skip_conn``, ``down_op``, ``up_op`` default to the
plain U-Net), ``modular_attention_unet``, ``modular_nas_unet`` and so on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from monai.networks.nets import AttentionUnet, BasicUNet, DynUNet, SegResNet, UNet

from unet_monai.networks.modular import ModularUNet
from unet_monai.networks.overlap_tile import OverlapTileNet
from unet_monai.networks.ronneberger import RonnebergerUNet
from unet_monai.networks.variants import VARIANTS, build_variant

__all__ = ["create_network", "list_networks", "register_network"]

NetworkFactory = Callable[..., nn.Module]

_NETWORK_REGISTRY: dict[str, NetworkFactory] = {}


def register_network(
    fn: NetworkFactory | None = None, *, name: str | None = None
) -> NetworkFactory | Callable[[NetworkFactory], NetworkFactory]:
    """Register a network factory under its function name, or under ``name``.

    Use as ``@register_network`` or ``@register_network(name="my_net")``.

    Args:
        fn: the factory function; None when called as ``register_network(name=...)``.
        name: registry name; defaults to ``fn.__name__``.

    Raises:
        ValueError: if the name is already registered.
    """

    def decorator(factory: NetworkFactory) -> NetworkFactory:
        key = name if name is not None else factory.__name__
        if key in _NETWORK_REGISTRY:
            raise ValueError(f"a network named {key!r} is already registered.")
        _NETWORK_REGISTRY[key] = factory
        return factory

    if fn is None:
        return decorator
    return decorator(fn)


def list_networks() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_NETWORK_REGISTRY)


def create_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered under ``name``.

    Args:
        name: registry name, one of :func:`list_networks`.
        kwargs: keyword arguments of the factory (the common ones and any passed through).

    Raises:
        ValueError: if ``name`` is not registered.
    """
    if name not in _NETWORK_REGISTRY:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(list_networks())}.")
    return _NETWORK_REGISTRY[name](**kwargs)


def _overlap_tile_if_valid(net: ModularUNet, tile_output_size: int | None) -> nn.Module:
    """``net`` wrapped in OverlapTileNet (same-size output) when it has valid padding, else ``net``."""
    if net.padding == "valid":
        return OverlapTileNet(net, tile_output_size=tile_output_size)
    return net


def _level_channels(features: int, depth: int) -> tuple[int, ...]:
    """Channels per level, ``features * 2**i`` for i in 0..depth."""
    return tuple(features * 2**i for i in range(depth + 1))


@register_network
def ronneberger_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    norm: str | None = None,
    tile_output_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Ronneberger U-Net; with ``padding="valid"`` it is wrapped in OverlapTileNet (same-size output).

    The wrapper lets the rest of the pipeline (training loss, SliceInferer) see an output of the input's size;
    ``tile_output_size`` is only used then. Other kwargs (up_mode, padding) go to ``RonnebergerUNet``.
    """
    net = RonnebergerUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        depth=depth,
        features=features,
        dropout=dropout,
        norm=norm,
        **kwargs,
    )
    return _overlap_tile_if_valid(net, tile_output_size)


@register_network
def monai_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    norm: str | None = "instance",
    num_res_units: int = 2,
    **kwargs,
) -> nn.Module:
    """MONAI ``UNet`` (residual units), channels ``features * 2**i`` for i in 0..depth, strides 2."""
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=_level_channels(features, depth),
        strides=(2,) * depth,
        num_res_units=num_res_units,
        dropout=dropout,
        norm=norm,
        **kwargs,
    )


@register_network
def attention_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    norm: str | None = "batch",
    **kwargs,
) -> nn.Module:
    """MONAI ``AttentionUnet``: channels ``features * 2**i`` for i in 0..depth, strides 2, batch-norm."""
    if norm != "batch":
        raise ValueError(f"attention_unet always uses batch norm, got norm={norm!r}.")
    return AttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=_level_channels(features, depth),
        strides=(2,) * depth,
        dropout=dropout,
        **kwargs,
    )


@register_network
def basic_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    norm: str | None = "instance",
    **kwargs,
) -> nn.Module:
    """MONAI ``BasicUNet`` (fixed depth 4), features ``(f, f, 2f, 4f, 8f, f)``."""
    if depth != 4:
        raise ValueError(f"basic_unet has a fixed depth of 4, got depth={depth}.")
    f = features
    return BasicUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=(f, f, 2 * f, 4 * f, 8 * f, f),
        dropout=dropout,
        norm=norm,
        **kwargs,
    )


@register_network
def dyn_unet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    norm: str = "instance",
    deep_supervision: bool = False,
    res_block: bool = False,
    **kwargs,
) -> nn.Module:
    """MONAI ``DynUNet`` (nnU-Net style): kernels 3, strides ``[1] + [2] * depth``, filters ``f * 2**i``."""
    if norm is None:
        raise ValueError("dyn_unet needs a norm ('batch' or 'instance'), got None.")
    return DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=[3] * (depth + 1),
        strides=[1] + [2] * depth,
        upsample_kernel_size=[2] * depth,
        filters=list(_level_channels(features, depth)),
        dropout=dropout if dropout > 0 else None,
        deep_supervision=deep_supervision,
        res_block=res_block,
        norm_name=norm,
        **kwargs,
    )


@register_network
def segresnet(
    spatial_dims: int = 2,
    in_channels: int = 1,
    out_channels: int = 2,
    features: int = 32,
    depth: int = 4,
    dropout: float = 0.0,
    norm: str | tuple = ("group", {"num_groups": 8}),
    blocks_down: tuple[int, ...] | None = None,
    blocks_up: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """MONAI ``SegResNet``: ``init_filters=features``, ``blocks_down`` (1, 2, 2, 4, ..) of length depth+1."""
    if norm is None:
        raise ValueError("segresnet needs a norm ('batch', 'instance' or 'group'), got None.")
    if blocks_down is None:
        # MONAI's default (1, 2, 2, 4), truncated or extended with 4s
        blocks_down = ((1, 2, 2) + (4,) * depth)[: depth + 1]
    if blocks_up is None:
        blocks_up = (1,) * (len(blocks_down) - 1)
    return SegResNet(
        spatial_dims=spatial_dims,
        init_filters=features,
        in_channels=in_channels,
        out_channels=out_channels,
        dropout_prob=dropout if dropout > 0 else None,
        blocks_down=blocks_down,
        blocks_up=blocks_up,
        norm=norm,
        **kwargs,
    )


def _modular_factory(variant: str) -> NetworkFactory:
    """The registry factory of the modular U-Net variant ``variant``."""
    defaults = VARIANTS[variant]

    def factory(
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: int = 32,
        depth: int = 4,
        dropout: float = 0.0,
        norm: str | None = defaults.norm,
        tile_output_size: int | None = None,
        **kwargs,
    ) -> nn.Module:
        net = build_variant(
            variant,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=features,
            depth=depth,
            dropout=dropout,
            norm=norm,
            **kwargs,
        )
        return _overlap_tile_if_valid(net, tile_output_size)

    factory.__name__ = factory.__qualname__ = f"modular_{variant}"
    factory.__doc__ = (
        f"Modular U-Net, variant {variant!r}: {defaults}. Slot arguments (conv_block, skip_conn, down_op, "
        "up_op) override the variant's; with padding='valid' the network is wrapped in OverlapTileNet."
    )
    return factory


for _variant in VARIANTS:
    register_network(_modular_factory(_variant))
