"""Run a bundle's configs (train / evaluate / inference) the way ``python -m monai.bundle run`` does.

The CLI and the pipelines go through here so that they run exactly the JSON a researcher runs
with MONAI's own command, with ``bundle_root`` set to the bundle's folder wherever it lives.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import pydoc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigComponent, ConfigParser, ConfigWorkflow
from monai.bundle.utils import ID_SEP_KEY

from unet_monai.checkpoints import plain_setting, read_settings
from unet_monai.checks import check_datalist, check_positive_int, check_writable_folder

WORKFLOW_TYPES = {"train": "train", "evaluate": "train", "inference": "infer"}
# This repository's own bundles; others get a warning that their configs run code.
OWN_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
# Config ids checked before a workflow runs: the datalists its datasets read, and its output folders.
DATASET_IDS = {
    "train": ("datalist", "train#dataset#data", "validate#dataset#data"),
    "evaluate": ("datalist", "validate#dataset#data"),
    "inference": ("datalist", "dataset#data"),
}
OUTPUT_IDS = {"train": ("output_dir", "ckpt_dir"), "evaluate": ("output_dir",), "inference": ("output_dir",)}
EPOCHS_ID = "train#trainer#max_epochs"

logger = logging.getLogger(__name__)
_warned_bundles: set[Path] = set()


def warn_untrusted(bundle_dir: Path) -> None:
    """Warn, once per bundle folder, that a bundle from outside this repository runs its configs' code.

    Bundle configs hold Python expressions (``$...``) and ``_target_`` imports that run when the bundle
    is parsed, like a script. This repository's own bundles are trusted: warning on every test and CLI
    run of them would only teach users to ignore the warning.
    """
    bundle_dir = bundle_dir.resolve()
    if bundle_dir.is_relative_to(OWN_BUNDLES) or bundle_dir in _warned_bundles:
        return
    _warned_bundles.add(bundle_dir)
    logger.warning(
        "%s: bundle configs can execute arbitrary code ($-expressions, _target_ imports); "
        "only run bundles you trust",
        bundle_dir,
    )


class OverrideError(ValueError, KeyError):
    """An override naming no config id, or of the wrong kind: ``<id>: <problem>`` (one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def config_files(bundle_dir: str | Path, name: str) -> list[str]:
    """The config files for a workflow: ``evaluate`` is layered on ``train`` as in MONAI's model zoo.

    A folder without ``configs/`` is no bundle (``FileNotFoundError``, one line); a config that is not
    valid JSON is a ``ValueError`` naming the file, line and column."""
    configs = Path(bundle_dir) / "configs"
    names = ["train", "evaluate"] if name == "evaluate" else [name]
    files = [configs / f"{n}.json" for n in names]
    if not configs.is_dir():
        raise FileNotFoundError(f"{bundle_dir}: no such bundle (no configs/{files[-1].name})")
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: bundle {bundle_dir} has no {file.name}")
        try:
            json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{file}: malformed JSON (line {error.lineno}, column {error.colno}: {error.msg})"
            ) from None
        except UnicodeDecodeError as error:
            raise ValueError(f"{file}: not a text file ({error.reason})") from None
    return [str(f) for f in files]


_SPECIAL_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")


def _accepts_keyword(component: Any, name: str) -> bool:
    """Whether a new key ``name`` in a config component (a dict with ``_target_``) is an argument its
    target takes. Unknown targets (expressions, failed imports) are given the benefit of the doubt:
    instantiating them reports a wrong argument itself."""
    if not isinstance(component, dict) or "_target_" not in component:
        return False
    if name in _SPECIAL_KEYS:
        return True
    try:
        target = pydoc.locate(ConfigComponent(config=component).resolve_module_name())
        parameters = inspect.signature(target).parameters.values()  # type: ignore[arg-type]
    except Exception:
        return True
    return any(p.kind is p.VAR_KEYWORD for p in parameters) or any(p.name == name for p in parameters)


