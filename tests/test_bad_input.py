"""The bad-input corpus: damaged or unsuitable files, data and settings, made by the tests from real files.

Every case runs through the real CLI (``unet_monai.cli.main`` in-process) and must stop with one line
``error: <file or config key>: <problem>``, no traceback, and no mask or checkpoint written. Images come
from MSD hippocampus, the DICOM cases from the real MR series (whose header holds a patient name and ID
that must never reach the output).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from tests.conftest import AXIAL_ONLY, HIPPOCAMPUS, REPO_ROOT, SHARED_DATA, require, run_cli
from unet_monai.bundle import load_workflow

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUNDLES = REPO_ROOT / "bundles"
CASES = ("001", "003", "004", "006")  # real hippocampus cases of the small training sets
DICOM_SERIES = SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume"
# The 2D bundle as the tests run it: one axial network of 8 features (random weights are enough to fail).
SMALL_2D = {**AXIAL_ONLY, "network_def#features": 8}
SMALL_3D = {"network_def#features": 4}
TRAIN_2D = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(AXIAL_ONLY["members"])]
TRAIN_2D += ["--set", "num_samples=2", "--set", "val_interval=1"]


@pytest.fixture(autouse=True)
def _live_log_streams() -> None:
    """A bundle's logging.conf gives the root logger a handler on the sys.stdout of that moment, which
    under pytest is an earlier test's capture, closed by now: point such handlers at the current one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stdout  # setStream would flush the closed one


