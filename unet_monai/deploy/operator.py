"""The SDK operator that runs a bundle of this project on the series the selector chose.

Input ``study_selected_series_list`` (the SDK's ``DICOMSeriesSelectorOperator`` output); output
``seg_image``: the label mask as ``(instances, rows, columns)`` uint8 frames in the order of the selected
series' SOP instances, which is what the SDK's ``DICOMSegmentationWriterOperator`` hands to highdicom as one
frame per source image.

The series is read from its files with :func:`unet_monai.dicom.series.read_series` and segmented by
:func:`unet_monai.dicom.infer.run_bundle_on_volume`, exactly as ``unet-monai infer`` does, so that both give
the same mask voxel for voxel.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series import DICOMSeries
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries

from unet_monai.dicom.infer import run_bundle_on_volume
from unet_monai.dicom.selection import NoSeriesToSegment
from unet_monai.dicom.series import DicomVolume, read_series, shown
from unet_monai.io import trained_weights

logger = logging.getLogger(__name__)

INPUT_SERIES = "study_selected_series_list"
OUTPUT_MASK = "seg_image"


def first_selected_series(selected: list[StudySelectedSeries] | None) -> DICOMSeries:
    """The series the SDK's SEG writer references: the first selected series of the first study."""
    for study in selected or []:
        if study.selected_series:
            return study.selected_series[0].series
    raise NoSeriesToSegment(
        "the selection rules matched no series of the input (the series_selector log says why each "
        "series was skipped)"
    )


def series_files(series: DICOMSeries) -> list[Path]:
    """The files the SDK's loader read the series' instances from, in the series' instance order."""
    files = []
    for instance in series.get_sop_instances():
        name = getattr(instance.get_native_sop_instance(), "filename", None)
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"series {shown(series.SeriesInstanceUID)}: an instance was not read from a file"
            )
        files.append(Path(name))
    return files


def frames_in_series_order(volume: DicomVolume, mask: np.ndarray, series: DICOMSeries) -> np.ndarray:
    """``mask`` (on ``volume``'s grid) as one frame per SOP instance of ``series``, in its instance order."""
    frames = volume.frames(mask)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.datasets)}
    order = [index[str(i.get_native_sop_instance().SOPInstanceUID)] for i in series.get_sop_instances()]
    return np.ascontiguousarray(frames[order]).astype(np.uint8)


class BundleSegmentationOperator(Operator):
    """Segment the selected series with ``bundle`` (``models/model.pt``, or ``checkpoint`` when given)."""

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        bundle: Path,
        checkpoint: Path | None = None,
        overrides: dict | None = None,
        **kwargs: Any,
    ) -> None:
        self.bundle = Path(bundle).resolve()
        self.overrides = dict(overrides or {})
        self.checkpoint = trained_weights(self.bundle, checkpoint, self.overrides)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(INPUT_SERIES)
        spec.output(OUTPUT_MASK)

    def segment(self, series: DICOMSeries) -> np.ndarray:
        """The mask of ``series`` as ``(instances, rows, columns)`` frames in its instance order."""
        volume = read_series(series_files(series), rule="only")
        logger.info(
            "segmenting series %s (%d slices) with %s",
            shown(volume.series_uid),
            len(volume.files),
            self.bundle.name,
        )
        with tempfile.TemporaryDirectory(prefix="unet-monai-deploy-") as temporary:
            mask = run_bundle_on_volume(self.bundle, volume, Path(temporary), self.checkpoint, self.overrides)
        if int(mask.max()) > 255:
            raise ValueError(f"bundle {self.bundle} gave labels above 255")
        return frames_in_series_order(volume, mask, series)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        series = first_selected_series(op_input.receive(INPUT_SERIES))
        op_output.emit(self.segment(series), OUTPUT_MASK)
