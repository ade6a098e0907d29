"""DICOM series in and out: round trips of real NIfTI volumes, folder scanning / selection, errors,
and agreement with MONAI's ITKReader / PydicomReader on real DICOM series."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import HIPPOCAMPUS, SHARED_DATA, SPINALCORD, require
from unet_monai.dicom.series import (
    DicomSeriesError,
    SkippedFile,
    find_series,
    read_series,
    select_series,
)
from unet_monai.dicom.write_series import choose_encoding, write_series

MR_SERIES = SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume"
CT_SLICES = SHARED_DATA / "dicom-ct-liver-seg" / "ct-3slice"
SECRET_NAME = "Secretname^Patient"
SECRET_ID = "SECRET-ID-4711"


def _reverse_k(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels in the world with the k axis reversed."""
    reversed_affine = affine.copy()
    reversed_affine[:, 3] = affine @ np.array([0.0, 0.0, array.shape[2] - 1, 1.0])
    reversed_affine[:3, 2] = -affine[:3, 2]
    return array[:, :, ::-1], reversed_affine


def _expected(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a DICOM reader gives back for a written NIfTI volume: slices ascend along cross(row, column),
    so a volume with a left-handed affine (negative determinant) comes back with k reversed."""
    return (array, affine) if np.linalg.det(affine[:3, :3]) > 0 else _reverse_k(array, affine)


def _assert_round_trip(array: np.ndarray, affine: np.ndarray, folder: Path, **write_args) -> None:
    paths = write_series(array, affine, folder, shuffle_seed=7, **write_args)
    names_in_slice_order = [p.name for p in paths]
    assert names_in_slice_order != sorted(names_in_slice_order)  # order must come from geometry
    volume = read_series(folder)
    expected_array, expected_affine = _expected(array, affine)
    # half a rescale slope, plus float32 rounding of the values
    tolerance = choose_encoding(array).slope / 2 + 2e-6 * float(np.abs(array).max()) + 1e-6
    assert volume.array.dtype == np.float32
    assert volume.array.shape == expected_array.shape
    np.testing.assert_allclose(volume.array, expected_array, rtol=0, atol=tolerance)
    np.testing.assert_allclose(volume.affine, expected_affine, rtol=0, atol=1e-4)
    # headers follow the k axis
    positions = [np.array(ds.ImagePositionPatient, dtype=float) for ds in volume.datasets]
    lps = volume.affine[:3] @ np.array([[0.0, 0.0, k, 1.0] for k in range(array.shape[2])]).T
    np.testing.assert_allclose(np.array(positions).T, lps * np.array([[-1.0], [-1.0], [1.0]]), atol=1e-4)


REAL_VOLUMES = [
    "msd-hippocampus/imagesTr/hippocampus_001.nii.gz",  # uint8, RAS
    "msd-hippocampus/imagesTr/hippocampus_003.nii.gz",  # float32 raw MR values -> rescaled uint16
    "spinalcord/t2/t2.nii.gz",  # PSR: slices along x, left-handed
    "spinalcord/mt/mt1.nii.gz",  # LAS, 0.84 x 0.84 x 17 mm
    "spinalcord/t2s/t2s.nii.gz",  # float32, LAS, 0.5 x 0.5 x 7.5 mm
    "spinalcord/t1/t1w.nii.gz",  # RAS int16
]


@pytest.mark.parametrize("relative", REAL_VOLUMES)
def test_real_nifti_round_trip(relative: str, tmp_path: Path) -> None:
    image = nib.load(require(SHARED_DATA / relative))
    _assert_round_trip(np.asarray(image.dataobj), image.affine, tmp_path / "series")


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    rotation = np.eye(4)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_oblique_anisotropic_round_trip_matches_itk(modality: str, tmp_path: Path) -> None:
    from monai.transforms import LoadImage

    image = nib.load(require(HIPPOCAMPUS / "imagesTr" / "hippocampus_004.nii.gz"))
    affine = _rotation(0, 20) @ _rotation(2, -20) @ image.affine @ np.diag([0.9, 1.3, 2.1, 1.0])
    array = np.asarray(image.dataobj)
    _assert_round_trip(array, affine, tmp_path / "oblique", modality=modality)
    volume = read_series(tmp_path / "oblique")
    assert volume.datasets[0].Modality == modality
    itk = LoadImage(reader="ITKReader", image_only=True)(str(tmp_path / "oblique"))
    np.testing.assert_allclose(itk.numpy(), volume.array, atol=1e-3)
    np.testing.assert_allclose(itk.affine.numpy(), volume.affine, atol=1e-4)


def test_write_series_refuses_what_dicom_cannot_store(tmp_path: Path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(ValueError, match="not perpendicular"):
        write_series(np.zeros((4, 5, 3)), sheared, tmp_path / "a")
    with pytest.raises(ValueError, match="modality"):
        write_series(np.zeros((4, 5, 3)), np.eye(4), tmp_path / "b", modality="PT")
    with pytest.raises(ValueError, match="NaN"):
        write_series(np.full((4, 5, 3), np.nan), np.eye(4), tmp_path / "c")


def test_real_mr_series_matches_monai_readers() -> None:
    from monai.transforms import LoadImage

    volume = read_series(require(MR_SERIES))
    assert volume.array.shape == (35, 51, 32)  # 35 columns, 51 rows, 32 slices
    for reader in ("ITKReader", "PydicomReader"):
        loaded = LoadImage(reader=reader, image_only=True)(str(MR_SERIES))
        np.testing.assert_array_equal(loaded.numpy(), volume.array)
        np.testing.assert_allclose(loaded.affine.numpy(), volume.affine, atol=1e-5)


def test_real_ct_slices_match_itk_and_pydicom_reader_reverses_them() -> None:
    from monai.transforms import LoadImage

    volume = read_series(require(CT_SLICES))
    assert volume.array.shape == (512, 512, 3)
    # slices ascend along the normal (+z, LPS superior): 03.dcm (z -128.69) first
    assert [p.name for p in volume.files] == ["03.dcm", "02.dcm", "01.dcm"]
    assert volume.affine[2, 2] == pytest.approx(1.0)  # position step 1 mm, while SliceThickness is 1.25
    raw = pydicom.dcmread(CT_SLICES / "01.dcm")
    np.testing.assert_array_equal(volume.array[:, :, 2], (raw.pixel_array.T * 1.0 - 1024).astype(np.float32))
    itk = LoadImage(reader="ITKReader", image_only=True)(str(CT_SLICES))
    np.testing.assert_array_equal(itk.numpy(), volume.array)
    np.testing.assert_allclose(itk.affine.numpy(), volume.affine, atol=1e-4)
    # PydicomReader keeps the file order (k = 01, 02, 03) with a negative z step: the same voxels in
    # the world, k reversed.
    pyd = LoadImage(reader="PydicomReader", image_only=True)(str(CT_SLICES))
    reversed_array, reversed_affine = _reverse_k(volume.array, volume.affine)
    np.testing.assert_array_equal(pyd.numpy(), reversed_array)
    np.testing.assert_allclose(pyd.affine.numpy(), reversed_affine, atol=1e-4)


def test_frames_metatensor_and_nifti(tmp_path: Path) -> None:
    from monai.transforms import LoadImage

    volume = read_series(require(CT_SLICES))
    frames = volume.frames(volume.array)
    assert frames.shape == (3, 512, 512)
    for frame, ds in zip(frames, volume.datasets, strict=True):
        pixels = pydicom.dcmread(ds.filename).pixel_array * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept
        )
        np.testing.assert_array_equal(frame, pixels)
    tensor = volume.to_metatensor()
    assert tuple(tensor.shape) == (512, 512, 3)
    np.testing.assert_allclose(tensor.affine.numpy(), volume.affine)
    nifti = LoadImage(image_only=True)(str(volume.to_nifti(tmp_path / "ct.nii.gz")))
    np.testing.assert_array_equal(nifti.numpy(), volume.array)
    np.testing.assert_allclose(nifti.affine.numpy(), volume.affine, atol=1e-5)
    itk = LoadImage(reader="ITKReader", image_only=True)(str(CT_SLICES))
    for key in ("space", "spatial_shape"):
        assert str(tensor.meta[key]) == str(itk.meta[key])
    with pytest.raises(ValueError, match="shape"):
        volume.frames(volume.array[:, :, :2])


def test_dicom_and_nifti_give_the_same_tensor_after_orientation(tmp_path: Path) -> None:
    """A left-handed (PSR) volume comes back from DICOM with k reversed; after MONAI's Orientation
    both are the same tensor with the same affine, so NIfTI transform chains run unchanged on DICOM."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    nifti_path = require(SPINALCORD / "t2" / "t2.nii.gz")
    image = nib.load(nifti_path)
    write_series(np.asarray(image.dataobj), image.affine, tmp_path / "t2", shuffle_seed=2)
    volume = read_series(tmp_path / "t2")
    chain = Compose([EnsureChannelFirst(), Orientation(axcodes="RAS", labels=None)])
    from_nifti = chain(LoadImage(image_only=True)(str(nifti_path)))
    for tensor in (
        volume.to_metatensor(),
        LoadImage(image_only=True)(str(volume.to_nifti(tmp_path / "t2.nii"))),
    ):
        from_dicom = chain(tensor)
        np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())
        np.testing.assert_allclose(from_dicom.affine.numpy(), from_nifti.affine.numpy(), atol=1e-4)