def _set_args(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def assert_one_error(code: int, err: str, where: str | Path, problem: str) -> str:
    """Non-zero exit; stderr holds one ``error: <where>: ...`` line matching ``problem``, no traceback."""
    assert code != 0
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    # "<where>: <problem>"; datalists.py words its missing-file error "<dataset.json> names N file(s) ...".
    assert re.match(rf"error: {re.escape(str(where))}(: | names )", errors[0]), errors[0]
    assert re.search(problem, errors[0]), errors[0]
    return errors[0]


def written_files(folder: Path) -> list[str]:
    """What a failed run left in ``folder``, apart from the batch report listing the failure."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != "inference_report.json")


# --- the corpus -----------------------------------------------------------------------------------


def _hippocampus_volume() -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(require(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz"))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _with(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    copy = array.copy()
    copy[index] = value
    return copy


IMAGE_CASES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "4d": lambda a: np.stack([a, a], axis=-1),
    "2d": lambda a: a[:, :, a.shape[2] // 2],
    "nan": lambda a: _with(a, (10, 20, 10), np.nan),
    "inf": lambda a: _with(a, (10, 20, 10), np.inf),
    "constant": lambda a: np.full_like(a, 7.0),
}


@pytest.fixture(scope="module")
def image_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bad image files made from a real hippocampus volume, and the volume itself (``good``)."""
    folder = tmp_path_factory.mktemp("image_corpus")
    source = require(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz")
    volume, affine = _hippocampus_volume()
    files = {"good": folder / "good.nii.gz"}
    shutil.copy(source, files["good"])
    raw = source.read_bytes()
    files["truncated"] = folder / "truncated.nii.gz"
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["garbage"] = folder / "garbage.nii.gz"
    files["garbage"].write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    for name, make in IMAGE_CASES.items():
        files[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(make(volume), affine), files[name])
    return files


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random weights of each volume bundle's small network: inference runs, the masks are noise."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    paths = {}
    for bundle, overrides in (("hippocampus_unet2d", SMALL_2D), ("hippocampus_unet3d", SMALL_3D)):
        network = load_workflow(BUNDLES / bundle, "inference", **overrides).parser.get_parsed_content(
            "network_def"
        )
        paths[bundle] = folder / f"{bundle}.pt"
        torch.save(network.state_dict(), paths[bundle])
    return paths


def infer_args(bundle: str, source: Path, output: Path, checkpoints: dict[str, Path]) -> list[str]:
    small = SMALL_2D if bundle.endswith("2d") else SMALL_3D
    args = ["infer", "--bundle", str(BUNDLES / bundle), "--input", str(source), "--output", str(output)]
    return args + ["--checkpoint", str(checkpoints[bundle]), *_set_args(small)]


IMAGE_ERRORS = [
    ("truncated", "hippocampus_unet3d", r"truncated or corrupt NIfTI \(EOFError"),
    ("garbage", "hippocampus_unet2d", r"truncated or corrupt NIfTI \("),
    ("4d", "hippocampus_unet3d", r"2 channels .*this bundle takes 1-channel images"),
    ("4d", "hippocampus_unet2d", r"2 channels .*this bundle takes 1-channel images"),
    ("2d", "hippocampus_unet3d", r"2D image .*this bundle takes 3D volumes"),
    ("2d", "hippocampus_unet2d", r"2D image .*this bundle takes 3D volumes"),
    ("nan", "hippocampus_unet2d", r"1 NaN and 0 infinite voxel\(s\)"),
    ("inf", "hippocampus_unet3d", r"0 NaN and 1 infinite voxel\(s\)"),
    ("constant", "hippocampus_unet2d", r"constant image \(every voxel 7\)"),
]


@pytest.mark.parametrize(
    ("case", "bundle", "problem"), IMAGE_ERRORS, ids=[f"{c}-{b[-2:]}" for c, b, _ in IMAGE_ERRORS]
)
def test_bad_image_gives_one_error_and_no_mask(
    case: str,
    bundle: str,
    problem: str,
    image_corpus: dict[str, Path],
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "masks"
    code, _, err = run_cli(infer_args(bundle, image_corpus[case], output, checkpoints), capsys)
    assert_one_error(code, err, image_corpus[case], problem)
    assert written_files(output) == []


def test_good_volume_and_roi_larger_than_the_image_give_a_mask_on_its_grid(
    image_corpus: dict[str, Path],
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same path accepts the untouched volume. A ROI larger than the volume (64^3 against 35x51x35) is
    not an error: MONAI's SlidingWindowInferer pads the volume and crops the prediction back."""
    output = tmp_path / "masks"
    args = infer_args("hippocampus_unet3d", image_corpus["good"], output, checkpoints)
    code, _, err = run_cli([*args, "--set", "roi_size=[64,64,64]"], capsys)
    assert code == 0, err[-2000:]
    mask = nib.load(output / "good_seg.nii.gz")
    source = nib.load(image_corpus["good"])
    assert mask.shape == source.shape and np.allclose(mask.affine, source.affine)


def test_roi_of_the_wrong_dimensions_is_one_error(
    image_corpus: dict[str, Path],
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "masks"
    args = infer_args("hippocampus_unet3d", image_corpus["good"], output, checkpoints)
    code, _, err = run_cli([*args, "--set", "roi_size=[32,32]"], capsys)
    assert_one_error(code, err, "roi_size [32, 32]", "3D network needs a 3D roi_size")
    assert written_files(output) == []


# --- training data and settings -------------------------------------------------------------------


def _msd_copy(folder: Path, edit: Callable[[Path], None] | None = None) -> Path:
    """An MSD-layout dataset of four real hippocampus cases, optionally edited."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    items = []
    for case in CASES:
        name = f"hippocampus_{case}.nii.gz"
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(require(HIPPOCAMPUS / sub / name), folder / sub / name)
        items.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**description, "training": items, "numTraining": 4}))
    if edit is not None:
        edit(folder)
    return folder


BAD_LABEL = Path("labelsTr") / "hippocampus_003.nii.gz"


def _edit_label(
    change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        label = nib.load(folder / BAD_LABEL)
        data, affine = change(np.asarray(label.dataobj), label.affine)
        nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), folder / BAD_LABEL)

    return edit


def _drop_two_images(folder: Path) -> None:
    for case in ("004", "006"):
        (folder / "imagesTr" / f"hippocampus_{case}.nii.gz").unlink()


DATA_ERRORS = {
    "label_7": (
        _edit_label(lambda a, m: (np.where(a == 2, 7, a), m)),
        BAD_LABEL,
        r"label values \[7\] outside",
    ),
    "empty_mask": (_edit_label(lambda a, m: (np.zeros_like(a), m)), BAD_LABEL, r"empty mask"),
    "label_shape": (_edit_label(lambda a, m: (a[:-2], m)), BAD_LABEL, r"label shape \d+x\d+x\d+ differs"),
    "label_affine": (
        _edit_label(lambda a, m: (a, m @ np.diag([2.0, 1.0, 1.0, 1.0]))),
        BAD_LABEL,
        r"label affine differs from its image's",
    ),
    "missing_files": (
        _drop_two_images,
        Path("dataset.json"),
        r"names 2 file\(s\) that do not exist: .*004.*006",
    ),
}


@pytest.mark.parametrize("case", list(DATA_ERRORS))
def test_bad_training_data_gives_one_error_and_no_checkpoint(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, where, problem = DATA_ERRORS[case]
    dataset = _msd_copy(tmp_path / "data", edit)
    models = tmp_path / "models"
    args = ["train", "--bundle", str(BUNDLES / "hippocampus_unet2d"), "--data", str(dataset), *TRAIN_2D]
    args += ["--set", f"ckpt_dir={models}", "--set", f"output_dir={tmp_path / 'runs'}"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, (dataset / where).resolve(), problem)
    assert written_files(models) == []


def test_datalist_naming_missing_files_lists_all_of_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A datalist given directly (not through dataset.json) is checked before training: one error
    naming every missing file, not the first one the loader trips on."""
    dataset = _msd_copy(tmp_path / "data")
    items = [
        {
            "image": str(dataset / "imagesTr" / f"hippocampus_{c}.nii.gz"),
            "label": str(dataset / "labelsTr" / f"{c}.nii"),
        }
        for c in CASES
    ]
    args = ["train", "--bundle", str(BUNDLES / "hippocampus_unet2d"), "--data", str(dataset), *TRAIN_2D]
    args += ["--set", f"datalist={json.dumps(items)}", "--set", f"ckpt_dir={tmp_path / 'models'}"]
    code, _, err = run_cli(args, capsys)
    line = assert_one_error(code, err, "datalist", r"4 file\(s\) do not exist")
    assert all(item["label"] in line for item in items)


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _msd_copy(tmp_path_factory.mktemp("good") / "data")


CONFIG_ERRORS = {
    "zero_epochs": (["--epochs", "0"], "train#trainer#max_epochs", r"must be a positive integer, got 0"),
    "negative_epochs": (
        ["--epochs", "-3"],
        "train#trainer#max_epochs",
        r"must be a positive integer, got -3",
    ),
    "unknown_network": (
        ["--set", "network_def#name=unet9000"],
        "",
        r"unknown network 'unet9000'; known networks: ",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_bad_settings_give_one_error(
    case: str, good_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, where, problem = CONFIG_ERRORS[case]
    models = tmp_path / "models"
    args = ["train", "--bundle", str(BUNDLES / "hippocampus_unet2d"), "--data", str(good_dataset), *TRAIN_2D]
    args += ["--set", f"ckpt_dir={models}", "--set", f"output_dir={tmp_path / 'runs'}", *extra]
    code, _, err = run_cli(args, capsys)
    if where:
        assert_one_error(code, err, where, problem)
    else:  # the registry's message names the value and the known names
        assert code != 0 and "Traceback" not in err
        assert re.search(rf"^error: {problem}", err, re.MULTILINE), err[-2000:]
    assert written_files(models) == []


def test_output_folder_under_a_file_is_one_error(
    good_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fails for root too (chmod does not stop root): a folder cannot be made inside a regular file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = ["train", "--bundle", str(BUNDLES / "hippocampus_unet2d"), "--data", str(good_dataset), *TRAIN_2D]
    args += ["--set", f"ckpt_dir={blocker / 'models'}", "--set", f"output_dir={tmp_path / 'runs'}"]
    code, _, err = run_cli(args, capsys)
    assert_one_error(
        code, err, "ckpt_dir", rf"{blocker}/models: cannot create a folder there, {blocker} is a file"
    )
    assert not (tmp_path / "runs").exists()


def test_unwritable_output_folder_is_one_error(
    good_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: chmod 000 does not stop root from writing (the under-a-file case covers it)"
        )
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        args = [
            "train",
            "--bundle",
            str(BUNDLES / "hippocampus_unet2d"),
            "--data",
            str(good_dataset),
            *TRAIN_2D,
        ]
        args += ["--set", f"ckpt_dir={locked / 'models'}", "--set", f"output_dir={tmp_path / 'runs'}"]
        code, _, err = run_cli(args, capsys)
    finally:
        locked.chmod(0o755)
    assert_one_error(code, err, "ckpt_dir", "is not writable")


# --- DICOM ------------------------------------------------------------------------------------------


def _dicom_copy(folder: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(require(DICOM_SERIES), folder)
    edit(folder)
    return folder


def _interleave(folder: Path) -> None:
    """Odd slices become a second series (own SeriesInstanceUID): two series of 16 slices each, mixed."""
    uid = pydicom.uid.generate_uid(entropy_srcs=["bad-input-interleaved"])
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if int(ds.InstanceNumber) % 2:
            ds.SeriesInstanceUID = uid
            ds.save_as(path)


def _edit_file(name: str, change: Callable[[pydicom.Dataset], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        ds = pydicom.dcmread(folder / name)
        change(ds)
        ds.save_as(folder / name)

    return edit


DICOM_ERRORS = {
    "interleaved_series": (_interleave, "", r"2 series match .* ambiguously"),
    "no_pixel_data": (
        _edit_file("10.dcm", lambda ds: delattr(ds, "PixelData")),
        "",
        r"1 slice\(s\) missing between 9.dcm and 11.dcm",
    ),
    "missing_position": (
        _edit_file("10.dcm", lambda ds: delattr(ds, "ImagePositionPatient")),
        "10.dcm",
        r"missing ImagePositionPatient",
    ),
}
PATIENT = ("Avasarala", "PGBM-002")  # in the real series' header: must never be printed or logged


def _assert_no_patient_identifiers(*texts: str) -> None:
    source = pydicom.dcmread(DICOM_SERIES / "1.dcm")
    assert PATIENT[0] in str(source.PatientName) and source.PatientID == PATIENT[1]
    for text in texts:
        assert PATIENT[0] not in text and PATIENT[1] not in text


@pytest.mark.parametrize("case", list(DICOM_ERRORS))
def test_bad_dicom_series_gives_one_error(
    case: str,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    package_log: io.StringIO,
) -> None:
    edit, where, problem = DICOM_ERRORS[case]
    series = _dicom_copy(tmp_path / "series", edit)
    output = tmp_path / "out"
    args = [*infer_args("hippocampus_unet2d", series, output, checkpoints), "--format", "nifti"]
    code, out, err = run_cli(args, capsys)
    assert_one_error(code, err, series / where if where else series, problem)
    assert written_files(output) == []
    _assert_no_patient_identifiers(out, err, package_log.getvalue())


def test_stray_files_in_a_dicom_folder_are_reported_and_skipped(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], package_log: io.StringIO
) -> None:
    """Documented behaviour, not an error: a non-DICOM file beside a series is logged by name and skipped."""

    def add_stray(folder: Path) -> None:
        (folder / "notes.txt").write_text("scanner notes")
        (folder / "desktop.ini").write_bytes(b"\x00\x01garbage")

    series = _dicom_copy(tmp_path / "series", add_stray)
    output = tmp_path / "out"
    args = [*infer_args("hippocampus_unet2d", series, output, checkpoints), "--format", "nifti"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err[-2000:]
    assert [p.name for p in output.glob("*_seg.nii.gz")]
    logged = package_log.getvalue()
    assert f"skipping {series / 'notes.txt'}: not a readable DICOM file" in logged
    assert f"skipping {series / 'desktop.ini'}: not a readable DICOM file" in logged
    _assert_no_patient_identifiers(out, err, logged)


# --- bundles from elsewhere -------------------------------------------------------------------------


def test_bundle_from_outside_the_repository_warns_once(tmp_path: Path, package_log: io.StringIO) -> None:
    copy = tmp_path / "someone_elses_bundle"
    shutil.copytree(BUNDLES / "hippocampus_unet3d" / "configs", copy / "configs")
    load_workflow(BUNDLES / "hippocampus_unet3d", "inference")
    assert "execute" not in package_log.getvalue()  # our own bundles: no warning
    load_workflow(copy, "inference")
    load_workflow(copy, "inference")
    warnings = [line for line in package_log.getvalue().splitlines() if "can execute arbitrary code" in line]
    assert warnings == [
        f"{copy}: bundle configs can execute arbitrary code ($-expressions, _target_ imports); "
        "only run bundles you trust"
    ]


def test_blank_2d_slice_is_documented_behaviour_not_an_error(tmp_path: Path) -> None:
    """2D slices may be blank (outside the body): the 2D chain accepts one and scales it to zeros (MONAI
    guards the division by zero), where the same constant values in a volume are an error (above)."""
    from unet_monai.transforms import build_eval_transforms

    volume, affine = _hippocampus_volume()
    path = tmp_path / "blank_slice.nii.gz"
    nib.save(nib.Nifti1Image(np.full_like(volume[:, :, 0], 7.0), affine), path)
    image = build_eval_transforms(label_key=None, axcodes=None)({"image": str(path)})["image"]
    assert image.shape == (1, *volume.shape[:2]) and float(image.abs().max()) == 0.0


def test_inference_output_under_a_file_is_one_error(
    image_corpus: dict[str, Path],
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = infer_args("hippocampus_unet3d", image_corpus["good"], blocker / "masks", checkpoints)
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, blocker / "masks", r"[Nn]ot a directory|is a file")
    assert blocker.read_text() == "not a folder"
