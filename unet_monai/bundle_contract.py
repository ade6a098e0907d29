"""MONAI model-zoo conformance of a bundle folder: ``zoo_problems(bundle_dir)`` lists what the zoo's CI
(``ci/verify_bundle.py``, its metadata schema, ``large_files.yml`` download, requirement install) and its
documented conventions (CONTRIBUTING: config keys, README template, ``docs/data_license.txt``; the
``pretty-format-json`` hook) would reject, one line each.

Only the standard library is imported, so the check runs before (and without) torch and MONAI.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

# The zoo's `verify_bundle_directory`: necessary files, then preferred ones (weights come from
# large_files.yml). The rest are its documented conventions and this project's.
NECESSARY_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json")
CONVENTION_FILES = ("configs/logging.conf", "docs/README.md", "docs/data_license.txt", "large_files.yml")
WEIGHTS = "models/model.pt"
# Bundles that ship no weights yet: the zoo's `exclude_verify_preferred_files_list`, on our side.
# A bundle leaves this list in the commit that adds its models/model.pt or large_files.yml entry
# (the contract test fails for a listed bundle that has weights).
NO_SHIPPED_WEIGHTS = frozenset(
    {
        "brats_unet_variants",
        "em_cells_unet2d",
        "hipmri_unet2d",
        "lgg_unet2d",
        "lv_dicom_unet2d",
    }
)
HASH_TYPES = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
# The metadata schema's required keys (meta_schema_20240725.json) and the zoo's preferred ones.
SCHEMA_KEYS = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
PREFERRED_KEYS = (
    "schema",
    "name",
    "data_source",
    "data_type",
    "intended_use",
    "references",
)
INPUT_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range")
OUTPUT_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
# CONTRIBUTING's "Preferred Files and Keys" (ids as `a#b` paths).
INFERENCE_IDS = ("bundle_root", "device", "dataset_dir", "network_def", "inferer", "output_dir")
TRAIN_IDS = (
    "bundle_root",
    "device",
    "dataset_dir",
    "output_dir",
    "val_interval",
    "train#trainer",
    "train#trainer#max_epochs",
    "train#dataset",
    "train#dataset#data",
    "train#handlers",
    "validate#evaluator",
    "validate#handlers",
    "validate#dataset",
    "validate#dataset#data",
)
# The README template's sections that are not marked optional (docs/readme_template.md).
README_SECTIONS = ("Authors", "Tags", "Model Description", "Data", "Performance", "System Configuration")
# Import names whose distribution name differs; versions of these come from their own keys.
DISTRIBUTIONS = {
    "ignite": "pytorch-ignite",
    "unet_monai": "unet-monai",
    "PIL": "pillow",
    "skimage": "scikit-image",
}
VERSION_KEYS = {"torch": "pytorch_version", "numpy": "numpy_version", "monai": "monai_version"}
# Readers a data_type needs (MONAI's LoadImage picks them by file type).
READERS = {
    "nifti": ("nibabel",),
    "nibabel": ("nibabel",),
    "png": ("pillow",),
    "tiff": ("pillow",),
    "dicom": ("pydicom",),
}
VERSION = re.compile(r"^\d+\.\d+\.\d+$")
PACKAGE_VERSION = re.compile(r"^\d+(\.\d+)*$")


def zoo_json(text: str) -> str:
    """``text`` as the zoo's ``pretty-format-json --autofix --no-sort-keys --indent=4`` hook writes it:
    keys in their order, 4-space indent, non-ASCII escaped, one trailing newline."""
    return json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"


def json_needs_format(path: Path) -> bool:
    """Whether the zoo's JSON hook would rewrite ``path`` (a file that is not JSON counts as needing it)."""
    text = path.read_text(encoding="utf-8")
    try:
        return zoo_json(text) != text
    except json.JSONDecodeError:
        return True


