"""The SDK SEG writer's segment descriptions and model information from a bundle's ``metadata.json``.

The same classes, codes and algorithm identification as :func:`unet_monai.dicom.seg.segment_descriptions`
(``unet-monai infer --format seg``): one AUTOMATIC segment per foreground class of the metadata's ``pred``
channel_def, segment number = class number, SNOMED CT codes from its ``dicom_seg`` mapping ("Tissue" where
a class has none).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.deploy.operators.dicom_seg_writer_operator import SegmentDescription
from monai.deploy.operators.dicom_utils import ModelInfo
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from unet_monai.dicom.seg import ALGORITHM_FAMILY, DEFAULT_CATEGORY, DEFAULT_TYPE, foreground_classes


def _code(value: Sequence[str] | None, default: Code, what: str) -> Code:
    """A pydicom Code from ``[code, scheme, meaning]``, or ``default`` when ``value`` is None."""
    if value is None:
        return default
    if len(value) != 3 or not all(isinstance(part, str) and part for part in value):
        raise ValueError(f"{what} code must be [code, scheme, meaning] strings, got {value!r}")
    return Code(value[0], value[1], value[2])


def segment_descriptions(metadata: dict) -> list[SegmentDescription]:
    """One SDK ``SegmentDescription`` per foreground class, in class order (the writer numbers them 1..N)."""
    mapping = metadata.get("dicom_seg", {})
    name = str(metadata.get("name", "unet-monai"))[:64]
    version = str(metadata.get("version", "unknown"))[:64]
    descriptions = []
    for number, label in foreground_classes(metadata).items():
        codes = mapping.get(str(number), {})
        descriptions.append(
            SegmentDescription(
                segment_label=label,
                segmented_property_category=_code(
                    codes.get("category"), DEFAULT_CATEGORY, f"class {number} category"
                ),
                segmented_property_type=_code(codes.get("type"), DEFAULT_TYPE, f"class {number} type"),
                algorithm_name=name,
                algorithm_version=version,
                algorithm_family=ALGORITHM_FAMILY,
            )
        )
    return descriptions


def model_info(metadata: dict) -> ModelInfo:
    """The SEG's Contributing Equipment item: the bundle's name and version, a UID derived from both."""
    name = str(metadata.get("name", "unet-monai"))[:64]
    version = str(metadata.get("version", "unknown"))[:64]
    return ModelInfo(
        creator="unet-monai", name=name, version=version, uid=generate_uid(entropy_srcs=[name, version])
    )
