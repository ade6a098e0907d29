"""The SDK SEG writer's segment descriptions and model information from a bundle's ``metadata.json``.

The same classes, codes and algorithm identification as :func:`unet_monai.dicom.seg.segment_descriptions`
(``unet-monai infer --format seg``): one AUTOMATIC segment per foreground class of the metadata's ``pred``
channel_def, segment number = class number, SNOMED CT codes from its ``dicom_seg`` mapping ("Tissue" where
a class has none).
"""

from __future__ import annotations

from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
from monai.deploy.operators.dicom_utils import ModelInfo
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from unet_monai.dicom import seg


def _name_version(metadata: dict) -> tuple[str, str]:
    """The bundle's name and version as DICOM LO values (at most 64 characters)."""
    return str(metadata.get("name", "unet-monai"))[:64], str(metadata.get("version", "unknown"))[:64]


def _code(item: Dataset) -> Code:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning) as a pydicom Code."""
    return Code(item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)


def segment_descriptions(metadata: dict) -> list[SegmentDescription]:
    """One SDK ``SegmentDescription`` per segment of :func:`unet_monai.dicom.seg.segment_descriptions`, in
    class order (the writer numbers them 1..N)."""
    name, version = _name_version(metadata)
    return [
        SegmentDescription(
            segment_label=segment.SegmentLabel,
            segmented_property_category=_code(segment.SegmentedPropertyCategoryCodeSequence[0]),
            segmented_property_type=_code(segment.SegmentedPropertyTypeCodeSequence[0]),
            algorithm_name=name,
            algorithm_version=version,
            algorithm_family=seg.ALGORITHM_FAMILY,
        )
        for segment in seg.segment_descriptions(metadata)
    ]


def model_info(metadata: dict) -> ModelInfo:
    """The SEG's Contributing Equipment item: the bundle's name and version, a UID derived from both."""
    name, version = _name_version(metadata)
    return ModelInfo(
        creator="unet-monai", name=name, version=version, uid=generate_uid(entropy_srcs=[name, version])
    )
