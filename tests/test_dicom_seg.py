"""DICOM SEG writing / reading (unet_monai.dicom.seg) on the real CT slices of dicom-ct-liver-seg.

Geometry of that folder (checked in ``test_nrrd_geometry_matches_ct``): the CT slices are 512x512,
ImageOrientationPatient (1,0,0,0,1,0), PixelSpacing 0.810547, ImagePositionPatient
(-235.2, -226.8, z) with z = -126.69 (01.dcm), -127.69 (02.dcm), -128.69 (03.dcm). The NRRD masks are
LPS, space directions (0.810547,0,0) (0,0.810547,0) (0,0,1), space origin (-235.2, -226.8, -128.69):
NRRD axis 0 runs along the CT rows' direction (columns index), axis 1 along the CT columns' direction
(rows index), axis 2 along +z, so NRRD slice k lies at z = -128.69 + k: k=0 is 03.dcm, k=2 is 01.dcm.
ITK's array view is indexed [k, j, i] = [slice, CT row, CT column].
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA, require
from tests.dicom_helpers import LABELMAP_UNKNOWN_TO_DCIODVFY
from unet_monai.dicom.seg import (
    dciodvfy_messages,
    read_seg,
    segment_descriptions,
    validate_with_dciodvfy,
    write_seg,
)

LIVER_DIR = SHARED_DATA / "dicom-ct-liver-seg"
CT_FILES = [LIVER_DIR / "ct-3slice" / f"0{index}.dcm" for index in (1, 2, 3)]
CLASSES = {"0": "background", "1": "liver", "2": "spine", "3": "heart"}
METADATA = {
    "name": "Test CT bundle",
    "version": "0.0.1",
    "network_data_format": {"outputs": {"pred": {"channel_def": CLASSES}}},
    "dicom_seg": {
        "1": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["10200004", "SCT", "Liver"]},
        "2": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["421060004", "SCT", "Spine"]},
        "3": {"category": ["91723000", "SCT", "Anatomical Structure"], "type": ["80891009", "SCT", "Heart"]},
    },
}
# The same bundle with a fourth class that never occurs in the masks.
METADATA_EMPTY_CLASS = {
    **METADATA,
    "network_data_format": {"outputs": {"pred": {"channel_def": {**CLASSES, "4": "kidney"}}}},
}

# Checked against the (BINARY) Segmentation IOD instead, a LABELMAP SEG differs only where Sup 243
# changed that IOD: the LABELMAP enumerated value, segment 0 (background), and no Segment
# Identification Sequence per frame (a label-map frame holds all segments).
LABELMAP_AS_BINARY_IOD = (LABELMAP_UNKNOWN_TO_DCIODVFY - {"Error - Information Object Not found"}) | {
    "Error - Unrecognized enumerated value <LABELMAP> for value 1 of attribute <Segmentation Type>",
    "Error - Value is zero for value 1 of attribute <Segment Number>",
    "Error - Missing attribute Type 1 Required Element=<SegmentIdentificationSequence> "
    "Module=<SegmentationMacro>",
}


@pytest.fixture(scope="module")
def sources() -> list[pydicom.Dataset]:
    """The three CT slices, in file order 01, 02, 03 (z = -126.69, -127.69, -128.69)."""
    return [pydicom.dcmread(require(path)) for path in CT_FILES]


def nrrd_on_ct(name: str, sources: list[pydicom.Dataset]) -> np.ndarray:
    """The NRRD mask ``<name>_seg.nrrd`` as frames of the CT slices, located by geometry.

    Asserts that the NRRD's in-plane axes coincide with the CT pixel grid (axis 0 = CT row direction,
    axis 1 = CT column direction, same spacing and origin), then takes for each CT slice the NRRD
    slice whose index its ImagePositionPatient maps to.
    """
    import itk

    image = itk.imread(str(require(LIVER_DIR / f"{name}_seg.nrrd")))
    array = itk.array_from_image(image)  # [k, j, i]
    origin = np.array(image.GetOrigin())
    spacing = np.array(image.GetSpacing())
    direction = itk.array_from_matrix(image.GetDirection())  # columns: directions of axes i, j, k
    index_to_point = direction @ np.diag(spacing)
    frames = []
    for ds in sources:
        orientation = np.array(ds.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(value) for value in ds.PixelSpacing)
        np.testing.assert_allclose(index_to_point[:, 0], orientation[:3] * column_spacing, atol=1e-5)
        np.testing.assert_allclose(index_to_point[:, 1], orientation[3:] * row_spacing, atol=1e-5)
        index = np.linalg.solve(index_to_point, np.array(ds.ImagePositionPatient, dtype=float) - origin)
        np.testing.assert_allclose(index[:2], [0.0, 0.0], atol=1e-3)
        k = round(index[2])
        assert abs(index[2] - k) < 1e-3 and 0 <= k < array.shape[0]
        assert array.shape[1:] == (ds.Rows, ds.Columns)
        frames.append(array[k])
    return np.stack(frames)


@pytest.fixture(scope="module")
def labels(sources: list[pydicom.Dataset]) -> np.ndarray:
    """Liver 1, spine 2, heart 3 on the CT slices. The heart NRRD overlaps the liver in 522 voxels; a
    label map holds one class per voxel, so liver and spine keep those."""
    liver, spine, heart = (nrrd_on_ct(name, sources) > 0 for name in ("liver", "spine", "heart"))
    assert not (liver & spine).any()
    result = np.zeros(liver.shape, dtype=np.uint8)
    result[heart] = 3
    result[spine] = 2
    result[liver] = 1
    return result


def assert_dciodvfy_clean(path: Path, seg_type: str, tmp_path: Path) -> None:
    """No dciodvfy errors, except (for LABELMAP) exactly those of a validator older than Sup 243."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools): SEG not validated")
    errors = validate_with_dciodvfy(path)
    if seg_type == "binary":
        assert errors == []
        return
    assert set(errors) == LABELMAP_UNKNOWN_TO_DCIODVFY, errors
    relabelled = pydicom.dcmread(path)
    relabelled.SOPClassUID = pydicom.uid.SegmentationStorage
    relabelled.file_meta.MediaStorageSOPClassUID = pydicom.uid.SegmentationStorage
    as_binary = tmp_path / f"{path.stem}_as_binary_iod.dcm"
    relabelled.save_as(as_binary)
    assert set(validate_with_dciodvfy(as_binary)) == LABELMAP_AS_BINARY_IOD


