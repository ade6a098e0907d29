"""Bad DICOM input that must neither write outside ``--output`` nor be mistaken for an image series.

- Hostile SeriesInstanceUIDs (an absolute path, ``..``, NUL, 300 characters, unicode) name the outputs:
  every written file lies inside ``--output`` (a sanitised name) or the run stops with one line.
- ``--output`` equal to ``--input``: the second run must not count the first run's SEG as a series, nor
  trip over its ``_seg.nii.gz``; the SEG is skipped by name, in the log.

The series is a copy of the real MR series (its header holds a patient name and ID that must never be
printed or logged); the hippocampus 2D bundle runs with random weights (the masks are noise).
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.dataelem import DataElement

from tests.conftest import AXIAL_ONLY, REPO_ROOT, SHARED_DATA, require, run_cli
from unet_monai.bundle import load_workflow

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DICOM_SERIES = SHARED_DATA / "dicom-mr-series-nolabel" / "Study1" / "13_HCropVolume"
SMALL = {**AXIAL_ONLY, "network_def#features": 8}
PATIENT = ("Avasarala", "PGBM-002")  # in the real series' header: never printed or logged


@pytest.fixture(autouse=True)
def _live_log_streams() -> None:
    """A bundle's logging.conf points the root logger at the sys.stdout of that moment (an earlier
    test's capture, closed by now): point such handlers at the current one."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of the small 2D network: inference runs, the masks are noise."""
    torch.manual_seed(0)
    network = load_workflow(BUNDLE, "inference", **SMALL).parser.get_parsed_content("network_def")
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(network.state_dict(), path)
    return path


def infer(source: Path, output: Path, checkpoint: Path, fmt: str | None, capsys) -> tuple[int, str, str]:
    """``unet-monai infer`` of a DICOM folder in-process (``--format fmt`` unless None): exit code,
    stdout, stderr."""
    args = ["infer", "--bundle", str(BUNDLE), "--input", str(source), "--output", str(output)]
    args += ["--checkpoint", str(checkpoint), *(["--format", fmt] if fmt else [])]
    args += [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return run_cli(args, capsys)


def assert_no_patient_identifiers(*texts: str) -> None:
    source = pydicom.dcmread(DICOM_SERIES / "1.dcm")
    assert PATIENT[0] in str(source.PatientName) and source.PatientID == PATIENT[1]
    for text in texts:
        assert PATIENT[0] not in text and PATIENT[1] not in text


def copy_with_series_uid(folder: Path, uid: str) -> Path:
    """The real MR series with every file's SeriesInstanceUID set to ``uid`` (written as is, however
    invalid: a unicode one as UTF-8 text, as a hostile file would hold it)."""
    shutil.copytree(require(DICOM_SERIES), folder)
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if uid.isascii():
                ds.SeriesInstanceUID = uid
            else:
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds[0x0020000E] = DataElement(0x0020000E, "LO", uid)
            ds.save_as(path)
    return folder


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


HOSTILE_UIDS = {
    "absolute": "{elsewhere}/x",
    "parent": "../../x",
    "nul": "1.2.3\x00.4",
    "long": "1." + "2" * 298,
    "unicode": "1.2.\u00fc.\u691c\u67fb",
}


@pytest.mark.parametrize("fmt", ["nifti", "seg"])
@pytest.mark.parametrize("case", list(HOSTILE_UIDS))
def test_series_uid_never_names_a_file_outside_the_output(
    case: str,
    fmt: str,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    package_log: io.StringIO,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    uid = HOSTILE_UIDS[case].format(elsewhere=elsewhere)
    series = copy_with_series_uid(tmp_path / "series", uid)
    # The staging folder too lies under tmp_path, so that "../../x" from it would land where we look.
    staging = tmp_path / "a" / "tmp"
    staging.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    output = tmp_path / "a" / "out"
    before = all_files(tmp_path)
    code, out, err = infer(series, output, checkpoint, fmt, capsys)
    new = all_files(tmp_path) - before
    outside = sorted(str(p) for p in new if output not in p.parents)
    assert not outside, f"written outside --output: {outside}"
    assert "Traceback" not in err, err[-2000:]
    if code == 0:
        written = sorted(p.name for p in output.iterdir())
        assert len(written) == 1 and all(p.parent == output for p in new), written
        for name in written:  # one harmless component: ASCII, not hidden, capped
            assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}_seg\.(dcm|nii\.gz)", name), name
    else:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, err[-2000:]
        assert "SeriesInstanceUID" in errors[0] and "not a valid DICOM UID" in errors[0], errors[0]
        assert not new
    for text in (out, err):
        assert "\x00" not in text and all(len(line) < 2000 for line in text.splitlines())
    assert_no_patient_identifiers(out, err, package_log.getvalue())


def test_our_own_outputs_beside_the_series_are_skipped(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], package_log: io.StringIO
) -> None:
    """A run's SEG and NIfTI mask put beside the series (by hand, or by an earlier run writing into the
    input folder): the next run segments the same series, skips the SEG by name (logged) and the NIfTI
    mask without calling it an unreadable DICOM file (it said "2 series match" before)."""
    series = tmp_path / "series"
    shutil.copytree(require(DICOM_SERIES), series)
    uid = str(pydicom.dcmread(series / "1.dcm").SeriesInstanceUID)
    code, out, err = infer(series, tmp_path / "first", checkpoint, "both", capsys)
    assert code == 0, err[-2000:]
    for path in (tmp_path / "first").iterdir():
        shutil.copy(path, series / path.name)
    seg, mask = series / f"{uid}_seg.dcm", series / f"{uid}_seg.nii.gz"
    assert seg.is_file() and mask.is_file()
    first = package_log.getvalue()
    package_log.truncate(0)
    package_log.seek(0)

    code, out2, err2 = infer(series, tmp_path / "second", checkpoint, "both", capsys)
    assert code == 0, err2[-2000:]
    logged = package_log.getvalue()
    assert re.search(rf"skipping {re.escape(str(seg))}: a DICOM SEG object, not an image", logged), logged[
        -3000:
    ]
    assert f"{mask}: not a readable DICOM file" not in logged
    assert sorted(p.name for p in (tmp_path / "second").iterdir()) == [seg.name, mask.name]
    assert f"series {uid}" in out2
    assert_no_patient_identifiers(out, err, out2, err2, first, logged)


