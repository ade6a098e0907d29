"""CPU bfloat16 autocast around an inferer: the convolutions run in bfloat16, outputs stay float32."""

from __future__ import annotations

import torch
from monai.inferers import SimpleInferer

from unet_monai.inference import BFloat16Inferer
from unet_monai.networks import create_network


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    network = create_network(
        "ronneberger_unet", spatial_dims=2, in_channels=1, out_channels=3, features=4, depth=2
    )
    return network.eval()


def _first_conv_dtype(network: torch.nn.Module, run) -> torch.dtype:
    """The dtype of the first convolution's output while ``run()`` executes."""
    seen: list[torch.dtype] = []
    conv = next(module for module in network.modules() if isinstance(module, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    run()
    handle.remove()
    return seen[0]


def test_bf16_inferer_runs_convolutions_in_bf16_and_returns_float32() -> None:
    network = _network()
    images = torch.randn(2, 1, 32, 32)
    inferer = BFloat16Inferer(SimpleInferer())
    with torch.no_grad():
        reference = SimpleInferer()(images, network)
        outputs = inferer(images, network)
        conv_dtype = _first_conv_dtype(network, lambda: inferer(images, network))
    assert conv_dtype == torch.bfloat16
    assert outputs.dtype == torch.float32
    assert outputs.shape == reference.shape
    # bfloat16 keeps 8 bits of mantissa: close to float32, not equal to it.
    assert not torch.equal(outputs, reference)
    torch.testing.assert_close(outputs, reference, atol=0.1, rtol=0.05)


def test_disabled_bf16_inferer_is_a_pass_through() -> None:
    network = _network()
    images = torch.randn(2, 1, 32, 32)
    inferer = BFloat16Inferer(SimpleInferer(), enabled=False)
    with torch.no_grad():
        conv_dtype = _first_conv_dtype(network, lambda: inferer(images, network))
        assert torch.equal(inferer(images, network), SimpleInferer()(images, network))
    assert conv_dtype == torch.float32


def test_bf16_training_step_gives_float32_gradients() -> None:
    network = _network().train()
    images = torch.randn(4, 1, 32, 32)
    labels = torch.randint(0, 3, (4, 32, 32))
    outputs = BFloat16Inferer(SimpleInferer())(images, network)
    torch.nn.functional.cross_entropy(outputs, labels).backward()
    gradients = [p.grad for p in network.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)
