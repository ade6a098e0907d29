"""Every bundle under bundles/ against this project's contract (bundles/CONTRACT.md: contract_problems) and
as the MONAI model zoo checks and runs it (zoo_problems, a zoo-style run from inside the bundle folder).

The checks every bundle shares live here, parametrized by folder name, so a new bundle is covered by
adding its data to DATASETS; tests/test_bundle_<name>.py keep what is specific to one bundle.

The zoo's own ``ci/verify_bundle.py`` runs too when a model-zoo checkout is named by ``MODEL_ZOO_DIR``
(skipped otherwise); ``zoo_problems`` checks the same things, so nothing here depends on it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HIPPOCAMPUS, REPO_ROOT, SHARED_DATA, require
from tools.check_json import main as check_json
from unet_monai.bundle_contract import (
    NO_SHIPPED_WEIGHTS,
    contract_problems,
    read_large_files,
    zoo_json,
    zoo_problems,
)

BUNDLES = sorted(path for path in (REPO_ROOT / "bundles").iterdir() if (path / "configs").is_dir())
BRATS = SHARED_DATA / "brats2015-subset"
EM = SHARED_DATA / "isbi2012-em"
LGG = SHARED_DATA / "lgg-kaggle3m-subset" / "kaggle_3m"
BRATS_PATIENTS = ["brats_2013_pat0001_1", "brats_2013_pat0002_1"]


def _copies(request: pytest.FixtureRequest, folder: Path, pattern: str) -> Path:
    """A folder holding copies of what in ``folder`` matches ``pattern`` (files or folders): a small input."""
    copies = request.getfixturevalue("tmp_path_factory").mktemp(folder.name)
    for path in sorted(folder.glob(pattern)):
        if path.is_dir():
            shutil.copytree(path, copies / path.name)
        else:
            shutil.copy(path, copies / path.name)
    return copies


def _synthetic(request: pytest.FixtureRequest) -> tuple[Path, Path, dict]:
    root = request.getfixturevalue("synthetic_dataset")
    return root, root / "imagesTr", {}


def _hipmri(request: pytest.FixtureRequest) -> tuple[Path, Path, dict]:
    from tools.hipmri_fixture import build_hipmri_fixture
    from unet_monai.data.hipmri_layout import image_dir

    root = request.getfixturevalue("tmp_path_factory").mktemp("hipmri")
    build_hipmri_fixture(require(HIPPOCAMPUS), root, num_cases=(2, 1, 1), seed=1)
    return root, image_dir(root, "test"), {}


def _lv(request: pytest.FixtureRequest) -> tuple[Path, Path, dict]:
    from tools.lv_fixture import build_lv_fixture

    root = request.getfixturevalue("tmp_path_factory").mktemp("lv_fixture")
    build_lv_fixture(root, require(BRATS), num_train=10, num_test=4)
    return root, root / "test", {}


# Per bundle: its training dataset_dir, its inference dataset_dir (a folder of inputs) and overrides that
# keep training / evaluation small. A bundle added under bundles/ needs an entry here.
DATASETS = {
    "brats_unet_variants": lambda request: (
        require(BRATS),
        _copies(request, require(BRATS) / "test", BRATS_PATIENTS[0]),
        {"patients": BRATS_PATIENTS, "num_folds": 2, "param_budget": 30_000, "roi_size": [48, 48]},
    ),
    "em_cells_unet2d": lambda request: (require(EM), _copies(request, require(EM) / "test", "[01].png"), {}),
    "hipmri_unet2d": _hipmri,
    "hippocampus_unet2d": _synthetic,
    "hippocampus_unet3d": _synthetic,
    "lgg_unet2d": lambda request: (require(LGG), require(LGG), {}),
    "lv_dicom_unet2d": _lv,
}
_DATA: dict[str, tuple[Path, Path, dict]] = {}


def bundle_data(name: str, request: pytest.FixtureRequest) -> tuple[Path, Path, dict]:
    """``DATASETS[name]``, built once per session."""
    assert name in DATASETS, f"{name}: add its data to DATASETS"
    if name not in _DATA:
        _DATA[name] = DATASETS[name](request)
    return _DATA[name]


ZOO_RUN = ["--bundle_root", ".", "--meta_file", "configs/metadata.json", "--config_file"]
ZOO_RUN += ["configs/inference.json", "--logging_file", "configs/logging.conf"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_bundle_passes_the_model_zoo_checks(bundle: Path) -> None:
    assert zoo_problems(bundle) == []


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_bundle_keeps_the_contract(bundle: Path) -> None:
    """bundles/CONTRACT.md: the same ids for the same settings, handlers by id, saved training settings,
    overlays and shared blocks."""
    assert contract_problems(bundle) == []


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_monai_finds_every_workflow_property(
    bundle: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """MONAI's check_properties on each workflow, initialised on real (or fixture) data."""
    from unet_monai.bundle import load_workflow

    train_data, inference_data, overrides = bundle_data(bundle.name, request)
    for name in ("train", "evaluate", "inference"):
        data, extra = (inference_data, {}) if name == "inference" else (train_data, overrides)
        workflow = load_workflow(bundle, name, bundle_root=str(tmp_path), dataset_dir=str(data), **extra)
        workflow.initialize()
        assert workflow.check_properties() == [], name
        if name == "train":  # what model.pt will keep: plain values of the ids the config names
            saved = workflow.parser.get_parsed_content("training_settings").state_dict()
            assert set(saved["values"]) == set(workflow.parser.get("training_settings#values"))
            assert json.loads(json.dumps(saved)) == saved
            saver = workflow.parser.get_parsed_content("validate#best_saver")
            assert saver.save_dict["settings"] is workflow.parser.get_parsed_content("training_settings")


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_a_missing_or_empty_dataset_is_one_line_naming_the_key(bundle: Path, tmp_path: Path) -> None:
    """Inference never runs on nothing: the datalist of a missing or empty dataset_dir ends the run with
    one line (a SystemExit, so ``python -m monai.bundle run`` prints it without a traceback)."""
    from unet_monai.bundle import load_workflow

    (tmp_path / "empty").mkdir()
    for dataset, message in (
        (tmp_path / "empty", f"dataset_dir: {tmp_path / 'empty'} holds no images"),
        (tmp_path / "missing", f"dataset_dir: {tmp_path / 'missing'}: no such folder"),
    ):
        parser = load_workflow(bundle, "inference", dataset_dir=str(dataset)).parser
        with pytest.raises(SystemExit) as stop:
            parser.get_parsed_content("datalist")
        assert str(stop.value.code).startswith(message), stop.value.code
        assert "\n" not in str(stop.value.code)