def _children(parser: ConfigParser, parent: list[str]) -> list[str]:
    """The ids one level below ``parent`` (top-level ids for ``[]``), ``#``-separated."""
    container = parser.get(ID_SEP_KEY.join(parent)) if parent else parser.get()
    keys: list[str] = []
    if isinstance(container, dict):
        keys = [str(k) for k in container if k not in _SPECIAL_KEYS]
    elif isinstance(container, list):
        keys = [str(i) for i in range(len(container))]
    return ["#".join([*parent, k]) for k in keys]


def check_override(parser: ConfigParser, key: str, value: Any, source: str) -> None:
    """An override must name an existing config id, checked along its path (``a#b#c``: ``a``, ``a#b``,
    then ``a#b#c``); the one exception is a new argument of a component (``network_def#dropout``) that
    its ``_target_`` takes. A number in the config takes a number (or a ``$``/``@`` expression).

    Raises:
        OverrideError: naming the key and the closest existing ids (difflib).
    """
    parts = key.replace(ID_SEP_KEY, "#").split("#")
    for depth in range(1, len(parts) + 1):
        prefix = parts[:depth]
        if ID_SEP_KEY.join(prefix) in parser:
            continue
        parent = prefix[:-1]
        if (
            depth == len(parts)
            and parent
            and _accepts_keyword(parser.get(ID_SEP_KEY.join(parent)), parts[-1])
        ):
            return
        candidates = _children(parser, parent)
        close = difflib.get_close_matches("#".join(prefix), candidates, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"{len(candidates)} ids there"
        if not close and candidates:
            hint = f"existing ids there: {', '.join(sorted(candidates)[:8])}" + (
                ", ..." if len(candidates) > 8 else ""
            )
        raise OverrideError(f"{key}: no such config id in {source}; {hint}")
    current = parser.get(ID_SEP_KEY.join(parts))
    number = isinstance(current, (int, float)) and not isinstance(current, bool)
    expression = isinstance(value, str) and value.startswith(("$", "@", "%"))
    if number and not expression and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise OverrideError(f"{key}: expected a number (the config has {current!r}), got {value!r}")


def check_overrides(bundle_dir: str | Path, name: str, overrides: Mapping[str, Any]) -> None:
    """``check_override`` for every override of a workflow's configs (see ``load_workflow``)."""
    files = config_files(bundle_dir, name)
    parser = ConfigParser()
    parser.read_config(files)
    source = f"{Path(bundle_dir).name} ({', '.join('configs/' + Path(f).name for f in files)})"
    for key, value in overrides.items():
        check_override(parser, key, value, source)


def trained_settings(bundle_dir: str | Path, name: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The settings saved in the checkpoint an inference / evaluation loads (``ckpt_path``) that differ
    from the config's values and that ``overrides`` does not set: overrides used in training, applied
    again so they need not be repeated (``unet_monai.checkpoints.TrainingSettings``). Ids the config
    does not have are left out; a checkpoint without settings adds nothing."""
    if name not in ("inference", "evaluate"):
        return {}
    parser = ConfigParser()
    parser.read_config(config_files(bundle_dir, name))
    parser.update(dict(overrides))
    if "ckpt_path" not in parser:
        return {}
    try:
        settings = read_settings(parser.get_parsed_content("ckpt_path"))
    except Exception:  # a ckpt_path that does not resolve is reported when the workflow runs
        return {}
    if settings is None:
        return {}
    added: dict[str, Any] = {}
    for key, saved in settings["values"].items():
        if key in overrides or key not in parser:
            continue
        try:
            current = parser.get_parsed_content(key)
        except Exception:
            continue
        try:
            same = plain_setting(current, key) == saved
        except ValueError:  # not a plain value: it cannot equal a saved one
            same = False
        if not same:
            added[key] = saved
    if added:
        listed = ", ".join(f"{key}={json.dumps(value)}" for key, value in added.items())
        logger.info("applying the settings the checkpoint was trained with: %s", listed)
    return added


def load_workflow(bundle_dir: str | Path, name: str, **overrides: Any) -> ConfigWorkflow:
    """Parse a bundle workflow with overrides (``"train#trainer#max_epochs": 2``, ``dataset_dir`` ...).

    Every override must name a config id of the workflow's configs (``check_overrides``): a typo is an
    ``OverrideError`` naming it and the closest ids, not a value silently ignored. An inference or
    evaluation also takes the settings its checkpoint was trained with (``trained_settings``) unless
    an override sets them.

    Args:
        bundle_dir: the bundle folder (holding ``configs/``).
        name: "train", "evaluate" or "inference".
        overrides: config ids and the values that replace theirs; ``bundle_root`` defaults to ``bundle_dir``.
    """
    if name not in WORKFLOW_TYPES:
        raise ValueError(f"workflow must be one of {sorted(WORKFLOW_TYPES)}, got {name!r}")
    bundle_dir = Path(bundle_dir).resolve()
    warn_untrusted(bundle_dir)
    overrides.setdefault("bundle_root", str(bundle_dir))
    check_overrides(bundle_dir, name, overrides)
    overrides = trained_settings(bundle_dir, name, overrides) | overrides
    workflow = ConfigWorkflow(
        config_file=config_files(bundle_dir, name),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=WORKFLOW_TYPES[name],
        **overrides,
    )
    return workflow


def check_workflow(workflow: ConfigWorkflow, name: str) -> None:
    """Before a workflow runs: the files its datasets name exist and are readable (one error listing
    every one that does not), training has a positive number of epochs, and its output folders can be
    written. Each problem is a ``BadInputError`` naming the config id."""
    parser = workflow.parser
    for key in DATASET_IDS[name]:
        items = parser.get_parsed_content(key) if key in parser else None
        if isinstance(items, (list, tuple)):
            check_datalist(items, source=key)
    if name == "train" and EPOCHS_ID in parser:
        check_positive_int(parser.get_parsed_content(EPOCHS_ID), EPOCHS_ID)
    for key in OUTPUT_IDS[name]:
        if key in parser:
            check_writable_folder(parser.get_parsed_content(key), key)


def run_workflow(bundle_dir: str | Path, name: str, **overrides: Any) -> ConfigWorkflow:
    """Initialise, check (``check_workflow``), run and finalise a bundle workflow; returns it."""
    workflow = load_workflow(bundle_dir, name, **overrides)
    workflow.initialize()
    check_workflow(workflow, name)
    workflow.run()
    workflow.finalize()
    return workflow


def image_files(folder: str | Path, patterns: Sequence[str]) -> list[str]:
    """The files directly in ``folder`` matching any of ``patterns`` (``*.nii.gz``), sorted, absolute.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = {path.resolve() for pattern in patterns for path in folder.glob(pattern) if path.is_file()}
    return [str(path) for path in sorted(found)]


def dataset_items(key: str, source: str | Path, find: Callable[..., list], **kwargs: Any) -> list:
    """``find(source, **kwargs)``: the images an inference config reads from its ``dataset_dir``.

    A config's datalist goes through here so that ``python -m monai.bundle run`` never ends with
    status 0 having done nothing: a folder that does not exist, holds no images, or holds a bad one
    ends the run with one line naming the config key (``dataset_dir: DIR holds no images``), as a
    ``SystemExit`` (MONAI's config parser turns any other exception into a chained traceback).
    """
    if not Path(source).exists():
        raise SystemExit(f"{key}: {source}: no such folder")
    try:
        items = find(source, **kwargs)
    except FileNotFoundError as error:
        raise SystemExit(f"{key}: {source} holds no images ({error})") from None
    except ValueError as error:
        raise SystemExit(f"{key}: {error}") from None
    if not items:
        raise SystemExit(f"{key}: {source} holds no images")
    return items


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value read as JSON when it is JSON, else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not of the form key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