def _small_series(folder: Path, case: str = "hippocampus_001", **write_args) -> list[Path]:
    image = nib.load(require(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz"))
    array = np.asarray(image.dataobj)[:, :, 10:18]
    affine = image.affine @ np.diag([1.0, 1.0, 2.5, 1.0])
    write_args = {"patient_name": SECRET_NAME, "patient_id": SECRET_ID, **write_args}
    return write_series(array, affine, folder, **write_args)


def _mixed_folder(tmp_path: Path) -> tuple[Path, str, str, Path]:
    """Two series with interleaved shuffled names, a text file and a DICOM without pixel data."""
    staging, folder = tmp_path / "staging", tmp_path / "mixed"
    mr = _small_series(staging / "mr", "hippocampus_001", series_description="T1 hippocampus crop")
    ct = _small_series(staging / "ct", "hippocampus_003", modality="CT", series_description="CT-like")
    ct = ct[:5]
    folder.mkdir()
    names = np.random.default_rng(0).permutation(len(mr) + len(ct))
    for path, number in zip(mr + ct, names, strict=True):
        shutil.copy(path, folder / f"IM{number:05d}")
    (folder / "notes.txt").write_text("not a DICOM file\n")
    first = folder / f"IM{names[0]:05d}"
    first.write_bytes(first.read_bytes()[132:])  # no 128-byte preamble and "DICM": still read
    no_pixels = pydicom.dcmread(mr[0])
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = no_pixels.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    no_pixels.save_as(folder / "IM_header_only")
    mr_uid = str(pydicom.dcmread(mr[0]).SeriesInstanceUID)
    ct_uid = str(pydicom.dcmread(ct[0]).SeriesInstanceUID)
    return folder, mr_uid, ct_uid, folder / "IM_header_only"


def test_mixed_folder_selection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    folder, mr_uid, ct_uid, header_only = _mixed_folder(tmp_path)
    skipped: list[SkippedFile] = []
    series = find_series(folder, skipped)
    assert [(s.series_uid, s.modality, s.num_instances) for s in series] == [
        (mr_uid, "MR", 8),
        (ct_uid, "CT", 5),
    ]
    assert {s.path.name: s.reason.split(" (")[0] for s in skipped} == {
        "notes.txt": "not a readable DICOM file",
        header_only.name: "DICOM without pixel data",
    }
    assert "notes.txt" in caplog.text and header_only.name in caplog.text

    assert select_series(series).series_uid == mr_uid  # largest
    assert select_series(series, series_uid=ct_uid).series_uid == ct_uid
    assert select_series(series, modality="ct").series_uid == ct_uid
    assert select_series(series, description="hippo").series_uid == mr_uid
    with pytest.raises(DicomSeriesError, match="ambiguously") as ambiguous:
        select_series(series, rule="only")
    with pytest.raises(DicomSeriesError, match="no image series matches") as missing:
        select_series(series, modality="PT")
    for error in (ambiguous, missing):
        assert str(folder) in str(error.value) and "\n" not in str(error.value)

    ct_volume = read_series(folder, modality="CT")
    assert ct_volume.series_uid == ct_uid and ct_volume.array.shape[2] == 5
    mr_volume = read_series(folder)
    expected = np.asarray(nib.load(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz").dataobj)[:, :, 10:18]
    np.testing.assert_array_equal(mr_volume.array, expected)
    assert SECRET_NAME.split("^")[0] not in caplog.text and SECRET_ID not in caplog.text


def _to_monochrome1(paths: list[Path]) -> None:
    """Rewrite uint16 files as MONOCHROME1 showing the same image (stored values reflected)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelData = (65535 - ds.pixel_array.astype(np.int64)).astype(np.uint16).tobytes()
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(path)


def test_real_folder_with_seg_and_nrrd_files() -> None:
    """The published CT folder: 3 CT slices in a subfolder, a DICOM SEG and NRRD masks beside them. The
    SEG is not an image series: skipped by name, like the NRRD files."""
    folder = require(CT_SLICES.parent)
    skipped: list[SkippedFile] = []
    series = find_series(folder, skipped)
    assert [(s.modality, s.num_instances) for s in series] == [("CT", 3)]
    assert sorted(s.path.suffix for s in skipped) == [".dcm"] + [".nrrd"] * 4
    (seg,) = [s for s in skipped if s.path.suffix == ".dcm"]
    assert seg.path.name == "liver.dcm" and seg.reason.startswith("a DICOM SEG object, not an image")
    volume = read_series(folder)
    assert volume.array.shape == (512, 512, 3)
    assert volume.study_uid == series[0].study_uid
    with pytest.raises(DicomSeriesError, match="no image series matches .*modality=SEG"):
        read_series(folder, modality="SEG")


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    paths = _small_series(tmp_path / "m1", "hippocampus_003")
    original = read_series(tmp_path / "m1").array
    _to_monochrome1(paths)
    np.testing.assert_array_equal(read_series(tmp_path / "m1").array, original)


def test_where_monai_readers_differ(tmp_path: Path) -> None:
    """MONAI 1.6's readers against read_series on series that they read differently."""
    from monai.transforms import LoadImage

    def load(reader: str, folder: Path) -> np.ndarray:
        return LoadImage(reader=reader, image_only=True)(str(folder))

    paths = _small_series(tmp_path / "order", "hippocampus_003", shuffle_seed=1)
    ours = read_series(tmp_path / "order").array
    # 1. PydicomReader stacks slices in InstanceNumber order; ITKReader and read_series use geometry.
    numbers = np.random.default_rng(5).permutation(len(paths)) + 1
    for path, number in zip(paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = int(number)
        ds.save_as(path)
    np.testing.assert_array_equal(read_series(tmp_path / "order").array, ours)
    np.testing.assert_array_equal(load("ITKReader", tmp_path / "order").numpy(), ours)
    np.testing.assert_array_equal(
        load("PydicomReader", tmp_path / "order").numpy(), ours[:, :, np.argsort(numbers)]
    )

    # 2. MONOCHROME1: ITKReader (GDCM) inverts it like read_series, PydicomReader does not.
    _to_monochrome1(paths)
    np.testing.assert_array_equal(read_series(tmp_path / "order").array, ours)
    np.testing.assert_array_equal(load("ITKReader", tmp_path / "order").numpy(), ours)
    assert not np.allclose(load("PydicomReader", tmp_path / "order").numpy(), ours[:, :, np.argsort(numbers)])

    # 3. Gantry tilt (slice positions sheared off the normal): ITKReader's affine ignores the shear.
    image = nib.load(HIPPOCAMPUS / "imagesTr" / "hippocampus_003.nii.gz")
    sheared = image.affine.copy()
    sheared[1, 2] = 0.5
    write_series(np.asarray(image.dataobj), sheared, tmp_path / "tilt")
    np.testing.assert_allclose(read_series(tmp_path / "tilt").affine, sheared, atol=1e-4)
    np.testing.assert_allclose(load("PydicomReader", tmp_path / "tilt").affine.numpy(), sheared, atol=1e-4)
    assert load("ITKReader", tmp_path / "tilt").affine[1, 2] == pytest.approx(0.0)

    # 4. A missing slice: both MONAI readers stack the 7 left with one uniform spacing; read_series refuses.
    paths = _small_series(tmp_path / "gap")
    paths[3].unlink()
    for reader in ("ITKReader", "PydicomReader"):
        assert load(reader, tmp_path / "gap").shape[2] == 7
    with pytest.raises(DicomSeriesError, match="missing"):
        read_series(tmp_path / "gap")


def _set(name: str, value):
    def edit(ds: pydicom.Dataset) -> None:
        setattr(ds, name, value)

    return edit


def _delete(name: str):
    def edit(ds: pydicom.Dataset) -> None:
        delattr(ds, name)

    return edit


def _shift_position(fraction: float):
    def edit(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * fraction]

    return edit


# (edit of slice 3, expected message part, whether the message names the edited file or the folder)
BROKEN = {
    "duplicated": (_shift_position(-1.0), "duplicated slice position", "file"),
    "uneven": (_shift_position(0.4), "unevenly spaced", "folder"),
    "orientation": (
        _set("ImageOrientationPatient", [1, 0, 0, 0, 0.9950042, 0.0998334]),
        "Orientation",
        "file",
    ),
    "size": (_set("Columns", 34), "Rows x Columns differ", "file"),
    "no position": (_delete("ImagePositionPatient"), "missing ImagePositionPatient", "file"),
    "no orientation": (_delete("ImageOrientationPatient"), "missing ImageOrientationPatient", "file"),
    "truncated pixels": (_set("PixelData", bytes(100)), "cannot decode the pixel data", "file"),
}


@pytest.mark.parametrize("case", sorted(BROKEN) + ["missing slice", "no pixel data"])
def test_broken_series_errors(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "series"
    paths = _small_series(folder, shuffle_seed=3)
    source: Path | list[Path] = folder
    if case == "missing slice":
        paths[3].unlink()
        expected, named = "1 slice(s) missing", "folder"
    elif case == "no pixel data":
        ds = pydicom.dcmread(paths[3])
        del ds.PixelData
        ds.save_as(paths[3])
        source, expected, named = paths, "no pixel data", "file"
    else:
        edit, expected, named = BROKEN[case]
        ds = pydicom.dcmread(paths[3])
        edit(ds)
        ds.save_as(paths[3])
    with pytest.raises(DicomSeriesError) as error:
        read_series(source)
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert str(paths[3] if named == "file" else folder) in message
    for secret in (SECRET_NAME, SECRET_NAME.split("^")[0], SECRET_ID):
        assert secret not in message and secret not in caplog.text


def test_find_series_of_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(DicomSeriesError, match="not a folder"):
        find_series(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match=str(tmp_path / "empty")):
        read_series(tmp_path / "empty")