def referenced_instances(path: Path) -> set[str]:
    seg = pydicom.dcmread(path)
    return {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }


def test_nrrd_geometry_matches_ct(sources: list[pydicom.Dataset]) -> None:
    """The documented geometry: NRRD slice k at z = -128.69 + k, i.e. CT files 03, 02, 01."""
    import itk

    image = itk.imread(str(require(LIVER_DIR / "liver_seg.nrrd")))
    np.testing.assert_allclose(image.GetOrigin(), [-235.2, -226.8, -128.69], atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), [0.810547, 0.810547, 1.0], atol=1e-6)
    np.testing.assert_allclose(itk.array_from_matrix(image.GetDirection()), np.eye(3))
    z = [float(ds.ImagePositionPatient[2]) for ds in sources]
    np.testing.assert_allclose(z, [-126.69, -127.69, -128.69], atol=1e-4)
    liver = itk.array_from_image(image)
    np.testing.assert_array_equal(nrrd_on_ct("liver", sources), liver[::-1])


def test_reference_seg_matches_nrrd(sources: list[pydicom.Dataset]) -> None:
    """(3a) The published liver SEG, placed on the CT slices, is the NRRD's liver label."""
    reference = require(LIVER_DIR / "liver.dcm")
    frames = read_seg(reference, sources)
    assert frames.shape == (3, 512, 512)
    liver = nrrd_on_ct("liver", sources)
    assert liver.sum() > 100_000
    np.testing.assert_array_equal(frames, liver)
    # the same holds in any order of the sources
    np.testing.assert_array_equal(read_seg(reference, sources[::-1]), liver[::-1])


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_round_trip(
    seg_type: str, sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path
) -> None:
    path = write_seg(labels, sources, METADATA, tmp_path / f"{seg_type}.dcm", seg_type)
    assert path == tmp_path / f"{seg_type}.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    np.testing.assert_array_equal(read_seg(path, sources), labels)
    np.testing.assert_array_equal(read_seg(path, sources[::-1]), labels[::-1])
    assert referenced_instances(path) == {str(ds.SOPInstanceUID) for ds in sources}
    seg = pydicom.dcmread(path)
    assert seg.SegmentationType == seg_type.upper()
    described = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    assert described[1].SegmentLabel == "liver" and described[3].SegmentLabel == "heart"
    assert described[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "421060004"
    assert described[1].SegmentAlgorithmType == "AUTOMATIC"
    assert described[1].SegmentAlgorithmName == "Test CT bundle"
    # each frame lies where its referenced source instance lies
    position_of = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, position_of[uid], atol=1e-4)
    assert_dciodvfy_clean(path, seg_type, tmp_path)


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_empty_class_and_empty_instance(
    seg_type: str, sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path
) -> None:
    """Class 4 never occurs and slice 1 has no foreground: both read back as zeros."""
    frames = labels.copy()
    frames[1] = 0
    path = write_seg(frames, sources, METADATA_EMPTY_CLASS, tmp_path / "seg.dcm", seg_type)
    np.testing.assert_array_equal(read_seg(path, sources), frames)
    seg = pydicom.dcmread(path)
    assert 4 in {int(item.SegmentNumber) for item in seg.SegmentSequence}
    if seg_type == "binary":
        # omit_empty_frames: only (segment, instance) pairs with foreground get a frame: 3 classes x 2 slices
        assert seg.NumberOfFrames == 6
    else:
        assert seg.NumberOfFrames == 2  # one frame per non-empty instance
    assert referenced_instances(path) == {str(ds.SOPInstanceUID) for ds in sources}
    assert_dciodvfy_clean(path, seg_type, tmp_path)


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_all_empty_mask(seg_type: str, sources: list[pydicom.Dataset], tmp_path: Path) -> None:
    """An all-empty mask gives a valid SEG with every frame present and empty."""
    frames = np.zeros((3, 512, 512), dtype=np.uint8)
    path = write_seg(frames, sources, METADATA, tmp_path / "empty.dcm", seg_type)
    np.testing.assert_array_equal(read_seg(path, sources), frames)
    expected_frames = 3 * 3 if seg_type == "binary" else 3
    assert pydicom.dcmread(path).NumberOfFrames == expected_frames
    assert_dciodvfy_clean(path, seg_type, tmp_path)


