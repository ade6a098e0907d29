"""Which series of a study is segmented: the default rule, MONAI Deploy rules files, --description, and
the log of what was taken and skipped; the scanner's folder case (volume + localizer + stray files)
segments with no flags, locally and from a PACS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import HIPPOCAMPUS_BUNDLE, require, run_cli
from tests.dicom_helpers import HIPPOCAMPUS_IMAGE, PATIENT_ID, PATIENT_NAME, write_scanner_study
from tests.orthanc_server import OrthancServer
from unet_monai.dicom.pacs import DicomWebPacs
from unet_monai.dicom.selection import (
    Criteria,
    NoSeriesToSegment,
    RulesError,
    accepted_modalities,
    choose_series,
    condition_matches,
    load_rules,
    parse_rules,
)
from unet_monai.dicom.series import DicomSeriesError
from unet_monai.dicom.write_series import write_series

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MR = frozenset({"MR"})


@pytest.fixture(scope="module")
def scanner_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("scanner") / "study"
    return folder, write_scanner_study(require(HIPPOCAMPUS_IMAGE), folder)


def _volume(folder: Path, description: str, **kwargs) -> str:
    """A small 8-slice volume series; returns its SeriesInstanceUID."""
    array = np.random.default_rng(0).integers(0, 400, size=(16, 16, 8)).astype(np.float32)
    paths = write_series(
        array, np.diag([1.0, 1.0, 2.0, 1.0]), folder, series_description=description, **kwargs
    )
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def test_scanner_study_segments_with_no_flags(
    scanner_study: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The bar's case: localizer + stray files + volume -> the volume is segmented with the shipped weights,
    the localizer is named as skipped with its reason, and no patient attribute is printed or logged (the
    bundle's logging.conf sends the log to stdout)."""
    folder, uids = scanner_study
    args = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--input", str(folder), "--output", str(tmp_path)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    taken = f"series {uids['volume']} (MR, 'T1 volume', 35 files): the only series the default rule leaves"
    skipped = f"series {uids['localizer']} (MR, 'Localizer', 3 files): a localizer (ImageType LOCALIZER)"
    assert taken in out and f"skipped {skipped}" in out
    assert f"took {taken}" in out and "skipped 2 file(s) that are not DICOM images" in out
    seg = pydicom.dcmread(tmp_path / f"{uids['volume']}_seg.dcm")
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == uids["volume"] and len(referenced.ReferencedInstanceSequence) == 35
    for secret in (PATIENT_NAME.split("^")[0], PATIENT_ID):
        assert secret not in out and secret not in err


def test_default_rule_reasons(tmp_path: Path) -> None:
    """Localizer-sized, other-modality and non-volume series are skipped, each with its reason; a SEG file
    never becomes a series; with nothing left the error lists every reason on one line."""
    study = pydicom.uid.generate_uid()
    ct = _volume(tmp_path, "CT abdomen", modality="CT", study_uid=study)
    array = np.ones((16, 16, 3), dtype=np.float32)
    write_series(array, np.eye(4), tmp_path, series_description="3 slices", study_uid=study, name_prefix="s_")
    with pytest.raises(NoSeriesToSegment) as skipped:
        choose_series(tmp_path, Criteria(modalities=MR))
    message = str(skipped.value)
    assert "\n" not in message and str(tmp_path) in message
    assert f"skipped {ct} (CT, 'CT abdomen', 8 files): modality CT; the bundle takes MR" in message
    assert "(MR, '3 slices', 3 files): 3 slice(s); a volume needs at least 5" in message
    # A bundle naming no DICOM modality takes any; the CT volume is then the only candidate.
    assert choose_series(tmp_path, Criteria(modalities=frozenset())).series.series_uid == ct
    assert (
        choose_series(tmp_path, Criteria(modalities=MR, series_uid=ct)).reason == "the series UID asked for"
    )


