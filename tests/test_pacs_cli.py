"""`unet-monai pacs` against a real Orthanc on loopback: a real hippocampus volume uploaded as a DICOM
series, segmented from the PACS, its SEG stored back by STOW-RS and by C-STORE, then queried, pulled
and compared with local segmentation of the same series."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import HIPPOCAMPUS_BUNDLE, require
from tests.dicom_helpers import (
    HIPPOCAMPUS_IMAGE,
    PATIENT_ID,
    PATIENT_NAME,
    SMALL,
    SMALL_ARGS,
    balanced_checkpoint,
)
from tests.orthanc_server import (
    OrthancServer,
    free_port,
)
from unet_monai.cli import main
from unet_monai.dicom.infer import pacs_candidates, parse_node, segment_dicom
from unet_monai.dicom.pacs import DicomWebPacs
from unet_monai.dicom.seg import read_seg
from unet_monai.dicom.write_series import write_series

PRINTED_SEG = re.compile(r"SEG SOPInstanceUID: (\S+) \(series (\S+)\)")


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> Path:
    folder = tmp_path_factory.mktemp("balanced")
    return balanced_checkpoint(trained_checkpoint, require(HIPPOCAMPUS_IMAGE), folder / "model.pt")


@dataclass(frozen=True)
class Study:
    study_uid: str
    series_uid: str
    files: list[Path]  # the uploaded series, slice order

    def sources(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(path) for path in self.files]


@pytest.fixture(scope="module")
def study(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """The real hippocampus volume as an MR series (shuffled file names), stored on Orthanc by STOW-RS."""
    image = nib.load(require(HIPPOCAMPUS_IMAGE))
    folder = tmp_path_factory.mktemp("series")
    files = write_series(
        np.asarray(image.dataobj),
        image.affine,
        folder,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        shuffle_seed=7,
    )
    result = DicomWebPacs(orthanc.dicomweb_url).store(files)
    assert len(result.stored) == len(files) and not result.failed
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Study(str(header.StudyInstanceUID), str(header.SeriesInstanceUID), files)


@pytest.fixture(scope="module")
def local_seg(study: Study, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`segment_dicom` of the same series, on this machine."""
    output = tmp_path_factory.mktemp("local")
    result = segment_dicom(
        HIPPOCAMPUS_BUNDLE, study.files[0].parent, output, checkpoint=checkpoint, overrides=SMALL
    )
    assert result["labels"] == [0, 1, 2]
    return result["files"]["seg"]


def _run_pacs(orthanc: OrthancServer, study: Study, checkpoint: Path, *extra: str) -> int:
    args = ["pacs", "--url", orthanc.dicomweb_url, "--study", study.study_uid]
    args += ["--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(checkpoint), *SMALL_ARGS]
    return main([*args, *extra])


def _assert_seg_on_pacs(
    orthanc: OrthancServer, study: Study, printed: str, local_seg: Path, tmp_path: Path
) -> None:
    """The printed SEG is a SEG series of the study, references the source series' instances, and holds
    the local segmentation's frames."""
    sop_uid, seg_series = PRINTED_SEG.search(printed).groups()
    pacs = DicomWebPacs(orthanc.dicomweb_url)
    found = {s["SeriesInstanceUID"]: s for s in pacs.find_series(study.study_uid, modality="SEG")}
    assert found[seg_series]["NumberOfSeriesRelatedInstances"] == 1
    [pulled] = pacs.pull_series(study.study_uid, seg_series, tmp_path / "seg")
    seg = pydicom.dcmread(pulled)
    assert seg.SOPInstanceUID == sop_uid and seg.Modality == "SEG" and seg.StudyInstanceUID == study.study_uid
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == study.series_uid
    sources = study.sources()
    instances = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence}
    assert instances == {str(ds.SOPInstanceUID) for ds in sources}
    np.testing.assert_array_equal(read_seg(pulled, sources), read_seg(local_seg, sources))


