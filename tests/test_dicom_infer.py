"""`unet-monai infer` of DICOM series: real volumes written as shuffled DICOM series, segmented by the
hippocampus bundle into a DICOM SEG and a NIfTI mask, checked against each other and against plain NIfTI
inference of the original volumes (RAS, left-handed PSR and oblique geometry)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import HIPPOCAMPUS_BUNDLE, SPINALCORD, require
from tests.dicom_helpers import (
    HIPPOCAMPUS_IMAGE,
    LABELMAP_UNKNOWN_TO_DCIODVFY,
    PATIENT_ID,
    PATIENT_NAME,
    SMALL,
    SMALL_ARGS,
    balanced_checkpoint,
)
from unet_monai.cli import main
from unet_monai.dicom.infer import segment_dicom
from unet_monai.dicom.seg import read_seg, validate_with_dciodvfy
from unet_monai.dicom.series import DicomVolume, read_series
from unet_monai.dicom.write_series import write_series

SPINALCORD_IMAGE = SPINALCORD / "t2" / "t2.nii.gz"  # int16, PSR (left-handed)
HIPPOCAMPUS_CODE = ("5366008", "SCT", "Hippocampus")
ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    folder = tmp_path_factory.mktemp("balanced")
    return balanced_checkpoint(trained_checkpoint, require(HIPPOCAMPUS_IMAGE), folder / "model.pt")


@dataclass(frozen=True)
class Case:
    nifti: Path  # the volume as NIfTI (the original file, or a rotated copy)
    dicom: Path  # the same volume as a DICOM series (shuffled file names)


def _rotation(degrees: float) -> np.ndarray:
    """4x4 rotation about the RAS x axis."""
    angle = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return rotation


def _write_case(nifti: Path, folder: Path, seed: int) -> Case:
    image = nib.load(nifti)
    write_series(
        np.asarray(image.dataobj),
        image.affine,
        folder,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        shuffle_seed=seed,
    )
    return Case(nifti, folder)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """RAS hippocampus, PSR spinal cord and the hippocampus rotated 20 degrees, each as NIfTI and DICOM."""
    root = tmp_path_factory.mktemp("cases")
    original = nib.load(require(HIPPOCAMPUS_IMAGE))
    oblique = nib.Nifti1Image(np.asarray(original.dataobj), _rotation(20.0) @ original.affine)
    nib.save(oblique, root / "oblique.nii.gz")
    return {
        "hippocampus": _write_case(HIPPOCAMPUS_IMAGE, root / "hippocampus", seed=1),
        "spinalcord": _write_case(require(SPINALCORD_IMAGE), root / "spinalcord", seed=2),
        "oblique": _write_case(root / "oblique.nii.gz", root / "oblique", seed=3),
    }


@pytest.fixture(scope="module")
def plain_masks(cases: dict[str, Case], checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Masks of plain NIfTI inference of the three NIfTI volumes (one `unet-monai infer` run)."""
    folder = tmp_path_factory.mktemp("plain_in")
    for name, case in cases.items():
        shutil.copyfile(case.nifti, folder / f"{name}.nii.gz")  # a link would be resolved to its target
    output = tmp_path_factory.mktemp("plain_out")
    args = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(checkpoint), *SMALL_ARGS]
    assert main([*args, "--input", str(folder), "--output", str(output)]) == 0
    return {name: nib.load(output / f"{name}_seg.nii.gz") for name in cases}


