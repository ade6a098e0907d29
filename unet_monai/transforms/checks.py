"""MONAI dictionary transforms that stop bad input right after loading, with one line naming the file.

``CheckedLoadImaged`` is MONAI's ``LoadImaged`` with readers' failures (a truncated ``.nii.gz``, garbage
bytes, a missing file) reported as ``"<path>: truncated or corrupt NIfTI (...)"``; ``CheckImaged``,
``CheckLabeld`` and ``CheckPaird`` apply ``unet_monai.checks`` to what was loaded. MONAI wraps a
transform's error in ``RuntimeError``s; the ``BadInputError`` stays their root cause, which the CLI prints.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform
from monai.utils import ImageMetaKey

from unet_monai.checks import (
    check_affine,
    check_image,
    check_label,
    check_nifti_header,
    check_pair,
    check_scaled,
    check_zscore,
    read_error,
)


def source_path(data: Any, key: str) -> str:
    """The file an item's value was loaded from (the MetaTensor's ``filename_or_obj``), else the key."""
    if isinstance(data, MetaTensor):
        return str(data.meta.get(ImageMetaKey.FILENAME_OR_OBJ, key))
    return key


def check_geometry(image: Any, path: str) -> None:
    """The voxel-to-world geometry of a loaded image: the NIfTI header's transforms as the file states
    them, then the affine the reader made (finite, no zero spacing, not singular)."""
    check_nifti_header(path)
    if isinstance(image, MetaTensor):
        check_affine(image.affine, path)


class CheckedLoadImage(LoadImage):
    """``LoadImage`` whose read failures become one ``BadInputError`` naming the file and the problem."""

    def __call__(self, filename: Any, reader: Any = None) -> Any:
        try:
            return super().__call__(filename, reader)
        except Exception as error:
            paths = [str(f) for f in filename] if isinstance(filename, (list, tuple)) else [str(filename)]
            missing = [p for p in paths if not Path(p).exists()]
            clear = read_error(missing[0] if missing else ", ".join(paths), error)
            if clear is None:
                raise
            # The reader's error is in the message; dropping it as the cause keeps ours the root cause.
            raise clear from None


class CheckedLoadImaged(LoadImaged):
    """``LoadImaged`` (image only) reporting unreadable files through ``CheckedLoadImage``."""

    def __init__(
        self,
        keys: KeysCollection,
        reader: Any = None,
        image_only: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, reader=reader, image_only=image_only, allow_missing_keys=allow_missing_keys)
        self._loader = CheckedLoadImage(reader, image_only)


class CheckImaged(MapTransform):
    """``check_image`` on each key: dimensions, channels, finite, (unless allowed) non-constant values."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = None,
        channels: int | None = None,
        allow_constant: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.allow_constant = allow_constant

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = source_path(d[key], str(key))
            check_geometry(d[key], path)
            check_image(d[key], path, self.spatial_dims, self.channels, self.allow_constant)
        return d


class CheckLabeld(MapTransform):
    """``check_label`` on each key: integer values within ``num_classes``; not empty unless allowed."""

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int | None = None,
        allow_empty: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.allow_empty = allow_empty

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = source_path(d[key], str(key))
            check_geometry(d[key], path)
            check_label(d[key], path, self.num_classes, self.allow_empty)
        return d


class CheckPaird(MapTransform):
    """``check_pair`` of an image and its label: the same spatial shape and affine."""

    def __init__(self, image_key: str = "image", label_key: str = "label") -> None:
        super().__init__([image_key, label_key])
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image, label = d[self.image_key], d[self.label_key]
        affines = [x.affine if isinstance(x, MetaTensor) else None for x in (image, label)]
        check_pair(
            image,
            label,
            source_path(image, self.image_key),
            source_path(label, self.label_key),
            *affines,
        )
        return d


class CheckZScored(MapTransform):
    """``check_zscore`` on each key, before ``NormalizeIntensityd``: the z-score keeps the contrast."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_zscore(d[key], source_path(d[key], str(key)))
        return d


class CheckScaledd(MapTransform):
    """``check_scaled`` on each key, after intensity scaling: every value finite."""

    def __init__(self, keys: KeysCollection, method: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.method = method

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            check_scaled(d[key], source_path(d[key], str(key)), self.method)
        return d


def input_checks(
    image_key: str,
    label_key: str | None,
    spatial_dims: int | None,
    channels: int | None,
    num_classes: int | None,
    allow_empty_labels: bool,
) -> list[MapTransform]:
    """The checks a chain runs right after loading: the image, then the label and the pair, if any.

    A constant image is an error in a volume (``spatial_dims`` 3); 2D slices may be blank."""
    checks: list[MapTransform] = [
        CheckImaged(image_key, spatial_dims, channels, allow_constant=spatial_dims != 3)
    ]
    if label_key is not None:
        checks += [CheckLabeld(label_key, num_classes, allow_empty_labels), CheckPaird(image_key, label_key)]
    return checks


__all__ = [
    "CheckImaged",
    "CheckLabeld",
    "CheckPaird",
    "CheckScaledd",
    "CheckZScored",
    "CheckedLoadImage",
    "check_geometry",
    "CheckedLoadImaged",
    "input_checks",
    "source_path",
]
