"""The MONAI Deploy application (``apps/unet_seg``, :mod:`unet_monai.deploy`) run end to end on a real
series: the SDK's DICOM loader, its series selector with the app's ``rules.json``, the hippocampus bundle's
shipped weights and the SDK's SEG writer; its SEG must equal ``unet-monai infer --format seg``'s voxel for
voxel. Skips when the ``deploy`` extra (monai-deploy-app-sdk) is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import HIPPOCAMPUS_BUNDLE, REPO_ROOT, require
from tests.dicom_helpers import HIPPOCAMPUS_IMAGE, PATIENT_ID, PATIENT_NAME
from unet_monai.cli import main
from unet_monai.dicom.seg import read_seg
from unet_monai.dicom.write_series import write_series

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("monai.deploy") is None,
    reason="monai-deploy-app-sdk is not installed: pip install -e '.[deploy]' (make deploy)",
)

APP = REPO_ROOT / "apps" / "unet_seg"
RULES = APP / "rules.json"
APP_TIMEOUT_S = 300


def test_app_folder_rules_are_the_default_rules() -> None:
    from unet_monai.deploy.app import DEFAULT_RULES, load_rules

    assert json.loads(RULES.read_text()) == DEFAULT_RULES
    assert json.loads(load_rules(RULES)) == DEFAULT_RULES


def test_bad_rules_file_is_one_line_naming_it(tmp_path: Path) -> None:
    from unet_monai.deploy.app import load_rules
    from unet_monai.dicom.selection import RulesError

    path = tmp_path / "rules.json"
    path.write_text('{"selections": [{"name": "T1", "conditions": {"SeriesDescription": "(t1"}}]}')
    with pytest.raises(RulesError, match=r"rules.json: selection 1 'T1': SeriesDescription: bad regular"):
        load_rules(path)


def test_model_path_is_a_bundle_or_a_folder_holding_one(tmp_path: Path) -> None:
    from unet_monai.deploy.app import bundle_folder

    assert bundle_folder(HIPPOCAMPUS_BUNDLE) == HIPPOCAMPUS_BUNDLE.resolve()
    models = tmp_path / "models"  # a MAP's /opt/holoscan/models: the bundle under its own name
    (models / "hippocampus_unet2d" / "configs").mkdir(parents=True)
    (models / "hippocampus_unet2d" / "configs" / "metadata.json").write_text("{}")
    assert bundle_folder(models) == (models / "hippocampus_unet2d").resolve()
    (models / "other" / "configs").mkdir(parents=True)
    (models / "other" / "configs" / "metadata.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="found 2"):
        bundle_folder(models)


def _set_image_type(paths: list[Path], image_type: list[str]) -> None:
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.ImageType = image_type
        dataset.save_as(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real hippocampus MR volume as a primary series (shuffled file names), a 3-slice localizer of the
    same study and a stray text file, in one folder."""
    image = nib.load(require(HIPPOCAMPUS_IMAGE))
    volume = np.asarray(image.dataobj)
    folder = tmp_path_factory.mktemp("study")
    common = {"patient_name": PATIENT_NAME, "patient_id": PATIENT_ID, "study_uid": pydicom.uid.generate_uid()}
    series = write_series(
        volume, image.affine, folder / "t1", series_description="T1", shuffle_seed=4, **common
    )
    localizer = write_series(
        volume[:, :, 10:13], image.affine, folder / "localizer", series_description="3-plane loc",
        series_number=2, **common,
    )  # fmt: skip
    _set_image_type(series, ["ORIGINAL", "PRIMARY", "AXIAL"])
    _set_image_type(localizer, ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    (folder / "notes.txt").write_text("not a DICOM file\n")
    return folder


def _run_app(study: Path, output: Path, rules: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python apps/unet_seg -i STUDY -o OUTPUT -m BUNDLE`` (the MAP's entry point), one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UNET_MONAI_RULES", None)
    if rules is not None:
        env["UNET_MONAI_RULES"] = str(rules)
    command = [sys.executable, str(APP), "-i", str(study), "-o", str(output), "-m", str(HIPPOCAMPUS_BUNDLE)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=APP_TIMEOUT_S, env=env, cwd=output.parent
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-40:])


def test_app_segments_the_selected_series_as_unet_monai_infer_does(study: Path, tmp_path: Path) -> None:
    result = _run_app(study, tmp_path / "deploy")
    assert result.returncode == 0, _tail(result)
    written = sorted((tmp_path / "deploy").glob("*.dcm"))
    assert len(written) == 1, _tail(result)
    infer = ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--input", str(study), "--format", "seg"]
    assert main([*infer, "--output", str(tmp_path / "cli"), "--rules", str(RULES)]) == 0
    (cli_seg,) = sorted((tmp_path / "cli").glob("*_seg.dcm"))

    sources = [
        pydicom.dcmread(path, stop_before_pixels=True) for path in sorted((study / "t1").glob("*.dcm"))
    ]
    deploy_header = pydicom.dcmread(written[0], stop_before_pixels=True)
    cli_header = pydicom.dcmread(cli_seg, stop_before_pixels=True)
    # The localizer and the stray file were skipped: the SEG references exactly the T1 series' instances.
    (referenced,) = deploy_header.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in sources
    }
    assert deploy_header.StudyInstanceUID == sources[0].StudyInstanceUID
    # The same segments (labels, codes) as the CLI's SEG, from the bundle's metadata.
    for ours, theirs in zip(deploy_header.SegmentSequence, cli_header.SegmentSequence, strict=True):
        assert ours.SegmentNumber == theirs.SegmentNumber and ours.SegmentLabel == theirs.SegmentLabel
        for sequence in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
            assert ours[sequence][0].CodeValue == theirs[sequence][0].CodeValue

    # Voxel for voxel, per referenced source instance (read_seg also checks each frame's geometry).
    deploy_mask = read_seg(written[0], sources)
    cli_mask = read_seg(cli_seg, sources)
    assert deploy_mask.shape == (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    assert int(np.count_nonzero(deploy_mask != cli_mask)) == 0
    assert set(np.unique(deploy_mask).tolist()) == {0, 1, 2}


def test_app_fails_in_one_line_when_the_rules_select_nothing(study: Path, tmp_path: Path) -> None:
    rules = tmp_path / "ct_only.json"
    rules.write_text(json.dumps({"selections": [{"name": "CT", "conditions": {"Modality": "(?i)CT"}}]}))
    result = _run_app(study, tmp_path / "deploy", rules)
    assert result.returncode != 0
    assert "NoSeriesToSegment: the selection rules matched no series of the input" in result.stderr
    assert not list((tmp_path / "deploy").glob("*.dcm"))