@pytest.fixture(scope="module")
def dicom_outputs(cases: dict[str, Case], checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`unet-monai infer --format both` of each DICOM series: its output folder."""
    outputs = {}
    for name, case in cases.items():
        output = tmp_path_factory.mktemp(f"dicom_out_{name}")
        args = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(checkpoint), *SMALL_ARGS]
        assert main([*args, "--input", str(case.dicom), "--output", str(output), "--format", "both"]) == 0
        outputs[name] = output
    return outputs


def _on_grid(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape: tuple) -> np.ndarray:
    """``data`` (with ``affine``) on the grid of ``target_affine`` / ``shape``: the two grids must be the
    same voxels in another axis order / direction (a signed permutation)."""
    mapping = np.linalg.inv(affine) @ target_affine
    assert np.allclose(mapping, np.round(mapping), atol=1e-3), "grids are not one another's permutation"
    mapping = np.round(mapping).astype(int)
    index = np.indices(shape).reshape(3, -1)
    source = mapping[:3, :3] @ index + mapping[:3, 3:]
    return data[tuple(source)].reshape(shape)


def _outputs(output: Path, volume: DicomVolume) -> tuple[Path, Path]:
    names = sorted(p.name for p in output.iterdir())
    assert names == [f"{volume.series_uid}_seg.dcm", f"{volume.series_uid}_seg.nii.gz"]
    return output / names[0], output / names[1]


@pytest.mark.parametrize("name", ["hippocampus", "spinalcord", "oblique"])
def test_seg_equals_nifti_mask_and_plain_inference(
    name: str, cases: dict[str, Case], dicom_outputs: dict, plain_masks: dict
) -> None:
    """SEG frames == the run's NIfTI mask == plain inference of the original NIfTI, voxel for voxel."""
    case = cases[name]
    volume = read_series(case.dicom)
    original = nib.load(case.nifti)
    # The series is the original volume (k reversed for the left-handed spinal cord).
    assert np.array_equal(
        _on_grid(np.asarray(original.dataobj), original.affine, volume.affine, volume.array.shape),
        volume.array,
    )
    if name == "spinalcord":
        assert np.linalg.det(original.affine) < 0
        np.testing.assert_allclose(volume.affine[:3, 2], -original.affine[:3, 2], atol=1e-4)
    if name == "oblique":
        np.testing.assert_allclose(volume.affine, original.affine, atol=1e-4)

    seg_path, nifti_path = _outputs(dicom_outputs[name], volume)
    mask = nib.load(nifti_path)
    assert mask.shape == volume.array.shape
    np.testing.assert_allclose(mask.affine, volume.affine, atol=1e-4)
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    if name == "hippocampus":
        assert set(np.unique(labels)) == {0, 1, 2}  # the balanced checkpoint gives every class

    sources = [pydicom.dcmread(path) for path in volume.files]
    np.testing.assert_array_equal(read_seg(seg_path, sources), volume.frames(labels))

    plain = plain_masks[name]
    assert plain.shape == original.shape
    on_series_grid = _on_grid(np.asarray(plain.dataobj), plain.affine, volume.affine, volume.array.shape)
    np.testing.assert_array_equal(on_series_grid, labels)


def test_seg_references_series_and_names_segments(cases: dict[str, Case], dicom_outputs: dict) -> None:
    volume = read_series(cases["hippocampus"].dicom)
    seg_path, _ = _outputs(dicom_outputs["hippocampus"], volume)
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == volume.study_uid and seg.SeriesInstanceUID != volume.series_uid
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == volume.series_uid
    instances = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence}
    assert instances == {str(ds.SOPInstanceUID) for ds in volume.datasets}
    segments = [(int(s.SegmentNumber), str(s.SegmentLabel)) for s in seg.SegmentSequence]
    assert segments == [(1, "anterior"), (2, "posterior")]
    for segment in seg.SegmentSequence:
        [category] = segment.SegmentedPropertyCategoryCodeSequence
        [kind] = segment.SegmentedPropertyTypeCodeSequence
        assert (
            category.CodeValue,
            category.CodingSchemeDesignator,
            category.CodeMeaning,
        ) == ANATOMICAL_STRUCTURE
        assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == HIPPOCAMPUS_CODE
        assert segment.SegmentAlgorithmType == "AUTOMATIC"


@pytest.mark.parametrize("name", ["hippocampus", "spinalcord", "oblique"])
def test_dciodvfy_finds_no_errors(name: str, cases: dict[str, Case], dicom_outputs: dict) -> None:
    volume = read_series(cases[name].dicom)
    seg_path, _ = _outputs(dicom_outputs[name], volume)
    try:
        errors = validate_with_dciodvfy(seg_path)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    assert errors == []


