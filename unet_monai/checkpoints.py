"""Network weights read with one-line errors: what a user's checkpoint file holds, and whether it fits.

``read_state_dict`` loads a checkpoint with ``torch.load(weights_only=True)`` (never running code in the
file) and turns every way it can fail into a ``CheckpointError`` naming the file: an empty, truncated,
garbage or text file, a pickle carrying code (refused, naming what it would call), a file that holds no
state_dict. ``check_fits`` compares a state_dict with a network and says what differs (missing and
unexpected keys, the first shape mismatch, e.g. another class count), instead of PyTorch's many lines.
"""

from __future__ import annotations

import pickle
import pickletools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from unet_monai.io import error_line
from unet_monai.shipped import is_packed, unpack

__all__ = ["CheckpointError", "check_fits", "load_weights", "read_state_dict"]

_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line, ``<file>: <problem>``."""


def pickle_globals(path: Path) -> list[str]:
    """The Python objects a plain pickle file would import when loaded (read without running it)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with path.open("rb") as stream:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in _STRING_OPS:
                    strings.append(str(argument))
                elif opcode.name in ("GLOBAL", "INST"):
                    names.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a plain pickle (a torch zip file, garbage): nothing to report
        pass
    return names


def _refused_global(path: Path, error: BaseException) -> str | None:
    """What a refused checkpoint would have called, if the refusal was about code rather than damage."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return found.group(1)
    names = [name for name in pickle_globals(path) if not name.startswith(("torch.", "collections."))]
    return names[0] if names else None


def read_state_dict(path: str | Path, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The network weights in ``path``: a state_dict, or the ``model`` entry of a training checkpoint
    (MONAI / ignite's ``{"model": ..., "optimizer": ...}``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: anything else that keeps the file from being a network's weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a PyTorch checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        called = _refused_global(path, error)
        if called is not None:
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects, not only weights (loading it would call "
                f"{called}); it was not run. Only use checkpoints you trust"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({error_line(error, with_type=True)})"
        ) from None
    except Exception as error:  # truncated zip, text, garbage: torch raises many kinds
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({error_line(error, with_type=True)})"
        ) from None
    if is_packed(state):  # compact shipped weights (unet_monai.shipped): back to float32
        try:
            state = unpack(state, path)
        except (KeyError, TypeError, AttributeError, RuntimeError) as error:
            raise CheckpointError(
                f"{path}: damaged packed weights ({error_line(error, with_type=True)})"
            ) from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__
        raise CheckpointError(f"{path}: holds a {kind}, not a network's weights (a state_dict of tensors)")
    return dict(state)


def check_fits(network: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Raise a ``CheckpointError`` saying what differs when ``state`` does not load into ``network``."""
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} (e.g. {missing[0]})")
    if unexpected:
        count = len(unexpected)
        parts.append(f"{count} unexpected key{'s' if count > 1 else ''} (e.g. {unexpected[0]})")
    if shapes:
        key = shapes[0]
        more = f" ({len(shapes)} tensors differ in shape)" if len(shapes) > 1 else ""
        parts.append(
            f"shape of {key} is {list(state[key].shape)} in the file, {list(expected[key].shape)} in the "
            f"network{more}"
        )
    raise CheckpointError(f"{path}: checkpoint does not fit the network: {', '.join(parts)}")


def load_weights(network: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``network`` (on the network's device), with the one-line errors above."""
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    state = read_state_dict(path, map_location=device)
    check_fits(network, state, path)
    network.load_state_dict(state)
