"""The application: DICOM loader -> series selector (rules) -> bundle inference -> DICOM SEG writer.

Run it as the SDK's apps are run: ``python -m unet_monai.deploy -i DICOM_FOLDER -o OUTPUT -m BUNDLE``, or
with ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH`` set (as in a MONAI
Application Package). The model path is the bundle folder, or a folder holding exactly one bundle
folder: a MAP's ``/opt/holoscan/models`` holds the bundle given to ``--models`` under its own name.
The selection rules (MONAI Deploy's ``DICOMSeriesSelectorOperator`` JSON) come from ``UNET_MONAI_RULES``
(a file), else the ``rules`` given to :func:`main`, else :data:`DEFAULT_RULES`.
The SEG is written as ``OUTPUT/<SOPInstanceUID>.dcm``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

from unet_monai.deploy.descriptions import model_info, segment_descriptions
from unet_monai.deploy.operator import INPUT_SERIES, OUTPUT_MASK, BundleSegmentationOperator
from unet_monai.dicom import selection
from unet_monai.dicom.infer import bundle_metadata

RULES_ENV = "UNET_MONAI_RULES"
# An original, primary MR series that is not a localizer (the rules the app folder ships as rules.json).
DEFAULT_RULES: dict = {
    "selections": [
        {
            "name": "MR image series",
            "conditions": {"Modality": "(?i)MR", "ImageType": ["PRIMARY", "!LOCALIZER"]},
        }
    ]
}
SERIES_DESCRIPTION = "unet-monai segmentation (MONAI Deploy)"


def load_rules(path: str | Path | None = None) -> str:
    """The selection rules as the selector's JSON text: from ``$UNET_MONAI_RULES``, else ``path``, else
    :data:`DEFAULT_RULES`; a file is checked as ``unet-monai infer --rules`` checks it (a one-line
    :class:`unet_monai.dicom.selection.RulesError` naming the file and the selection)."""
    chosen = os.environ.get(RULES_ENV) or path
    if chosen is None:
        return json.dumps(DEFAULT_RULES)
    checked = selection.load_rules(chosen)
    return json.dumps({"selections": [{"name": n, "conditions": c} for n, c in checked.selections]})


def bundle_folder(model_path: str | Path) -> Path:
    """The bundle at ``model_path``: the folder itself when it has ``configs/metadata.json``, else its one
    sub-folder that has; a one-line FileNotFoundError otherwise."""
    path = Path(model_path).resolve()
    if (path / "configs" / "metadata.json").is_file():
        return path
    found = sorted(p for p in path.glob("*/configs/metadata.json")) if path.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path}: the model path must be a bundle folder (configs/metadata.json) or hold exactly one, "
            f"found {len(found)}"
        )
    return found[0].parent.parent


class UnetSegApplication(Application):
    """Segments the first series the rules select with the bundle at the model path; writes a DICOM SEG."""

    def __init__(self, *args: Any, rules: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rules_text = load_rules(rules)

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        bundle = bundle_folder(context.model_path)
        metadata = bundle_metadata(bundle)
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), name="dicom_loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=self.rules_text, name="series_selector")
        inference = BundleSegmentationOperator(self, bundle=bundle, name="bundle_inference")
        writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=segment_descriptions(metadata),
            output_folder=Path(context.output_path),
            model_info=model_info(metadata),
            custom_tags={"SeriesDescription": SERIES_DESCRIPTION},
            name="seg_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, inference, {(INPUT_SERIES, INPUT_SERIES)})
        self.add_flow(selector, writer, {(INPUT_SERIES, INPUT_SERIES)})
        self.add_flow(inference, writer, {(OUTPUT_MASK, OUTPUT_MASK)})


def main(argv: Sequence[str] | None = None, rules: str | Path | None = None) -> None:
    """Run the application (``argv`` as ``sys.argv``: program name first, then ``-i``, ``-o``, ``-m`` ...)."""
    application = UnetSegApplication(list(argv) if argv is not None else None, rules=rules)
    application.run()