def test_keep_empty_frames(sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path) -> None:
    path = write_seg(labels, sources, METADATA_EMPTY_CLASS, tmp_path / "all.dcm", omit_empty_frames=False)
    assert pydicom.dcmread(path).NumberOfFrames == 4 * 3
    np.testing.assert_array_equal(read_seg(path, sources), labels)


def test_segment_descriptions_defaults() -> None:
    metadata = {**METADATA_EMPTY_CLASS, "name": "Hippocampus 2D U-Net", "version": "0.3.0"}
    metadata["network_data_format"] = {
        "outputs": {"pred": {"channel_def": {"0": "background", "1": "anterior", "2": "posterior"}}}
    }
    metadata["dicom_seg"] = {}
    descriptions = segment_descriptions(metadata)
    assert [int(item.SegmentNumber) for item in descriptions] == [1, 2]
    assert [item.SegmentLabel for item in descriptions] == ["anterior", "posterior"]
    for item in descriptions:
        for code in (
            item.SegmentedPropertyCategoryCodeSequence[0],
            item.SegmentedPropertyTypeCodeSequence[0],
        ):
            assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
                "85756007",
                "SCT",
                "Tissue",
            )
        assert item.SegmentAlgorithmName == "Hippocampus 2D U-Net"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "0.3.0"
    # an explicit mapping wins over the metadata's
    mapped = segment_descriptions(metadata, {"2": {"type": ["10200004", "SCT", "Liver"]}})
    assert mapped[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"


def test_segment_descriptions_of_repository_bundles() -> None:
    """Softmax channel_def: classes 1..N; the LGG bundle's single sigmoid channel: one class."""
    import json

    from tests.conftest import REPO_ROOT

    def labels_of(bundle: str) -> list[str]:
        metadata = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
        return [item.SegmentLabel for item in segment_descriptions(metadata)]

    assert labels_of("hippocampus_unet2d") == ["anterior", "posterior"]
    assert labels_of("lgg_unet2d") == ["FLAIR abnormality"]


def _bad_inputs(sources: list[pydicom.Dataset], labels: np.ndarray) -> dict[str, tuple]:
    """name -> (frames, sources, metadata, seg_type, expected message part)."""
    nan = labels.astype(np.float32)
    nan[0, 0, 0] = np.nan
    fraction = labels.astype(np.float32)
    fraction[0, 0, 0] = 0.5
    outside = labels.copy()
    outside[0, 0, 0] = 7
    negative = labels.astype(np.int16)
    negative[0, 0, 0] = -1
    no_classes = {"name": "x", "network_data_format": {}}
    return {
        "2d": (labels[0], sources, METADATA, "binary", "must be 3D"),
        "count": (labels[:2], sources, METADATA, "binary", "2 frames but there are 3 source instances"),
        "rows": (labels[:, :500], sources, METADATA, "binary", "source instance 0 is 512x512"),
        "columns": (labels[:, :, :500], sources, METADATA, "binary", "source instance 0 is 512x512"),
        "nan": (nan, sources, METADATA, "binary", "NaN"),
        "fraction": (fraction, sources, METADATA, "binary", "non-integer"),
        "outside": (outside, sources, METADATA, "binary", "labels [7] outside the classes 0..3"),
        "negative": (negative, sources, METADATA, "labelmap", "labels [-1] outside the classes 0..3"),
        "seg_type": (labels, sources, METADATA, "fractional", "seg_type must be one of"),
        "metadata": (
            labels,
            sources,
            no_classes,
            "binary",
            "no network_data_format.outputs.pred.channel_def",
        ),
        "no_sources": (labels, [], METADATA, "binary", "source_datasets is empty"),
        "duplicate": (labels, [sources[0]] * 3, METADATA, "binary", "same SOPInstanceUID more than once"),
    }


BAD_INPUT_NAMES = ["2d", "count", "rows", "columns", "nan", "fraction", "outside", "negative", "seg_type",
                   "metadata", "no_sources", "duplicate"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_INPUT_NAMES)
def test_bad_input_one_line_error(
    name: str,
    sources: list[pydicom.Dataset],
    labels: np.ndarray,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames, bad_sources, metadata, seg_type, expected = _bad_inputs(sources, labels)[name]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError) as raised:
        write_seg(frames, bad_sources, metadata, tmp_path / "out" / "seg.dcm", seg_type)
    message = str(raised.value)
    assert expected in message and "\n" not in message
    assert str(sources[0].PatientName) not in message and str(sources[0].PatientID) not in message
    assert not (tmp_path / "out" / "seg.dcm").exists()


def test_no_patient_identity_in_logs_warnings_or_dciodvfy(
    sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """This CT's PatientName is a one-component name that highdicom warns about, quoting it."""
    name, patient_id = str(sources[0].PatientName), str(sources[0].PatientID)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_seg(labels, sources, METADATA, tmp_path / "seg.dcm", "binary")
        read_seg(path, sources)
    assert pydicom.dcmread(path).PatientName == name  # the SEG itself carries the patient module
    texts = [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught]
    assert not [text for text in texts if name in text or patient_id in text]
    if shutil.which("dciodvfy") is not None:
        errors, dciodvfy_warnings = dciodvfy_messages(path)
        assert not [line for line in errors + dciodvfy_warnings if name in line]


def test_read_seg_rejects_unreferenced_source(
    sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path
) -> None:
    path = write_seg(labels, sources, METADATA, tmp_path / "seg.dcm", "labelmap")
    other = copy.deepcopy(sources[1])
    other.SOPInstanceUID = hd.UID()
    with pytest.raises(ValueError, match=r"does not reference source instances at indices \[1\]"):
        read_seg(path, [sources[0], other, sources[2]])


def test_failed_write_leaves_nothing(
    sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way leaves the previous file untouched and no temporary file."""
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"previous")

    def fail_half_way(self: pydicom.Dataset, filename: str, **kwargs: object) -> None:
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_seg(labels, sources, METADATA, target, "binary")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]


def test_read_seg_rejects_source_off_the_frame_grid(
    sources: list[pydicom.Dataset], labels: np.ndarray, tmp_path: Path
) -> None:
    path = write_seg(labels, sources, METADATA, tmp_path / "seg.dcm", "binary")
    moved = copy.deepcopy(sources[2])
    x, y, z = (float(value) for value in moved.ImagePositionPatient)
    moved.ImagePositionPatient = [x + 0.8, y, z]
    with pytest.raises(ValueError, match="does not lie on the pixel grid of its source instance"):
        read_seg(path, [sources[0], sources[1], moved])


def test_dciodvfy_reports_errors_of_the_source_ct() -> None:
    """The validator does report errors: the source CT itself has two (which our SEGs do not inherit)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    errors = validate_with_dciodvfy(require(CT_FILES[0]))
    assert errors == [
        "Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>",
        "Error - Empty attribute (no value) Type 1C Conditional Element=<SpecificCharacterSet> "
        "Module=<SOPCommon>",
    ]


def test_a_real_series_without_patient_birth_date_and_sex(tmp_path: Path) -> None:
    """The real MR series lacks PatientBirthDate / PatientSex (Type 2 in the SEG): they are written
    empty, the caller's datasets are left as they were, and dciodvfy finds no error."""
    folder = require(SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume")
    sources = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    assert "PatientBirthDate" not in sources[0] and "PatientSex" not in sources[0]
    frames = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), np.uint8)
    frames[10:15, 10:20, 10:20] = 1
    frames[12, 20:25, 5:8] = 2
    metadata = json.loads(
        (REPO_ROOT / "bundles" / "hippocampus_unet2d" / "configs" / "metadata.json").read_text()
    )
    path = write_seg(frames, sources, metadata, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(path)
    assert seg.PatientBirthDate == "" and seg.PatientSex == ""
    assert "PatientBirthDate" not in sources[0]
    np.testing.assert_array_equal(read_seg(path, sources), frames)
    if shutil.which("dciodvfy") is None:
        pytest.skip(
            "dciodvfy not installed (apt-get install dicom3tools): SEG content checked, not validated"
        )
    assert validate_with_dciodvfy(path) == []
