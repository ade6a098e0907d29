"""Atomic ``SaveImage(d)``: a mask is written to a hidden temporary file beside it, checked, then renamed.

Every writer goes through ``unet_monai.io.atomic_output``: the file is written under a hidden
``.partial-<token>-<name>``, synced, checked (non-empty; a NIfTI header must re-open) and only then
renamed over ``<case>_seg.nii.gz``, so a killed, failing or out-of-disk run never leaves a half-written
or empty mask under its final name. ``glob.glob`` and shell patterns skip the hidden temporary files (a
bundle's datalist never reads one), and ``stale_partials`` finds those a killed run left so that the
next run (``unet-monai infer``) removes them.

No fallback writer turns a disk error into success: MONAI's ``SaveImage`` tries its next writer (ITK)
when one raises, so a disk error (an ``OSError``: full file system, quota, file-size limit) stops the
writers at once and leaves ``AtomicSaveImage(d)`` as one ``OutputError``,
``<mask>: could not write (No space left on device)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
from monai.data.image_writer import ImageWriter, NibabelWriter
from monai.transforms import SaveImage, SaveImaged

from unet_monai.io import NIFTI_SUFFIXES, OutputError, atomic_output, partial_path, stale_partials

__all__ = ["AtomicSaveImage", "AtomicSaveImaged", "atomic_writer", "partial_path", "stale_partials"]


class _StopWriters(BaseException):
    """Carries a writer's ``OutputError`` past ``SaveImage``'s ``except Exception`` (which would try the
    next writer); ``AtomicSaveImage(d)`` turn it back into the ``OutputError``."""

    def __init__(self, error: OutputError) -> None:
        super().__init__(str(error))
        self.error = error


def _check_nifti_header(path: Path) -> None:
    """Refuse a written NIfTI whose header does not re-open."""
    try:
        nib.load(path)
    except Exception as error:
        raise ValueError(f"the written NIfTI does not re-open ({type(error).__name__}: {error})") from None


def _verify(final: Path) -> Any:
    """The check ``atomic_output`` runs on the written file: the NIfTI header for NIfTI; other formats
    are only checked to be non-empty (``atomic_output`` does that)."""
    return _check_nifti_header if final.name.endswith(NIFTI_SUFFIXES) else None


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
    """A subclass of a MONAI image writer whose ``write`` goes through ``atomic_output`` (and, for NIfTI,
    which keeps the mask's dtype when it does not resample). Use it through ``AtomicSaveImage(d)``: a disk
    error leaves its ``write`` as ``_StopWriters``, which only they catch."""

    def write(self: ImageWriter, filename: Any, *args: Any, **kwargs: Any) -> None:
        final = Path(os.path.expanduser(str(filename)))
        try:
            with atomic_output(final, verify=_verify(final)) as temporary:
                writer.write(self, str(temporary), *args, **kwargs)
        except OutputError as error:
            raise _StopWriters(error) from None

    methods: dict[str, Any] = {"write": write, "__doc__": atomic_writer.__doc__}
    if issubclass(writer, NibabelWriter):
        methods["set_metadata"] = _set_metadata_without_copy
    return type(f"Atomic{writer.__name__}", (writer,), methods)


def _atomic_writers(writers: Sequence[type[ImageWriter]]) -> tuple[type[ImageWriter], ...]:
    return tuple(atomic_writer(writer) for writer in writers)


class AtomicSaveImage(SaveImage):
    """MONAI's ``SaveImage`` (same arguments): writers write a temporary file, renamed when complete and
    checked; a disk error raises ``OutputError`` (no fallback writer runs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writers = _atomic_writers(self.writers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except _StopWriters as stop:
            raise stop.error from None


class AtomicSaveImaged(SaveImaged):
    """MONAI's ``SaveImaged`` (same arguments): writers write a temporary file, renamed when complete and
    checked; a disk error raises ``OutputError`` (no fallback writer runs).

    A drop-in ``_target_`` for a bundle's ``SaveImaged`` entry: names, formats and options unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saver.writers = _atomic_writers(self.saver.writers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except _StopWriters as stop:
            raise stop.error from None