def test_segment_dicom_into_its_own_input_folder_twice(
    checkpoint: Path, tmp_path: Path, package_log: io.StringIO
) -> None:
    """The library call with the output folder equal to the input folder, twice: the same two files."""
    from unet_monai.dicom.infer import segment_dicom

    series = tmp_path / "series"
    shutil.copytree(require(DICOM_SERIES), series)
    for _ in range(2):
        result = segment_dicom(
            BUNDLE, series, series, formats=("seg", "nifti"), checkpoint=checkpoint, overrides=SMALL
        )
    names = sorted(p.name for p in series.iterdir() if "_seg" in p.name)
    assert names == sorted(p.name for p in result["files"].values())
    assert "skipping" in package_log.getvalue() and "a DICOM SEG object" in package_log.getvalue()


@pytest.mark.parametrize("fmt", ["seg", None])
def test_folder_of_only_non_image_objects_is_one_error(
    fmt: str | None,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    package_log: io.StringIO,
) -> None:
    """A folder holding only a SEG (our own, from an earlier run) has no image series: one line, with or
    without --format (never the SEG's frames handed to the bundle's reader as an image)."""
    series = tmp_path / "series"
    shutil.copytree(require(DICOM_SERIES), series)
    code, _, err = infer(series, tmp_path / "first", checkpoint, "seg", capsys)
    assert code == 0, err[-2000:]
    (seg,) = (tmp_path / "first").glob("*_seg.dcm")
    only_seg = tmp_path / "only_seg"
    only_seg.mkdir()
    shutil.copy(seg, only_seg / seg.name)
    code, out, err = infer(only_seg, tmp_path / "second", checkpoint, fmt, capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert re.match(rf"error: {re.escape(str(only_seg))}: no DICOM image series found", errors[0]), err
    assert not (tmp_path / "second").exists() or not list((tmp_path / "second").iterdir())
    assert_no_patient_identifiers(out, err, package_log.getvalue())
