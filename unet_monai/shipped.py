"""Trained weights shipped inside a bundle: compact files, their sha256 in ``large_files.yml``.

A bundle may carry the weights it was trained to under ``models/`` (at most 10 MB per bundle):

- ``fp16``: a plain state_dict in half precision. Any loader takes it (MONAI's ``CheckpointLoader``
  copies it into the float32 network), half the size of the float32 file.
- ``int8``: for networks whose half-precision weights would not fit (the hippocampus 2D ensemble: 9.1 M
  parameters). Every weight tensor of two or more dimensions is stored as int8 with one float32 scale
  per output channel (symmetric, ``round(w / scale)``, ``scale = max |w| / 127``); other tensors (biases,
  norms) in float16. ``unet_monai.checkpoints.read_state_dict`` recognises the format (the key
  ``PACKED_FORMAT``) and returns float32 tensors, so every loader of this project reads it.

``verify_listed`` compares a weights file with the sha256 that the bundle's ``large_files.yml`` lists
for it, so that inference says whether it runs the shipped weights (a file trained here replaces them,
which is allowed, and is said in a warning). ``python -m unet_monai.shipped pack ...`` writes a shipped
file from a training's checkpoints and prints its entry for ``large_files.yml``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from unet_monai.bundle_contract import read_large_files
from unet_monai.io import write_bytes

PACKED_FORMAT = "unet_monai_packed_weights"  # the key whose value names the packing (``int8-v1``)
INT8 = "int8-v1"
MAX_SHIPPED_BYTES = 10 * 1024 * 1024

logger = logging.getLogger(__name__)


def pack_int8(state: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """``state`` as int8 weights with a float32 scale per output channel (float16 for 0 / 1-D tensors)."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        value = value.detach().cpu()
        if not value.is_floating_point():
            tensors[name] = {"value": value}
        elif value.ndim < 2:
            tensors[name] = {"half": value.half()}
        else:
            flat = value.float().reshape(value.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            quantised = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
            tensors[name] = {"int8": quantised.reshape(value.shape), "scale": scale}
    return {PACKED_FORMAT: INT8, "tensors": tensors}


def is_packed(obj: object) -> bool:
    return isinstance(obj, Mapping) and PACKED_FORMAT in obj


def unpack(obj: Mapping[str, object], source: str | Path) -> dict[str, torch.Tensor]:
    """The float32 state_dict of a packed file (``ValueError`` naming ``source`` for an unknown packing)."""
    packing = obj[PACKED_FORMAT]
    if packing != INT8:
        raise ValueError(f"{source}: unknown packing of weights {packing!r}; this unet-monai reads {INT8!r}")
    state: dict[str, torch.Tensor] = {}
    for name, parts in obj["tensors"].items():  # type: ignore[union-attr]
        if "int8" in parts:
            quantised = parts["int8"]
            scale = parts["scale"].reshape(-1, *([1] * (quantised.ndim - 1)))
            state[name] = quantised.float() * scale
        elif "half" in parts:
            state[name] = parts["half"].float()
        else:
            state[name] = parts["value"]
    return state


def fp16_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its floating-point tensors in half precision."""
    return {
        k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()
    }


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listed_files(bundle_root: str | Path) -> dict[str, dict[str, str]]:
    """The entries of ``BUNDLE/large_files.yml`` by their path relative to the bundle ({} without one)."""
    listing = Path(bundle_root) / "large_files.yml"
    if not listing.is_file():
        return {}
    return {str(Path(e["path"])): e for e in read_large_files(listing) if e.get("path")}


def verify_listed(bundle_root: str | Path, path: str | Path) -> bool | None:
    """Whether ``path`` is the file that ``large_files.yml`` lists (sha256); ``None`` if it lists none.

    A file that differs is not an error: training writes its own weights there. It is logged, so a
    run says whether it uses the shipped weights.
    """
    root, path = Path(bundle_root).resolve(), Path(path).resolve()
    try:
        relative = str(path.relative_to(root))
    except ValueError:
        return None
    entry = listed_files(root).get(relative)
    if entry is None or not path.is_file() or entry.get("hash_type", "sha256") != "sha256":
        return None
    if sha256(path) == entry.get("hash_val"):
        logger.info("%s: the shipped weights (sha256 as in large_files.yml)", relative)
        return True
    logger.warning(
        "%s differs from the shipped weights listed in large_files.yml (sha256): using it as trained here",
        relative,
    )
    return False


def pack_files(
    checkpoints: Sequence[str | Path], output: str | Path, mode: str, prefixes: Sequence[str]
) -> int:
    """Write ``output``: the checkpoints' weights (each under its prefix, e.g. ``members.1.``) packed."""
    from unet_monai.checkpoints import read_state_dict

    state: dict[str, torch.Tensor] = {}
    for path, prefix in zip(checkpoints, prefixes, strict=True):
        state |= {prefix + key: value for key, value in read_state_dict(path).items()}
    packed: object = pack_int8(state) if mode == "int8" else fp16_state(state)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    data = buffer.getvalue()
    if len(data) > MAX_SHIPPED_BYTES:
        raise ValueError(
            f"{output}: {len(data) / 2**20:.1f} MiB, over the {MAX_SHIPPED_BYTES // 2**20} MiB limit"
        )
    write_bytes(output, data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m unet_monai.shipped", description="Pack trained checkpoints into a bundle's models/."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser(
        "pack", help="pack checkpoints (one per ensemble member, in order) into one file"
    )
    pack.add_argument("checkpoints", nargs="+", help="trained checkpoints (an ensemble: one per member)")
    pack.add_argument("--output", required=True, help="e.g. bundles/NAME/models/model.pt")
    pack.add_argument("--mode", choices=["fp16", "int8"], default="fp16")
    args = parser.parse_args(argv)
    prefixes = [""] if len(args.checkpoints) == 1 else [f"members.{k}." for k in range(len(args.checkpoints))]
    size = pack_files(args.checkpoints, args.output, args.mode, prefixes)
    print(f"{args.output}: {size} bytes ({args.mode})")
    print(f'large_files.yml entry:\n  - path: "models/{Path(args.output).name}"')
    print(f'    hash_val: "{sha256(args.output)}"\n    hash_type: "sha256"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