def test_pacs_stores_seg_by_stow_rs(
    orthanc: OrthancServer,
    study: Study,
    checkpoint: Path,
    local_seg: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert _run_pacs(orthanc, study, checkpoint, "--modality", "MR") == 0
    printed = capsys.readouterr()
    assert f"stored on: {orthanc.dicomweb_url}" in printed.out
    _assert_seg_on_pacs(orthanc, study, printed.out, local_seg, tmp_path)
    for secret in ("Secretname", PATIENT_ID):
        assert secret not in caplog.text and secret not in printed.out and secret not in printed.err


def test_pacs_stores_seg_by_c_store_skipping_seg_series(
    orthanc: OrthancServer,
    study: Study,
    checkpoint: Path,
    local_seg: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """With a SEG already in the study, the image series is still the only choice; --work keeps files."""
    DicomWebPacs(orthanc.dicomweb_url).store([local_seg])
    node = f"{orthanc.dicom_host}:{orthanc.dicom_port}:{orthanc.aet}"
    work = tmp_path / "work"
    assert _run_pacs(orthanc, study, checkpoint, "--c-store", node, "--work", str(work)) == 0
    printed = capsys.readouterr().out
    assert f"stored on: dicom://{orthanc.aet}@{orthanc.dicom_host}:{orthanc.dicom_port}" in printed
    _assert_seg_on_pacs(orthanc, study, printed, local_seg, tmp_path)
    assert len(list((work / "pulled" / study.series_uid).glob("*.dcm"))) == len(study.files)
    assert [p.name for p in (work / "output").iterdir()] == [f"{study.series_uid}_seg.dcm"]


def test_pacs_errors_are_one_line(
    orthanc: OrthancServer, study: Study, checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    unknown = "1.2.826.0.1.3680043.8.498.1234567890"
    cases = [
        (orthanc.dicomweb_url, ["--study", unknown], f"no series in study {unknown}"),
        (orthanc.dicomweb_url, ["--series-uid", unknown], f"no series {unknown} in study"),
        (orthanc.dicomweb_url, ["--c-store", "localhost:port:AET"], "must be HOST:PORT:AET"),
        (f"http://127.0.0.1:{free_port()}/dicom-web", [], "cannot reach DICOMweb server"),
    ]
    for url, extra, expected in cases:
        args = ["pacs", "--url", url, "--study", study.study_uid, "--bundle", str(HIPPOCAMPUS_BUNDLE)]
        args += ["--checkpoint", str(checkpoint), *extra]
        assert main(args) == 2
        error = capsys.readouterr().err.strip()
        assert expected in error and "\n" not in error


def test_pacs_candidates_and_parse_node() -> None:
    series = [
        {"SeriesInstanceUID": "1.1", "Modality": "MR", "NumberOfSeriesRelatedInstances": 30},
        {"SeriesInstanceUID": "1.2", "Modality": "SEG", "NumberOfSeriesRelatedInstances": 1},
        {"SeriesInstanceUID": "1.3", "Modality": "MR", "NumberOfSeriesRelatedInstances": 20},
        {"SeriesInstanceUID": "1.4", "Modality": "MR", "SeriesDescription": "Localizer"},
    ]

    def uids(*args: str | None) -> list[str]:
        return [s["SeriesInstanceUID"] for s in pacs_candidates(series, "9", "http://pacs", *args)]

    assert uids() == ["1.1", "1.3", "1.4"]  # pulled; the default rule and --rules decide on the headers
    assert uids("1.3") == ["1.3"]
    assert uids(None, "(?i)^loc") == ["1.4"]
    with pytest.raises(ValueError, match=r"no series 1.2 in study 9 on http://pacs; image series: 1\.1 \(MR"):
        pacs_candidates(series, "9", "http://pacs", "1.2")
    with pytest.raises(ValueError, match="no image series with a description matching 'T2' in study 9"):
        pacs_candidates(series, "9", "http://pacs", None, "T2")
    assert parse_node("127.0.0.1:4242:ORTHANC") == ("127.0.0.1", 4242, "ORTHANC")
    for text in ("host:4242", "host:99999:AET", "host:4242:" + "A" * 17):
        with pytest.raises(ValueError, match="HOST:PORT:AET"):
            parse_node(text)


def test_help_lists_the_options(capsys: pytest.CaptureFixture) -> None:
    for command, options in (
        ("pacs", ("--study", "--c-store", "--work")),
        ("infer", ("--format", "--seg-type")),
    ):
        with pytest.raises(SystemExit) as exit_code:
            main([command, "--help"])
        assert exit_code.value.code == 0
        text = capsys.readouterr().out
        assert all(option in text for option in options)