def test_bundles_without_weights_are_real_bundles() -> None:
    assert NO_SHIPPED_WEIGHTS <= {path.name for path in BUNDLES}


def _edit(bundle: Path, name: str, change) -> None:  # noqa: ANN001
    path = bundle / "configs" / name
    config = json.loads(path.read_text())
    changed = change(config)  # a new config, or the old one changed in place
    path.write_text(zoo_json(json.dumps(changed if isinstance(changed, dict) else config)))


def _drop(key: str):  # noqa: ANN202
    return lambda config: {k: v for k, v in config.items() if k != key}


def _unlisted_best_saver(config: dict) -> None:
    config["validate"]["handlers"] = [
        config["validate"]["best_saver"] if h == "@validate#best_saver" else h
        for h in config["validate"]["handlers"]
    ]


def _positional_best_saver(config: dict) -> None:
    for handler in config["train"]["handlers"]:
        if handler["_target_"].endswith("ResumeCheckpoint"):
            handler["best_saver"] = "@validate#handlers#2"


def _resume_without_settings(config: dict) -> None:
    for handler in config["train"]["handlers"]:
        if handler["_target_"].endswith("ResumeCheckpoint"):
            del handler["save_dict"]["settings"]


# One defect each in a copy of lv_dicom_unet2d (it has a recipe overlay); the problem line that names it.
DEFECTS = {
    "missing id": ("train.json", _drop("max_epochs"), "configs/train.json: no 'max_epochs' (the contract)"),
    "no ckpt_path": ("inference.json", _drop("ckpt_path"), "configs/inference.json: no 'ckpt_path'"),
    "old id": (
        "evaluate.json",
        lambda c: {("eval_ckpt" if k == "ckpt_path" else k): v for k, v in c.items()},
        "configs/evaluate.json: 'eval_ckpt' is the old id of 'ckpt_path'",
    ),
    "handler by position": (
        "train.json",
        _positional_best_saver,
        "configs/train.json: '@validate#handlers#2' references a handler by list position",
    ),
    "best saver not listed by id": (
        "train.json",
        _unlisted_best_saver,
        "configs/train.json: validate#handlers does not list '@validate#best_saver'",
    ),
    "train handler by reference": (
        "train.json",
        lambda c: c["train"]["handlers"].append("@validate#best_saver"),
        "configs/train.json: train#handlers#8 is '@validate#best_saver', not a component",
    ),
    "epochs not from max_epochs": (
        "train.json",
        lambda c: c["train"]["trainer"].update(max_epochs=100),
        "configs/train.json: train#trainer#max_epochs is not '@max_epochs'",
    ),
    "saver without settings": (
        "train.json",
        lambda c: c["validate"]["best_saver"]["save_dict"].pop("settings"),
        "configs/train.json: validate#best_saver#save_dict: no 'settings': '@training_settings'",
    ),
    "resume without settings": (
        "train.json",
        _resume_without_settings,
        "configs/train.json: train#handlers#7#save_dict: no 'settings': '@training_settings'",
    ),
    "setting only in train.json": (
        "train.json",
        lambda c: c["training_settings"]["values"].update(ce_weight="@ce_weight"),
        "configs/train.json: training_settings#values#ce_weight: configs/inference.json has no 'ce_weight'",
    ),
    "settings without num_classes": (
        "train.json",
        lambda c: c["training_settings"]["values"].pop("num_classes"),
        "configs/train.json: training_settings#values: no 'num_classes'",
    ),
    "recipe switch": (
        "train.json",
        lambda c: c.update(recipe="ours"),
        "configs/train.json: 'recipe' switches",
    ),
    "overlay with a new id": (
        "improved.json",
        lambda c: c.update(learning_rat=0.1),
        "configs/improved.json: 'learning_rat' is no id of configs/train.json",
    ),
    "classes unlike metadata": (
        "inference.json",
        lambda c: c.update(num_classes=3),
        "configs/inference.json: num_classes 3 is not train.json's 2",
    ),
    "network unlike training": (
        "inference.json",
        lambda c: c["network_def"].update(depth=3),
        "configs/inference.json: network_def is not train.json's",
    ),
    "setting with two defaults": (
        "inference.json",
        lambda c: c.update(features=16),
        "configs/inference.json: features 16 is not train.json's 32",
    ),
    "metadata channels unlike the network": (
        "metadata.json",
        lambda c: c["network_data_format"]["inputs"]["image"].update(num_channels=3),
        "metadata.json: image num_channels 3 is not network_def's in_channels 1",
    ),
    "metadata output unlike the network": (
        "metadata.json",
        lambda c: c["network_data_format"]["outputs"]["pred"].update(num_channels=2),
        "metadata.json: pred num_channels 2 is not network_def's out_channels 1",
    ),
    "inference without the deploy ids": (
        "inference.json",
        _drop("postprocessing"),
        "configs/inference.json: no 'postprocessing'",
    ),
    "shared block changed": (
        "multi_gpu_train.json",
        lambda c: c["finalize"].pop(),
        "configs/multi_gpu_train.json: 'finalize' differs from hippocampus_unet3d's",
    ),
    "shared value changed": (
        "inference.json",
        lambda c: c.update(amp=False),
        "configs/inference.json: amp False differs from hippocampus_unet3d's '$torch.cuda.is_available()'",
    ),
    "run not shared": (
        "train.json",
        lambda c: c["run"].insert(0, "$print('start')"),
        "configs/train.json: run does not start with '$@train#trainer.run()'",
    ),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_contract_check_names_the_file_and_id(defect: str, tmp_path: Path) -> None:
    bundle = tmp_path / "lv_dicom_unet2d"
    shutil.copytree(REPO_ROOT / "bundles" / "lv_dicom_unet2d", bundle)
    assert contract_problems(bundle) == []
    name, change, expected = DEFECTS[defect]
    _edit(bundle, name, change)
    problems = contract_problems(bundle)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_contract_file_checks_name_the_file(tmp_path: Path) -> None:
    bundle = tmp_path / "lv_dicom_unet2d"
    shutil.copytree(REPO_ROOT / "bundles" / "lv_dicom_unet2d", bundle)
    (bundle / "configs" / "improved.json").write_text("{")
    (bundle / "configs" / "logging.conf").write_text("[loggers]\nkeys=root\n")
    readme = bundle / "docs" / "README.md"
    (bundle / "configs" / "fast.json").write_text('{"max_epochs": 2}')
    (bundle / "configs" / "evaluate.json").unlink()
    problems = contract_problems(bundle)
    assert problems[0].startswith("configs/improved.json: not JSON")
    assert "configs/evaluate.json: missing (the contract's configs)" in problems
    assert "configs/fast.json: docs/README.md does not document this recipe overlay" in problems
    assert "configs/logging.conf: differs from hippocampus_unet3d's (the shared copy)" in problems
    assert "configs/improved.json" in readme.read_text()


def test_zoo_json_is_the_pretty_format_json_hook() -> None:
    text = '{"b": 1, "a": {"x": [1, 2]}, "c": "4 \\u00b1 1", "d": "\u00b1"}'
    assert zoo_json(text) == (
        '{\n    "b": 1,\n    "a": {\n        "x": [\n            1,\n            2\n        ]\n    },\n'
        '    "c": "4 \\u00b1 1",\n    "d": "\\u00b1"\n}\n'
    )


def test_check_json_lists_then_fixes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "inference.json"
    config.write_text('{"a": [1, 2]}')
    assert check_json([str(config)]) == 1
    assert f"{config}: not in the model zoo's JSON format" in capsys.readouterr().out
    assert check_json(["--fix", str(config)]) == 0
    assert check_json([str(config)]) == 0
    assert config.read_text() == '{\n    "a": [\n        1,\n        2\n    ]\n}\n'


def test_problems_are_found_one_line_each(tmp_path: Path) -> None:
    bundle = tmp_path / "hippocampus_unet3d"
    shutil.copytree(REPO_ROOT / "bundles" / "hippocampus_unet3d", bundle)
    configs = bundle / "configs"
    meta = json.loads((configs / "metadata.json").read_text())
    del meta["required_packages_version"]["unet-monai"]
    meta["version"] = "9.9.9"
    meta["optional_packages_version"] = {"highdicom": "0.28.2"}
    (configs / "metadata.json").write_text(zoo_json(json.dumps(meta)))
    inference = json.loads((configs / "inference.json").read_text())
    inference["dataset_dir"] = "../shared/data/msd-hippocampus/imagesTr"
    (configs / "inference.json").write_text(json.dumps(inference))  # not the zoo's format
    (bundle / "docs" / "data_license.txt").unlink()
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    (bundle / "large_files.yml").write_text(
        'large_files:\n  - path: "models/model.pt"\n    url: "https://example.org/model.pt"\n'
        '    hash_val: "0000"\n    hash_type: "sha256"\n'
    )
    problems = zoo_problems(bundle)
    sha256 = hashlib.sha256(b"weights").hexdigest()
    assert problems == [
        "no docs/data_license.txt",
        "configs/inference.json: not in the zoo's JSON format (make format)",
        "metadata.json: version 9.9.9 has no changelog entry",
        "metadata.json: 'optional_packages_version' would replace required_packages_version",
        "metadata.json: required_packages_version lacks unet-monai (the configs need it)",
        "configs/inference.json: dataset_dir default '../shared/data/msd-hippocampus/imagesTr' "
        "points outside the bundle's world (../ or temp)",
        f"large_files.yml entry 1: models/model.pt has sha256 {sha256}, not 0000",
    ]


def test_a_bundle_listed_without_weights_that_has_some_is_named(tmp_path: Path) -> None:
    bundle = tmp_path / "lgg_unet2d"
    shutil.copytree(REPO_ROOT / "bundles" / "lgg_unet2d", bundle)
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    assert zoo_problems(bundle) == ["lgg_unet2d ships models/model.pt: take it out of NO_SHIPPED_WEIGHTS"]


def test_large_files_reader_takes_the_zoo_layout(tmp_path: Path) -> None:
    path = tmp_path / "large_files.yml"
    path.write_text(
        "# comment\nlarge_files:\n- path: 'models/model.pt'\n  url: \"https://x/model.pt\"  # inline\n"
        "  hash_val: abc\n  hash_type: sha256\n"
    )
    assert read_large_files(path) == [
        {"path": "models/model.pt", "url": "https://x/model.pt", "hash_val": "abc", "hash_type": "sha256"}
    ]
    path.write_text("large_files:\n  models/model.pt\n")
    with pytest.raises(ValueError, match="large_files.yml:2: expected"):
        read_large_files(path)


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_model_zoo_verify_bundle(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zoo's own ci/verify_bundle.py (``-m min``: files, large files, version and changelog, and the
    metadata schema when ``MODEL_ZOO_SCHEMA`` names a local copy of it; the CI downloads it)."""
    zoo = os.environ.get("MODEL_ZOO_DIR")
    if not zoo or not (Path(zoo) / "ci" / "verify_bundle.py").is_file():
        pytest.skip("MODEL_ZOO_DIR does not name a Project-MONAI/model-zoo checkout (ci/verify_bundle.py)")
    pytest.importorskip("yaml", reason="the zoo reads large_files.yml through MONAI's ConfigParser (PyYAML)")
    monkeypatch.syspath_prepend(str(Path(zoo) / "ci"))
    verify_bundle = importlib.import_module("verify_bundle")
    models = tmp_path / "models"
    shutil.copytree(bundle, models / bundle.name)
    (models / "model_info.json").write_text("{}")
    if bundle.name in NO_SHIPPED_WEIGHTS:  # the zoo's own escape for bundles without models/model.pt
        monkeypatch.setattr(verify_bundle, "exclude_verify_preferred_files_list", [bundle.name])
    schema = os.environ.get("MODEL_ZOO_SCHEMA")
    if schema:
        (models / bundle.name / "eval").mkdir()
        shutil.copy(schema, models / bundle.name / "eval" / "schema.json")
    else:
        monkeypatch.setattr(verify_bundle, "verify_metadata_format", lambda path: None)
    verify_bundle.verify(bundle.name, str(models), mode="min")


def _zoo_run(bundle: Path, dataset: Path, output: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", *ZOO_RUN, "--dataset_dir", str(dataset)]
    command += ["--output_dir", str(output)]
    return subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("bundle", BUNDLES, ids=[path.name for path in BUNDLES])
def test_zoo_style_run_from_inside_the_bundle_folder(
    bundle: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """As a zoo user runs it: from the bundle folder, only the dataset given (its inference inputs from
    DATASETS); weights here are random (as the zoo's CI makes them), saved from the bundle's own network.
    A missing dataset_dir ends the run with status 1 and one line naming the key."""
    import torch
    from monai.bundle import ConfigParser

    _, inputs, _ = bundle_data(bundle.name, request)
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("models"))
    parser = ConfigParser()
    parser.read_config(str(copy / "configs" / "inference.json"))
    parser.update({"bundle_root": str(copy), "device": "$torch.device('cpu')"})
    (copy / "models").mkdir()
    torch.save(parser.get_parsed_content("network").state_dict(), copy / "models" / "model.pt")

    done = _zoo_run(copy, inputs, tmp_path / "masks")
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(path.is_file() for path in (tmp_path / "masks").rglob("*")), f"{bundle.name} wrote no masks"

    done = _zoo_run(copy, tmp_path / "missing", tmp_path / "masks_none")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"dataset_dir: {tmp_path / 'missing'}: no such folder"