def read_large_files(path: Path) -> list[dict[str, str]]:
    """The entries of a ``large_files.yml`` in the zoo's layout (``large_files:`` then ``- key: value``
    items, or ``large_files: []``); comments allowed. ``ValueError`` naming the line otherwise.

    A small reader of that one layout, so that checking a bundle needs no YAML package."""
    entries: list[dict[str, str]] = []
    seen_top = False
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if not seen_top:
            if line.replace(" ", "") not in ("large_files:", "large_files:[]"):
                raise ValueError(f"{path}:{number}: expected 'large_files:' first, got {raw.strip()!r}")
            seen_top = True
            continue
        item = line.strip()
        if item.startswith("- "):
            entries.append({})
            item = item[2:].strip()
        key, sep, value = item.partition(":")
        if not sep or not entries or not re.fullmatch(r"[a-z_]+", key):
            raise ValueError(f"{path}:{number}: expected '- key: value' or 'key: value', got {raw.strip()!r}")
        entries[-1][key] = value.strip().strip("\"'")
    if not seen_top:
        raise ValueError(f"{path}: no 'large_files:' list")
    return entries


def _config_ids(config: dict[str, Any], path: str) -> bool:
    node: Any = config
    for part in path.split("#"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _imported_packages(configs: list[dict[str, Any]]) -> set[str]:
    """Top-level modules the configs import: ``$import x``, ``$from x import``, dotted ``_target_``."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and "." in target and not target.startswith(("$", "@", "%")):
                found.add(target.split(".")[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            match = re.match(r"^\$\s*(?:import|from)\s+([A-Za-z_][\w]*)", node)
            if match:
                found.add(match.group(1))

    for config in configs:
        walk(config)
    return found


def required_distributions(configs: list[dict[str, Any]], data_type: str) -> set[str]:
    """Distributions ``required_packages_version`` must list for these configs and data type (the
    standard library, MONAI, torch and numpy excluded: they have their own metadata keys)."""
    names = {
        DISTRIBUTIONS.get(module, module)
        for module in _imported_packages(configs)
        if module not in sys.stdlib_module_names and module not in VERSION_KEYS
    }
    text = json.dumps(configs)
    if "TensorBoardStatsHandler" in text or "TensorBoardImageHandler" in text:
        names.add("tensorboard")
    names.update(READERS.get(data_type.lower(), ()))
    return names


def _metadata_problems(meta: dict[str, Any], configs: list[dict[str, Any]]) -> list[str]:
    problems = [
        f"metadata.json: no '{key}' (the zoo's metadata schema requires it)"
        for key in SCHEMA_KEYS
        if key not in meta
    ]
    problems += [
        f"metadata.json: no '{key}' (a key zoo bundles have)" for key in PREFERRED_KEYS if key not in meta
    ]
    version = meta.get("version")
    if "version" in meta and not (isinstance(version, str) and VERSION.match(version)):
        problems.append(f"metadata.json: version {version!r} is not X.Y.Z")
    changelog = meta.get("changelog")
    if isinstance(changelog, dict) and version not in changelog:
        problems.append(f"metadata.json: version {version} has no changelog entry")
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        if key in meta and not PACKAGE_VERSION.match(str(meta[key])):
            problems.append(f"metadata.json: {key} {meta[key]!r} is not a plain version (pip installs it)")
    for key in (
        "authors",
        "copyright",
        "task",
        "description",
        "data_source",
        "data_type",
        "intended_use",
        "name",
    ):
        if key in meta and not (isinstance(meta[key], str) and meta[key].strip()):
            problems.append(f"metadata.json: '{key}' is empty")
    if "references" in meta and not (isinstance(meta["references"], list) and meta["references"]):
        problems.append("metadata.json: 'references' is not a non-empty list")
    if "optional_packages_version" in meta:
        # MONAI >= 1.4 reads it as a deprecated alias that replaces required_packages_version.
        problems.append("metadata.json: 'optional_packages_version' would replace required_packages_version")
    required = meta.get("required_packages_version")
    if "required_packages_version" in meta and not isinstance(required, dict):
        problems.append("metadata.json: 'required_packages_version' is not an object")
    if isinstance(required, dict):
        for name, pin in required.items():
            if not PACKAGE_VERSION.match(str(pin)):
                problems.append(f"metadata.json: {name} {pin!r} is not a plain version (pip installs it)")
        for name in sorted(required_distributions(configs, str(meta.get("data_type", "")))):
            if name not in required:
                problems.append(
                    f"metadata.json: required_packages_version lacks {name} (the configs need it)"
                )
        ours = importlib.metadata.version("unet-monai")
        if "unet-monai" in required and required["unet-monai"] != ours:
            problems.append(
                f"metadata.json: unet-monai {required['unet-monai']} is not this package's {ours}"
            )
    formats = meta.get("network_data_format")
    if isinstance(formats, dict):
        for side, keys in (("inputs", INPUT_KEYS), ("outputs", OUTPUT_KEYS)):
            items = formats.get(side)
            if not isinstance(items, dict) or not items:
                problems.append(f"metadata.json: network_data_format has no {side}")
                continue
            for name, item in items.items():
                missing = [key for key in keys if not isinstance(item, dict) or key not in item]
                if missing:
                    problems.append(
                        f"metadata.json: network_data_format {side} {name} lacks {', '.join(missing)}"
                    )
    return problems


def _large_files_problems(bundle: Path) -> list[str]:
    path = bundle / "large_files.yml"
    if not path.is_file():
        return []
    try:
        entries = read_large_files(path)
    except ValueError as error:
        return [str(error)]
    problems: list[str] = []
    for number, entry in enumerate(entries, start=1):
        where = f"large_files.yml entry {number}"
        for key in ("path", "url"):  # the zoo's download_large_files passes both to download_url
            if not entry.get(key):
                problems.append(f"{where}: no '{key}'")
        hash_type = entry.get("hash_type", "")
        if hash_type and hash_type.lower() not in HASH_TYPES:
            problems.append(f"{where}: hash_type {hash_type!r} is not one of {', '.join(HASH_TYPES)}")
        file = bundle / entry.get("path", "")
        if entry.get("path") and not file.resolve().is_relative_to(bundle.resolve()):
            problems.append(f"{where}: path {entry['path']} is outside the bundle")
        elif (
            entry.get("path") and file.is_file() and entry.get("hash_val") and hash_type.lower() in HASH_TYPES
        ):
            digest = HASH_TYPES[hash_type.lower()](file.read_bytes()).hexdigest()
            if digest != entry["hash_val"]:
                problems.append(f"{where}: {entry['path']} has {hash_type} {digest}, not {entry['hash_val']}")
    listed = {entry.get("path", "").removeprefix("./") for entry in entries}
    has_weights = (bundle / WEIGHTS).is_file() or WEIGHTS in listed
    if not has_weights and bundle.name not in NO_SHIPPED_WEIGHTS:
        problems.append(f"no {WEIGHTS} and no large_files.yml entry for it (a file the zoo's CI requires)")
    if has_weights and bundle.name in NO_SHIPPED_WEIGHTS:
        problems.append(f"{bundle.name} ships {WEIGHTS}: take it out of NO_SHIPPED_WEIGHTS")
    return problems


def _readme_problems(readme: Path) -> list[str]:
    headings = {
        re.sub(r"[*_`]|\(optional\)", "", line.lstrip("#")).strip().lower()
        for line in readme.read_text(encoding="utf-8").splitlines()
        if re.match(r"^#{1,3} ", line)
    }
    return [
        f"docs/README.md: no '{section}' section (the zoo's README template)"
        for section in README_SECTIONS
        if section.lower() not in headings
    ]


def _default_path_problems(name: str, config: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    temp = tempfile.gettempdir()
    for key in ("bundle_root", "dataset_dir"):
        value = config.get(key)
        if not isinstance(value, str) or value.startswith("$"):
            continue
        if value.startswith(("..", "/tmp", temp)) or "/shared/" in value:
            problems.append(
                f"{name}: {key} default {value!r} points outside the bundle's world (../ or temp)"
            )
        if re.match(r"^(/home/|/Users/|~)", value):
            problems.append(f"{name}: {key} default {value!r} holds a personal path")
    return problems


def zoo_problems(bundle_dir: str | Path) -> list[str]:
    """What the model zoo's CI and conventions reject in the bundle at ``bundle_dir``, one line each
    (empty when it conforms). Checks: files, weights or their ``large_files.yml`` entry (hash checked
    when the file is present), metadata keys and versions, complete ``required_packages_version``,
    config ids, JSON formatting, README template sections, and config defaults."""
    bundle = Path(bundle_dir)
    problems = [
        f"no {name}" for name in (*NECESSARY_FILES, *CONVENTION_FILES) if not (bundle / name).is_file()
    ]
    configs: dict[str, dict[str, Any]] = {}
    for path in sorted((bundle / "configs").glob("*.json")):
        if json_needs_format(path):
            problems.append(f"configs/{path.name}: not in the zoo's JSON format (make format)")
        try:
            configs[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            problems.append(f"configs/{path.name}: not JSON ({error})")
    meta = configs.pop("metadata.json", None)
    if meta is not None:
        problems += _metadata_problems(meta, list(configs.values()))
    for name, ids in (("inference.json", INFERENCE_IDS), ("train.json", TRAIN_IDS)):
        if name in configs:
            problems += [
                f"configs/{name}: no '{i}' (the zoo's key convention)"
                for i in ids
                if not _config_ids(configs[name], i)
            ]
    for name, config in configs.items():
        problems += _default_path_problems(f"configs/{name}", config)
    problems += _large_files_problems(bundle)
    if (bundle / "docs" / "README.md").is_file():
        problems += _readme_problems(bundle / "docs" / "README.md")
    return problems


# --- This project's bundle contract (bundles/CONTRACT.md): the same setting has the same id everywhere.
# Ids every train.json and inference.json defines at the top level.
CONTRACT_IDS = (
    "bundle_root",
    "dataset_dir",
    "output_dir",
    "device",
    "amp",
    "network_def",
    "network",
    "num_classes",
    "roi_size",
    "datalist",
)
CONTRACT_TRAIN_IDS = (
    "max_epochs",
    "val_interval",
    "learning_rate",
    "batch_size",
    "seed",
    "ckpt_dir",
    "resume",
    "resume_checkpoint",
    "training_settings",
)
# ckpt_path, and what MONAI Deploy's bundle inference operator reads (with metadata's image / pred).
CONTRACT_INFERENCE_IDS = ("ckpt_path", "preprocessing", "inferer", "postprocessing")
CONTRACT_EVALUATE_IDS = ("ckpt_path", "output_dir")
# Old names of contract ids: a bundle using one has not been brought under the contract.
RENAMED_IDS = {
    "epochs": "max_epochs",
    "patch_size": "roi_size",
    "crop_size": "roi_size",
    "eval_ckpt": "ckpt_path",
    "eval_dir": "output_dir",
}
STANDARD_CONFIGS = ("metadata.json", "train.json", "inference.json", "evaluate.json", "multi_gpu_train.json")
SETTINGS_TARGET = "unet_monai.checkpoints.TrainingSettings"
# The reference copy of the shared blocks; ids of multi_gpu_train.json a bundle may define its own way.
REFERENCE_BUNDLE = "hippocampus_unet3d"
OWN_MULTI_GPU_IDS = frozenset({"train#sampler"})
# Top-level ids whose value is the same in every bundle (compared with the reference bundle's).
SHARED_VALUES = {
    "train.json": ("device", "amp", "ckpt_dir", "resume"),
    "inference.json": ("device", "amp", "ckpt_path"),
    "evaluate.json": ("ckpt_path",),
}
SHARED_FIRST = {
    ("train.json", "initialize"): "$monai.utils.set_determinism(seed=@seed)",
    ("train.json", "run"): "$@train#trainer.run()",
    ("inference.json", "run"): "$@evaluator.run()",
}
POSITIONAL_HANDLER = re.compile(r"#handlers#\d")


def _get(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("#"):
        node = node[part] if isinstance(node, dict) else node[int(part)]
    return node


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (str(key), *_strings(value))]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def _save_dicts(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """``(id, save_dict)`` of every component in ``node`` that has a ``save_dict``."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        if "save_dict" in node:
            found.append((where, node["save_dict"]))
        for key, value in node.items():
            found += _save_dicts(value, f"{where}#{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _save_dicts(value, f"{where}#{index}")
    return found


def _settings_problems(train: dict[str, Any], inference: dict[str, Any]) -> list[str]:
    name = "configs/train.json"
    settings = train.get("training_settings")
    if not isinstance(settings, dict):
        return []  # reported as a missing id
    problems: list[str] = []
    if settings.get("_target_") != SETTINGS_TARGET:
        problems.append(f"{name}: training_settings: _target_ is not {SETTINGS_TARGET}")
    if settings.get("bundle_root") != "@bundle_root":
        problems.append(f"{name}: training_settings: bundle_root is not @bundle_root")
    values = settings.get("values")
    if not isinstance(values, dict):
        return [*problems, f"{name}: training_settings: no 'values' object"]
    required = ["num_classes"]
    if not str(train.get("roi_size", "")).startswith("$"):  # a derived roi_size is saved through its source
        required.append("roi_size")
    problems += [f"{name}: training_settings#values: no '{key}'" for key in required if key not in values]
    for key, value in values.items():
        if value != f"@{key}":
            problems.append(f"{name}: training_settings#values#{key}: is {value!r}, not '@{key}'")
        for other, config in (("train.json", train), ("inference.json", inference)):
            if not _config_ids(config, key):
                problems.append(
                    f"{name}: training_settings#values#{key}: configs/{other} has no '{key}' "
                    "(only ids of both configs are saved)"
                )
        if (
            _config_ids(train, key)
            and _config_ids(inference, key)
            and _get(train, key) != _get(inference, key)
        ):
            problems.append(
                f"configs/inference.json: {key} {_get(inference, key)!r} is not train.json's "
                f"{_get(train, key)!r} (a setting has one default)"
            )
    savers = _save_dicts(train)
    if not savers:
        problems.append(f"{name}: no checkpoint saver (no save_dict)")
    for where, save_dict in savers:
        if not isinstance(save_dict, dict) or save_dict.get("settings") != "@training_settings":
            problems.append(f"{name}: {where}#save_dict: no 'settings': '@training_settings'")
    return problems


def _handler_problems(train: dict[str, Any]) -> list[str]:
    name = "configs/train.json"
    problems: list[str] = []
    saver = train.get("validate", {}).get("best_saver") if isinstance(train.get("validate"), dict) else None
    if not (isinstance(saver, dict) and "CheckpointSaver" in str(saver.get("_target_", ""))):
        problems.append(f"{name}: no 'validate#best_saver' (the best-model CheckpointSaver, defined by id)")
    elif "@validate#best_saver" not in _strings(train.get("validate", {}).get("handlers", [])):
        problems.append(f"{name}: validate#handlers does not list '@validate#best_saver'")
    handlers = train.get("train", {}).get("handlers") if isinstance(train.get("train"), dict) else None
    for index, handler in enumerate(handlers if isinstance(handlers, list) else []):
        if not isinstance(handler, dict):
            problems.append(
                f"{name}: train#handlers#{index} is {handler!r}, not a component (MONAI's check_properties "
                "reads each one's _target_)"
            )
    try:
        if _get(train, "train#trainer#max_epochs") != "@max_epochs":
            problems.append(f"{name}: train#trainer#max_epochs is not '@max_epochs'")
    except (KeyError, IndexError, ValueError, TypeError):
        pass  # reported by zoo_problems
    return problems


def _shared_problems(bundle: Path, configs: dict[str, dict[str, Any]], reference: Path) -> list[str]:
    problems: list[str] = []
    for (name, key), first in SHARED_FIRST.items():
        value = configs.get(name, {}).get(key)
        if name in configs and not (isinstance(value, list) and value and value[0] == first):
            problems.append(f"configs/{name}: {key} does not start with {first!r} (the shared block)")
    if bundle.resolve() == reference.resolve() or not (reference / "configs").is_dir():
        return problems
    for name, keys in SHARED_VALUES.items():
        path = reference / "configs" / name
        if name not in configs or not path.is_file():
            continue
        shared = json.loads(path.read_text(encoding="utf-8"))
        problems += [
            f"configs/{name}: {key} {configs[name][key]!r} differs from {reference.name}'s {shared[key]!r}"
            for key in keys
            if key in configs[name] and key in shared and configs[name][key] != shared[key]
        ]
    mine, theirs = bundle / "configs" / "logging.conf", reference / "configs" / "logging.conf"
    if mine.is_file() and theirs.is_file() and mine.read_text() != theirs.read_text():
        problems.append(f"configs/logging.conf: differs from {reference.name}'s (the shared copy)")
    if "multi_gpu_train.json" in configs:
        shared = json.loads((reference / "configs" / "multi_gpu_train.json").read_text(encoding="utf-8"))
        own = configs["multi_gpu_train.json"]
        for key, value in shared.items():
            if key in OWN_MULTI_GPU_IDS:
                continue
            if key not in own:
                problems.append(f"configs/multi_gpu_train.json: no '{key}' (the shared block has it)")
            elif own[key] != value:
                problems.append(f"configs/multi_gpu_train.json: '{key}' differs from {reference.name}'s")
        problems += [
            f"configs/multi_gpu_train.json: '{key}' is not in the shared block"
            for key in own
            if key not in shared and key not in OWN_MULTI_GPU_IDS
        ]
    return problems


def _overlay_problems(bundle: Path, name: str, overlay: Any, train: dict[str, Any]) -> list[str]:
    if not isinstance(overlay, dict):
        return [f"configs/{name}: a recipe overlay is a JSON object of config ids"]
    problems = [
        f"configs/{name}: '{key}' is no id of configs/train.json (an overlay only changes existing ids)"
        for key in overlay
        if not _config_ids(train, key)
    ]
    readme = bundle / "docs" / "README.md"
    if readme.is_file() and f"configs/{name}" not in readme.read_text(encoding="utf-8"):
        problems.append(f"configs/{name}: docs/README.md does not document this recipe overlay")
    return problems


def contract_problems(bundle_dir: str | Path, reference: str | Path | None = None) -> list[str]:
    """What breaks this project's bundle contract (``bundles/CONTRACT.md``) in the bundle at
    ``bundle_dir``, one line each naming the file and the id (empty when it conforms): the contract's
    ids per config, no old names, ``ckpt_path`` wherever weights are loaded, handlers referenced by id
    (never ``#handlers#<digit>``), ``training_settings`` saved by every checkpoint saver, recipe
    overlays that parse and only change existing ids, and the shared blocks identical to the
    reference bundle's copy (``reference``, default ``bundles/hippocampus_unet3d``)."""
    bundle = Path(bundle_dir)
    reference = (
        Path(reference)
        if reference is not None
        else Path(__file__).resolve().parents[1] / "bundles" / REFERENCE_BUNDLE
    )
    configs: dict[str, Any] = {}
    problems: list[str] = []
    for path in sorted((bundle / "configs").glob("*.json")):
        try:
            configs[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            problems.append(f"configs/{path.name}: not JSON ({error})")
    for name in ("train.json", "inference.json", "evaluate.json"):
        if name not in configs and not any(p.startswith(f"configs/{name}:") for p in problems):
            problems.append(f"configs/{name}: missing (the contract's configs)")
    train = configs.get("train.json", {})
    inference = configs.get("inference.json", {})
    evaluate = configs.get("evaluate.json", {})
    wanted = (
        ("train.json", (*CONTRACT_IDS, *CONTRACT_TRAIN_IDS)),
        ("inference.json", (*CONTRACT_IDS, *CONTRACT_INFERENCE_IDS)),
        ("evaluate.json", CONTRACT_EVALUATE_IDS),
    )
    for name, ids in wanted:
        if isinstance(configs.get(name), dict):
            problems += [
                f"configs/{name}: no '{key}' (the contract)" for key in ids if key not in configs[name]
            ]
    for name, config in configs.items():
        if name == "metadata.json" or not isinstance(config, dict):
            continue
        problems += [
            f"configs/{name}: '{old}' is the old id of '{new}'"
            for old, new in RENAMED_IDS.items()
            if old in config
        ]
        problems += [
            f"configs/{name}: '{key}' switches recipes by id (use a configs/<recipe>.json overlay)"
            for key in ("recipe", "recipes")
            if key in config
        ]
        for text in sorted({s for s in _strings(config) if POSITIONAL_HANDLER.search(s)}):
            problems.append(f"configs/{name}: {text!r} references a handler by list position (use an id)")
    for name, config in configs.items():
        if name in STANDARD_CONFIGS or not name.endswith(".json"):
            continue
        problems += _overlay_problems(bundle, name, config, train)
    if (
        "ckpt_path" in inference
        and "CheckpointLoader" in json.dumps(inference)
        and "@ckpt_path" not in json.dumps(inference)
    ):
        problems.append("configs/inference.json: the checkpoint loader does not load '@ckpt_path'")
    if "ckpt_path" in evaluate and "@ckpt_path" not in json.dumps(evaluate):
        problems.append("configs/evaluate.json: nothing loads '@ckpt_path'")
    if train and inference:
        problems += _handler_problems(train)
        problems += _settings_problems(train, inference)
        if (
            "network_def" in train
            and "network_def" in inference
            and train["network_def"] != inference["network_def"]
        ):
            problems.append("configs/inference.json: network_def is not train.json's (one network)")
        classes = {train.get("num_classes"), inference.get("num_classes")}
        if len(classes) > 1:
            problems.append(
                f"configs/inference.json: num_classes {inference.get('num_classes')} is not "
                f"train.json's {train.get('num_classes')}"
            )
    meta = configs.get("metadata.json")
    formats = meta.get("network_data_format") if isinstance(meta, dict) else None
    network = inference.get("network_def") if isinstance(inference.get("network_def"), dict) else {}
    for side, key, argument in (("inputs", "image", "in_channels"), ("outputs", "pred", "out_channels")):
        if not isinstance(formats, dict):
            break
        item = formats.get(side, {}).get(key) if isinstance(formats.get(side), dict) else None
        if not isinstance(item, dict):
            problems.append(
                f"metadata.json: network_data_format {side} has no '{key}' (MONAI Deploy's names)"
            )
            continue
        channels = network.get(argument)
        channels = inference.get("num_classes") if channels == "@num_classes" else channels
        if isinstance(channels, int) and item.get("num_channels") != channels:
            problems.append(
                f"metadata.json: {key} num_channels {item.get('num_channels')} is not network_def's "
                f"{argument} {channels}"
            )
    if isinstance(meta, dict) and isinstance(inference.get("num_classes"), int):
        try:
            channels = int(meta["network_data_format"]["outputs"]["pred"]["num_channels"])
        except (KeyError, TypeError, ValueError):
            channels = None
        if channels is not None and inference["num_classes"] != max(2, channels):
            problems.append(
                f"configs/inference.json: num_classes {inference['num_classes']} does not match "
                f"metadata.json's {channels} output channel(s) (classes incl. background: {max(2, channels)})"
            )
    problems += _shared_problems(bundle, configs, reference)
    return problems