def test_labelmap_and_logs_name_no_patient(
    cases: dict[str, Case],
    checkpoint: Path,
    dicom_outputs: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
) -> None:
    """A LABELMAP SEG through the Python API holds the BINARY one's labels; nothing printed or logged
    names the patient."""
    case = cases["hippocampus"]
    with caplog.at_level(logging.DEBUG):
        result = segment_dicom(
            HIPPOCAMPUS_BUNDLE,
            case.dicom,
            tmp_path,
            checkpoint=checkpoint,
            overrides=SMALL,
            seg_type="labelmap",
        )
    volume = read_series(case.dicom)
    assert list(result["files"]) == ["seg"] and result["labels"] == [0, 1, 2]
    assert result["files"]["seg"] == tmp_path / f"{volume.series_uid}_seg.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == [result["files"]["seg"].name]
    seg = pydicom.dcmread(result["files"]["seg"])
    assert seg.SegmentationType == "LABELMAP" and seg.SOPInstanceUID == result["seg_sop_instance_uid"]
    sources = [pydicom.dcmread(path) for path in volume.files]
    binary, _ = _outputs(dicom_outputs["hippocampus"], volume)
    np.testing.assert_array_equal(read_seg(result["files"]["seg"], sources), read_seg(binary, sources))
    if shutil.which("dciodvfy") is not None:  # a validator older than LABELMAP (Sup 243): only those errors
        assert set(validate_with_dciodvfy(result["files"]["seg"])) <= LABELMAP_UNKNOWN_TO_DCIODVFY
    printed = capfd.readouterr()
    assert volume.series_uid in caplog.text
    for secret in ("Secretname", PATIENT_ID):
        assert secret not in caplog.text and secret not in printed.out and secret not in printed.err


def test_errors_are_one_line(
    cases: dict[str, Case], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two series without a selector, a wrong series UID, missing weights, SEG of a NIfTI: one line each,
    nothing written."""
    mixed = tmp_path / "mixed"
    for name, seed in (("hippocampus", 4), ("spinalcord", 5)):
        image = nib.load(cases[name].nifti)
        write_series(
            np.asarray(image.dataobj), image.affine, mixed, name_prefix=f"{name}_", shuffle_seed=seed
        )
    uids = sorted(
        {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in mixed.iterdir()}
    )
    output = tmp_path / "out"
    args = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(checkpoint), *SMALL_ARGS]
    args += ["--output", str(output)]

    for extra in ([], ["--format", "seg"], ["--modality", "MR"]):
        assert main([*args, "--input", str(mixed), *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and str(mixed) in error and "2 series match" in error
        assert all(uid in error for uid in uids)

    wrong = uids[0] + ".999"
    assert main([*args, "--input", str(mixed), "--series-uid", wrong]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(mixed) in error and f"series_uid={wrong}" in error and uids[1] in error

    missing = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(tmp_path / "none.pt")]
    assert main([*missing, "--input", str(cases["hippocampus"].dicom), "--output", str(output)]) == 2
    assert "none.pt: no trained weights" in capsys.readouterr().err

    with pytest.raises(SystemExit, match="needs a folder of DICOM images"):
        main([*args, "--input", str(cases["hippocampus"].nifti), "--format", "seg"])
    assert not output.exists()


@pytest.mark.parametrize(
    ("shape_change", "shift", "expected"),
    [(1, 0.0, "wrote a mask of shape"), (0, 2.0, "wrote a mask with affine")],
)
def test_mask_off_the_series_grid_is_an_error(
    cases: dict[str, Case],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shape_change: int,
    shift: float,
    expected: str,
) -> None:
    """A bundle writing its mask on another grid: one line naming the bundle and series, nothing written."""
    volume = read_series(cases["hippocampus"].dicom)

    def run_workflow(bundle: Path, name: str, **overrides) -> None:
        affine = volume.affine.copy()
        affine[0, 3] += shift
        shape = (volume.array.shape[0] + shape_change, *volume.array.shape[1:])
        Path(overrides["output_dir"]).mkdir()
        nib.save(
            nib.Nifti1Image(np.zeros(shape, np.uint8), affine), Path(overrides["output_dir"]) / "x.nii.gz"
        )

    monkeypatch.setattr("unet_monai.bundle.run_workflow", run_workflow)
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{expected}.*series {volume.series_uid}") as error:
        segment_dicom(HIPPOCAMPUS_BUNDLE, cases["hippocampus"].dicom, tmp_path / "out", checkpoint=weights)
    assert "\n" not in str(error.value) and str(HIPPOCAMPUS_BUNDLE) in str(error.value)
    assert not (tmp_path / "out").exists()