def test_non_parallel_slices_are_not_a_volume(
    scanner_study: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The tri-plane localizer without its LOCALIZER image type is still skipped: not parallel slices."""
    folder, uids = scanner_study
    for path in folder.glob("loc*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.save_as(tmp_path / path.name)
    with pytest.raises(NoSeriesToSegment, match=r"'Localizer', 3 files\): slices in 3 orientations"):
        choose_series(tmp_path, Criteria(modalities=MR))


def test_rules_file_and_description_choose_between_volumes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two volumes are ambiguous (one line naming both); a rules file or --description picks one."""
    study = pydicom.uid.generate_uid()
    t1 = _volume(tmp_path / "in", "T1 axial", study_uid=study, name_prefix="t1_")
    t2 = _volume(tmp_path / "in", "T2 axial", study_uid=study, name_prefix="t2_")
    with pytest.raises(DicomSeriesError, match="2 series match the rules ambiguously") as ambiguous:
        choose_series(tmp_path / "in", Criteria(modalities=MR))
    assert "\n" not in str(ambiguous.value) and t1 in str(ambiguous.value) and t2 in str(ambiguous.value)

    rules = {
        "selections": [
            {
                "name": "T2 coronal",
                "conditions": {"SeriesDescription": "(?i)t2", "ImageOrientationPatient": "Coronal"},
            },
            {
                "name": "T2",
                "conditions": {
                    "Modality": "(?i)MR",
                    "SeriesDescription": "(?i)^t2",
                    "ImageType": ["SECONDARY", "!LOCALIZER"],
                    "ImageOrientationPatient": "Axial",
                    "SliceThickness": [1.5, 2.5],
                    "Rows": [15, ">"],
                },
            },
        ]
    }
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    selection = choose_series(tmp_path / "in", Criteria(rules=load_rules(path), modalities=MR))
    assert selection.series.series_uid == t2 and selection.reason == f"selection 'T2' of {path}"
    assert [(info.series_uid, reason) for info, reason in selection.skipped] == [
        (t1, f"not matched by selection 'T2' of {path}")
    ]
    assert choose_series(tmp_path / "in", Criteria(description="T1", modalities=MR)).series.series_uid == t1

    args = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--input", str(tmp_path / "in")]
    nothing = parse_rules({"selections": [{"name": "PET", "conditions": {"Modality": "PT"}}]})
    with pytest.raises(NoSeriesToSegment, match="matches no selection of rules"):
        choose_series(tmp_path / "in", Criteria(rules=nothing, modalities=MR))
    code, _, err = run_cli([*args, "--output", str(tmp_path / "o1"), "--description", "T3"], capsys)
    assert code == 2 and "no series to segment (description=T3)" in err and "\n" not in err.strip()
    assert not (tmp_path / "o1").exists()


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "not a JSON rules file"),
        ('{"rules": []}', 'expected {"selections": [...]}'),
        ('{"selections": [{"name": "a"}]}', "selection 1 'a': 'conditions' must be an object"),
        ('{"selections": [{"conditions": {"SeriesDescription": "(unclosed"}}]}', "bad regular expression"),
        ('{"selections": [{"conditions": {"Rows": ["many", ">"]}}]}', "[value, operator] needs a number"),
        ('{"selections": [{"conditions": {"Rows": {"min": 3}}}]}', "unsupported condition"),
    ],
)
def test_bad_rules_files_are_one_line(
    document: str, expected: str, scanner_study: tuple[Path, dict[str, str]], tmp_path: Path, capsys
) -> None:
    path = tmp_path / "rules.json"
    path.write_text(document)
    with pytest.raises(RulesError, match=None) as error:
        load_rules(path)
    assert expected in str(error.value) and str(path) in str(error.value)
    folder, _ = scanner_study
    args = [
        "infer",
        "--bundle",
        str(HIPPOCAMPUS_BUNDLE),
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "o"),
    ]
    code, _, err = run_cli([*args, "--rules", str(path)], capsys)
    assert code == 2 and expected in err and "\n" not in err.strip() and not (tmp_path / "o").exists()


