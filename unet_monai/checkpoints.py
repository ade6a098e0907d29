"""Network weights read with one-line errors: what a user's checkpoint file holds, and whether it fits.

``read_state_dict`` loads a checkpoint with ``torch.load(weights_only=True)`` (never running code in the
file) and turns every way it can fail into a ``CheckpointError`` naming the file: an empty, truncated,
garbage or text file, a pickle carrying code (refused, naming what it would call), a file that holds no
state_dict. ``check_fits`` compares a state_dict with a network and says what differs (missing and
unexpected keys, the first shape mismatch, e.g. another class count), instead of PyTorch's many lines.

A checkpoint also keeps the settings it was trained with: a bundle's ``training_settings``
(``TrainingSettings``) is saved next to the model as ``{"model": ..., "settings": ...}``, holding the
bundle's name and version and the values of the config ids that shape the network and its input
(``num_classes``, ``roi_size``, network arguments, ...). ``read_settings`` returns them, and
``unet_monai.bundle.load_workflow`` applies them at inference, so an override used in training need not
be repeated.
"""

from __future__ import annotations

import json
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

__all__ = [
    "SETTINGS_KEY",
    "CheckpointError",
    "TrainingSettings",
    "check_fits",
    "load_weights",
    "read_settings",
    "plain_setting",
    "read_state_dict",
]

SETTINGS_KEY = "settings"  # the checkpoint entry holding TrainingSettings.state_dict()

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


def plain_setting(value: Any, name: str) -> Any:
    """``value`` as JSON-safe Python (tuples and tensors as lists, paths and devices as text)."""

    def simple(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return item.tolist()
        if isinstance(item, (torch.device, Path)):
            return str(item)
        raise TypeError(f"a {type(item).__name__} is not a setting")

    try:
        return json.loads(json.dumps(value, default=simple))
    except (TypeError, ValueError) as error:
        raise ValueError(f"training_settings: {name}: cannot be saved with a checkpoint ({error})") from None


class TrainingSettings:
    """The settings a network was trained with, saved inside its checkpoint (ignite calls
    ``state_dict``): the bundle's name and version (from ``configs/metadata.json``) and ``values``, the
    config ids that shape the network and its input, as resolved for this training run (so overrides
    given on the command line are what is kept)."""

    def __init__(self, bundle_root: str | Path, values: Mapping[str, Any]) -> None:
        metadata_file = Path(bundle_root) / "configs" / "metadata.json"
        metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
        self.bundle = str(metadata.get("name", Path(bundle_root).name))
        self.version = str(metadata.get("version", ""))
        self.values = {str(name): plain_setting(value, str(name)) for name, value in values.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "version": self.version, "values": dict(self.values)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore: a resumed run saves the settings of its own configs."""


def read_settings(path: str | Path) -> dict[str, Any] | None:
    """The ``TrainingSettings`` saved in checkpoint ``path`` (``{"bundle", "version", "values"}``), or
    ``None`` for a checkpoint without them (a plain state_dict, weights from elsewhere)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # read_state_dict reports what is wrong with the file when it is loaded
        return None
    settings = state.get(SETTINGS_KEY) if isinstance(state, Mapping) else None
    if not isinstance(settings, Mapping) or not isinstance(settings.get("values"), Mapping):
        return None
    return dict(settings)
