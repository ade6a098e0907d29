"""The same rules file selects the same series here as in MONAI Deploy: for each condition set, the series
``unet_monai.dicom.selection`` matches equal those the SDK's own ``DICOMSeriesSelectorOperator`` matches on
the same study (loaded by the SDK's ``DICOMDataLoaderOperator``). Skips without the deploy extra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from unet_monai.dicom.selection import matches_selection
from unet_monai.dicom.series import find_series
from unet_monai.dicom.write_series import write_series

sdk_core = pytest.importorskip(
    "monai.deploy.core", reason="monai-deploy-app-sdk is not installed (pip install 'unet-monai[deploy]')"
)
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator  # noqa: E402
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator  # noqa: E402

AXIAL = np.diag([1.0, 1.0, 2.0, 1.0])
CORONAL = np.array([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
# (description, modality, affine, ImageType, slices)
SERIES = [
    ("T1 axial", "MR", AXIAL, ["ORIGINAL", "PRIMARY", "AXIAL"], 8),
    ("T2 axial", "MR", AXIAL, ["DERIVED", "SECONDARY"], 8),
    ("T2 coronal", "MR", CORONAL, ["ORIGINAL", "PRIMARY", "OTHER"], 6),
    ("CT abdomen", "CT", np.diag([0.8, 0.8, 5.0, 1.0]), ["ORIGINAL", "PRIMARY", "AXIAL"], 6),
    ("Localizer", "MR", AXIAL, ["ORIGINAL", "PRIMARY", "LOCALIZER"], 3),
]
CONDITIONS = [
    {"Modality": "(?i)MR"},
    {"Modality": "ct"},
    {"SeriesDescription": "(?i)^t2"},
    {"SeriesDescription": "AXIAL"},
    {"ImageType": ["PRIMARY", "!LOCALIZER"]},
    {"ImageType": "!SECONDARY"},
    {"ImageType": ["ORIGINAL", "AXIAL"]},
    {"SliceThickness": [1, 3]},
    {"SliceThickness": [3, ">"]},
    {"SliceThickness": [2, "!="]},
    {"SliceThickness": "5"},
    {"Rows": 12},
    {"Columns": [10, ">="]},
    {"ImageOrientationPatient": "Coronal"},
    {"ImageOrientationPatient": "Axial"},
    {"Modality": "MR", "SeriesDescription": "t2", "SliceThickness": [2, "<="]},
    {"BodyPartExamined": "HEAD"},
]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    study_uid = pydicom.uid.generate_uid()
    for number, (description, modality, affine, image_type, slices) in enumerate(SERIES, start=1):
        array = np.random.default_rng(number).integers(0, 300, size=(12, 14, slices)).astype(np.float32)
        paths = write_series(
            array,
            affine,
            folder,
            modality=modality,
            series_description=description,
            series_number=number,
            study_uid=study_uid,
            name_prefix=f"s{number}_",
        )
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.ImageType = image_type
            ds.PatientPosition = "HFS"  # the SDK's orientation matching needs it
            ds.save_as(path)
    return folder


@pytest.mark.parametrize("conditions", CONDITIONS, ids=[str(c) for c in CONDITIONS])
def test_conditions_select_the_same_series_as_the_sdk(study: Path, conditions: dict) -> None:
    fragment = sdk_core.Fragment()
    studies = DICOMDataLoaderOperator(fragment, name="loader").load_data_to_studies(study)
    selector = DICOMSeriesSelectorOperator(fragment, name="selector")
    rules = {"selections": [{"name": "test", "conditions": conditions}]}
    selected = selector.filter(rules, studies, all_matched=True)
    by_sdk = {str(s.series.SeriesInstanceUID) for found in selected for s in found.selected_series}
    ours = {info.series_uid for info in find_series(study) if matches_selection(info, conditions)}
    assert ours == by_sdk
    assert sum(len(found.get_all_series()) for found in studies) == len(SERIES)  # the SDK read all five