def test_conditions_match_as_monai_deploy_does() -> None:
    """The SDK's matching: text equal ignoring case or regex search; numbers exact / range / relational /
    regex; multi-valued terms contained or (with !) not; an empty condition always, a missing value never."""
    multi = pydicom.multival.MultiValue(str, ["ORIGINAL", "PRIMARY", "AXIAL"])
    cases = [
        ("Modality", "mr", "MR", True),
        ("SeriesDescription", "(?i)^t1", "T1 mprage", True),
        ("SeriesDescription", "flair", "T1 mprage", False),
        ("SliceThickness", 2.0, 2.0, True),
        ("SliceThickness", [1, 3], 3.0, True),
        ("SliceThickness", [3, ">="], 2.5, False),
        ("SliceThickness", [2, "!="], 2.5, True),
        ("SliceThickness", r"2\.\d+", 2.5, True),
        ("ImageType", ["PRIMARY", "!LOCALIZER"], multi, True),
        ("ImageType", "!AXIAL", multi, False),
        ("ImageOrientationPatient", "Axial", [1, 0, 0, 0, 1, 0], True),
        ("ImageOrientationPatient", "sagittal", [0, 1, 0, 0, 0, -1], True),
        ("ImageOrientationPatient", "Axial", [1, 0, 0, 0, 0, -1], False),
        ("BodyPartExamined", "", None, True),
        ("BodyPartExamined", "HEAD", None, False),
    ]
    for keyword, wanted, value, expected in cases:
        assert condition_matches(keyword, wanted, value) is expected, (keyword, wanted, value)


def test_accepted_modalities_from_metadata() -> None:
    def taking(modality: str) -> frozenset[str]:
        return accepted_modalities({"network_data_format": {"inputs": {"image": {"modality": modality}}}})

    assert taking("MR") == MR and taking("MRI") == MR and taking("T1, T2") == MR
    assert (
        taking("CT") == {"CT"} and taking("image") == frozenset() and accepted_modalities({}) == frozenset()
    )
    metadata = json.loads((HIPPOCAMPUS_BUNDLE / "configs" / "metadata.json").read_text())
    assert accepted_modalities(metadata) == MR


def test_pacs_study_with_a_localizer_needs_no_flags(
    orthanc: OrthancServer, scanner_study: tuple[Path, dict[str, str]], tmp_path: Path, capsys
) -> None:
    """The same scanner study on Orthanc: both image series are pulled, the localizer is skipped on its
    headers, the SEG of the volume is stored in the study."""
    folder, uids = scanner_study
    stored = DicomWebPacs(orthanc.dicomweb_url).store(sorted(folder.glob("*.dcm")))
    assert not stored.failed and len(stored.stored) == 38
    args = [
        "pacs",
        "--url",
        orthanc.dicomweb_url,
        "--study",
        uids["study"],
        "--bundle",
        str(HIPPOCAMPUS_BUNDLE),
    ]
    code, out, err = run_cli([*args, "--work", str(tmp_path / "work")], capsys)
    assert code == 0, err
    assert f"segmented series {uids['volume']} of study {uids['study']}" in out
    assert f"skipped series {uids['localizer']}" in out
    [seg_series] = DicomWebPacs(orthanc.dicomweb_url).find_series(uids["study"], modality="SEG")
    [seg_file] = (tmp_path / "work" / "output").iterdir()
    seg = pydicom.dcmread(seg_file, stop_before_pixels=True)
    assert seg_series["SeriesInstanceUID"] == seg.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["volume"]


def test_an_original_series_is_taken_over_a_derived_reformat(tmp_path: Path) -> None:
    """A scanner's original axial series beside a derived coronal reformat: the original is segmented
    with no flags, the reformat named as skipped; a rules file can still ask for the reformat."""
    study = pydicom.uid.generate_uid()
    original = _volume(tmp_path, "T1 axial", study_uid=study, name_prefix="ax_")
    reformat = _volume(tmp_path, "T1 MPR coronal", study_uid=study, name_prefix="mpr_")
    for path in tmp_path.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if path.name.startswith("ax_") else ["DERIVED", "MPR"]
        ds.save_as(path)
    selection = choose_series(tmp_path, Criteria(modalities=MR))
    assert selection.series.series_uid == original
    assert selection.reason.endswith("; the original series among derived ones")
    assert [(info.series_uid, reason) for info, reason in selection.skipped] == [
        (reformat, "a derived series (ImageType not ORIGINAL) beside an original one")
    ]
    rules = parse_rules({"selections": [{"name": "MPR", "conditions": {"SeriesDescription": "(?i)mpr"}}]})
    assert choose_series(tmp_path, Criteria(rules=rules, modalities=MR)).series.series_uid == reformat
