"""Atomic ``SaveImage(d)``: a mask is written to a hidden temporary file beside it, then renamed.

A killed or failing run therefore never leaves a half-written ``<case>_seg.nii.gz``: the final name
appears only once the file is complete (``os.replace`` within one folder is atomic). A killed run
can leave a hidden ``.partial-<token>-<name>`` file: ``glob.glob`` and shell patterns skip it (a
bundle's datalist never reads it), and ``stale_partials`` finds those of one output so that the
next run (``unet-monai infer``) removes them.
"""

from __future__ import annotations

import functools
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.data.image_writer import ImageWriter, NibabelWriter
from monai.transforms import SaveImage, SaveImaged

PARTIAL_PREFIX = ".partial-"


TOKEN_LENGTH = 12


def partial_path(final: Path) -> Path:
    """A fresh hidden temporary name beside ``final``, keeping its extension (writers pick formats by it)."""
    return final.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:TOKEN_LENGTH]}-{final.name}")


def stale_partials(final: Path) -> list[Path]:
    """Temporary files a killed run left for ``final`` (``.partial-<token>-<final name>``, exactly)."""
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(PARTIAL_PREFIX)}[0-9a-f]{{{TOKEN_LENGTH}}}-{re.escape(final.name)}")
    return [p for p in final.parent.glob(f"{PARTIAL_PREFIX}*") if pattern.fullmatch(p.name)]


def _set_metadata_without_copy(
    self: NibabelWriter, meta_dict: Any, resample: bool = True, **options: Any
) -> None:
    """``NibabelWriter.set_metadata``, minus the copy it makes when it does not resample.

    MONAI's writer runs its resampler even with ``resample=False``, which returns a float32 copy of the
    whole array (1x a float32 volume for a uint8 mask: the largest buffer left at the end of inference).
    Without resampling the data and the affine are taken as they are, which is what that copy holds.
    """
    if resample:
        NibabelWriter.set_metadata(self, meta_dict, resample=resample, **options)
        return
    _, affine, _ = self.get_meta_info(meta_dict)
    if self.output_dtype is None and self.data_obj is not None and hasattr(self.data_obj, "dtype"):
        self.output_dtype = self.data_obj.dtype
    self.affine = affine


@functools.cache
def atomic_writer(writer: type[ImageWriter]) -> type[ImageWriter]:
    """A subclass of a MONAI image writer whose ``write`` goes through a temporary file and ``os.replace``
    (and, for NIfTI, which keeps the mask's dtype when it does not resample)."""

    def write(self: ImageWriter, filename: Any, *args: Any, **kwargs: Any) -> None:
        final = Path(os.path.expanduser(str(filename)))
        temporary = partial_path(final)
        try:
            writer.write(self, str(temporary), *args, **kwargs)
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)

    methods: dict[str, Any] = {"write": write, "__doc__": atomic_writer.__doc__}
    if issubclass(writer, NibabelWriter):
        methods["set_metadata"] = _set_metadata_without_copy
    return type(f"Atomic{writer.__name__}", (writer,), methods)


def _atomic_writers(writers: Sequence[type[ImageWriter]]) -> tuple[type[ImageWriter], ...]:
    return tuple(atomic_writer(writer) for writer in writers)


class AtomicSaveImage(SaveImage):
    """MONAI's ``SaveImage`` (same arguments): writers write a temporary file, renamed when complete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writers = _atomic_writers(self.writers)


class AtomicSaveImaged(SaveImaged):
    """MONAI's ``SaveImaged`` (same arguments): writers write a temporary file, renamed when complete.

    A drop-in ``_target_`` for a bundle's ``SaveImaged`` entry: names, formats and options unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saver.writers = _atomic_writers(self.saver.writers)
