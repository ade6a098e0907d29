"""Checks that turn bad input into one clear error naming the file (or config key) and the problem.

Each check raises a ``BadInputError`` (a ``ValueError``) whose message starts with the file path or
config key, so the CLI can print it as one line. They run on arrays as loaded (channel first, before
any intensity scaling), from the transform chains (``unet_monai.transforms.checks``) and before a
bundle runs (``unet_monai.bundle.run_workflow``). Messages name files, never patient attributes.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener

from unet_monai.io import NIFTI_SUFFIXES

# Errors image readers raise for truncated or damaged files (nibabel, gzip, zlib, PIL, ITK).
READ_ERRORS = (EOFError, OSError, zlib.error, gzip.BadGzipFile, ImageFileError, struct.error)
DATALIST_KEYS = ("image", "label")
# Affines of an image and its label agree to this (mm, and direction cosines): NIfTI stores them as float32.
AFFINE_ATOL = 1e-3
# The qform's rotation (quaternion b, c, d) and offset fields of a NIfTI header.
QFORM_FIELDS = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")


class BadInputError(ValueError):
    """Input the pipeline cannot use; the message starts with the file path or config key."""


def _shape(array: torch.Tensor | np.ndarray) -> str:
    return "x".join(str(int(n)) for n in array.shape)


def read_error(path: str | os.PathLike, error: BaseException) -> BadInputError | None:
    """The clear error for a reader's failure on ``path``; ``None`` when ``error`` is not a read error.

    A missing file gives "no such file"; EOF, zlib, gzip and nibabel errors give "truncated or corrupt
    NIfTI (...)" for ``.nii`` / ``.nii.gz`` files and "unreadable or corrupt image file (...)" otherwise.
    """
    if isinstance(error, BadInputError):
        return error
    if isinstance(error, FileNotFoundError) or not Path(path).exists():
        return BadInputError(f"{path}: no such file")
    if isinstance(error, PermissionError):
        return BadInputError(f"{path}: not readable (permission denied)")
    if not isinstance(error, READ_ERRORS):
        return None
    kind = "NIfTI" if str(path).lower().endswith(NIFTI_SUFFIXES) else "image file"
    reason = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return BadInputError(f"{path}: truncated or corrupt {kind} ({reason})")


def check_image(
    image: torch.Tensor | np.ndarray,
    path: str,
    spatial_dims: int | None = None,
    channels: int | None = None,
    allow_constant: bool = False,
) -> None:
    """A loaded, channel-first image: its dimensions, channels and intensities.

    Args:
        image: the image as loaded (channel first, before intensity scaling).
        path: its file, for the message.
        spatial_dims: the spatial dimensions the bundle takes (3 for volumes, 2 for slices); None: any.
        channels: the channels the bundle takes (a 4D NIfTI's fourth axis is read as channels); None: any.
        allow_constant: accept an image of one value (a blank 2D slice outside the body); MONAI's
            intensity scaling then gives zeros, not NaN (it guards the division by zero).

    Raises:
        BadInputError: wrong dimensions or channels, NaN or infinite intensities, or (unless allowed)
            a constant image: nothing to segment, and its scaled intensities would be meaningless.
    """
    data = torch.as_tensor(image)
    dims = data.ndim - 1
    if spatial_dims is not None and dims != spatial_dims:
        raise BadInputError(
            f"{path}: {dims}D image (channel-first shape {_shape(data)}); this bundle takes {spatial_dims}D "
            + ("volumes" if spatial_dims == 3 else "images")
        )
    if channels is not None and data.shape[0] != channels:
        raise BadInputError(
            f"{path}: {data.shape[0]} channels (channel-first shape {_shape(data)}; a 4D file's 4th axis is "
            f"read as channels); this bundle takes {channels}-channel images"
        )
    if data.is_floating_point():
        nan = int(torch.isnan(data).sum())
        inf = int(torch.isinf(data).sum())
        if nan or inf:
            raise BadInputError(
                f"{path}: {nan} NaN and {inf} infinite voxel(s); intensities must be finite numbers"
            )
    if data.numel() == 0:
        raise BadInputError(f"{path}: empty image (shape {_shape(data)})")
    low, high = float(data.min()), float(data.max())
    if low == high and not allow_constant:
        raise BadInputError(
            f"{path}: constant image (every voxel {low:g}): nothing to segment, and intensity "
            "normalisation would divide by zero"
        )


def _finite_rows(matrix: np.ndarray) -> bool:
    return bool(np.isfinite(matrix).all())


def _degenerate(matrix: np.ndarray) -> str | None:
    """Why the rotation-zoom part of an affine is unusable (a zero spacing, collinear axes), else None."""
    spacing = np.linalg.norm(matrix, axis=0)
    if (spacing == 0).any():
        shown = ", ".join(f"{s:g}" for s in spacing)
        return f"spacing 0 along an axis (spacing {shown})"
    # |det| / the product of the axis lengths: 1 for orthogonal axes, 0 for collinear ones.
    if abs(float(np.linalg.det(matrix))) / float(np.prod(spacing)) < 1e-6:
        return "singular matrix: its axes are collinear"
    return None


def check_affine(affine: torch.Tensor | np.ndarray, path: str) -> None:
    """A loaded image's affine (voxel to world, mm): finite numbers, no zero spacing, not singular.

    A damaged affine would put the mask on another grid; reorientation and resampling cannot use it.
    """
    matrix = np.asarray(torch.as_tensor(affine, dtype=torch.float64))
    if not _finite_rows(matrix):
        raise BadInputError(
            f"{path}: affine has NaN/Inf ({_one_line_matrix(matrix)}): the image has no usable geometry"
        )
    problem = _degenerate(matrix[:-1, :-1])
    if problem is not None:
        raise BadInputError(f"{path}: degenerate affine ({problem}): the image has no usable geometry")


def _one_line_matrix(matrix: np.ndarray) -> str:
    return "; ".join(" ".join(f"{v:g}" for v in row) for row in np.asarray(matrix))


def _raw_nifti_header(path: str) -> nib.Nifti1Header | None:
    """The NIfTI header as the file stores it (nibabel's loader fixes some fields); None: not NIfTI."""
    try:
        with ImageOpener(path) as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise BadInputError(f"{path}: truncated or corrupt NIfTI ({type(error).__name__}: {error})") from None
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        size = header_class.sizeof_hdr
        for order in ("<", ">"):
            if len(raw) >= size and struct.unpack(f"{order}i", raw[:4])[0] == size:
                return header_class.from_fileobj(io.BytesIO(raw[:size]), check=False)
    return None


def check_nifti_header(path: str) -> None:
    """The voxel-to-world transforms a NIfTI file declares: finite, no zero spacing, not singular.

    Looks at the file itself: for a NaN sform MONAI's reader silently falls back to the qform and nibabel
    replaces a zero pixdim by 1, so the loaded affine alone would hide the damage. Checked: the sform when
    ``sform_code`` > 0, the qform (quaternion, offsets and pixdim) when ``qform_code`` > 0, and the pixdim
    spacing when neither is set (readers then scale by it). Files that are not NIfTI are not checked here.
    """
    if not str(path).lower().endswith(NIFTI_SUFFIXES) or not os.path.isfile(path):
        return
    header = _raw_nifti_header(path)
    if header is None:
        return
    dims = max(1, min(3, int(header["dim"][0])))
    pixdim = np.asarray(header["pixdim"][1 : dims + 1], dtype=np.float64)
    forms = []
    if int(header["sform_code"]) > 0:
        srow = np.stack([header["srow_x"], header["srow_y"], header["srow_z"]]).astype(np.float64)
        forms.append(("sform", srow, srow[:, :3]))
    if int(header["qform_code"]) > 0 or int(header["sform_code"]) <= 0:
        quatern = np.asarray([header[k] for k in QFORM_FIELDS], dtype=np.float64)
        name = "qform" if int(header["qform_code"]) > 0 else "pixdim"
        values = np.concatenate([quatern, pixdim]) if name == "qform" else pixdim
        zoom = np.diag(np.concatenate([pixdim, np.ones(3 - dims)]))
        forms.append((name, values, zoom))
    for name, values, matrix in forms:
        if not _finite_rows(values):
            raise BadInputError(
                f"{path}: affine has NaN/Inf ({name} {_one_line_matrix(np.atleast_2d(values))}): "
                "the header's voxel-to-world geometry is damaged"
            )
        problem = _degenerate(matrix)
        if problem is not None:
            raise BadInputError(
                f"{path}: degenerate affine ({name}: {problem}): the header's geometry is damaged"
            )


def _float64_mean_std(values: torch.Tensor, chunk: int = 1 << 22) -> tuple[float, float]:
    """Mean and population standard deviation in float64, a chunk at a time (no float64 copy of a volume)."""
    total = 0.0
    for start in range(0, values.numel(), chunk):
        total += float(values[start : start + chunk].double().sum())
    mean = total / values.numel()
    squares = 0.0
    for start in range(0, values.numel(), chunk):
        squares += float(((values[start : start + chunk].double() - mean) ** 2).sum())
    return mean, math.sqrt(squares / values.numel())


def check_zscore(image: torch.Tensor | np.ndarray, path: str, samples: int = 1 << 20) -> None:
    """The per-channel z-score of ``image`` keeps its contrast in float32.

    One extreme voxel (a corrupt 1e35 among values of a few hundred) makes the mean and standard
    deviation so large that every other voxel normalises to the same float32 number: the network then
    sees a blank image and the mask comes out as one label. Statistics are computed in float64; on up to
    ``samples`` voxels (evenly strided), the number of distinct intensities before and after normalising
    is compared, and losing more than half of them is refused. A constant channel is left to
    ``check_image`` (MONAI's z-score gives zeros there).
    """
    data = torch.as_tensor(image)
    for channel in data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1):
        if channel.numel() < 2:
            continue
        sample = channel[:: max(1, channel.numel() // samples)]
        before = int(torch.unique(sample).numel())
        mean, std = _float64_mean_std(channel)
        if before < 2 or not std > 0 or not math.isfinite(std):
            continue
        after = int(torch.unique(((sample.double() - mean) / std).float()).numel())
        if 2 * after < before:
            low, high = float(channel.min()), float(channel.max())
            raise BadInputError(
                f"{path}: z-score intensity normalisation merges {before} distinct intensities into {after} "
                f"(values {low:g} .. {high:g}, mean {mean:.4g}, std {std:.4g}): an extreme value drowns the "
                "image's contrast; check the file for corrupt voxels"
            )


def check_scaled(image: torch.Tensor | np.ndarray, path: str, method: str) -> None:
    """Intensities after scaling (``method``: z-score, percentile, ...) are finite numbers."""
    data = torch.as_tensor(image)
    if data.is_floating_point():
        bad = int((~torch.isfinite(data)).sum())
        if bad:
            raise BadInputError(
                f"{path}: {bad} voxel(s) not finite after {method} intensity scaling (float32 overflow: "
                "intensities too large); rescale the image"
            )


def check_label(
    label: torch.Tensor | np.ndarray,
    path: str,
    num_classes: int | None = None,
    allow_empty: bool = True,
) -> None:
    """A loaded label map: integer class values within the bundle's classes, not empty unless allowed.

    Args:
        label: the label map as loaded.
        path: its file, for the message.
        num_classes: classes including background (values must lie in ``0 .. num_classes - 1``);
            None: any non-negative integer.
        allow_empty: whether a map of background only is acceptable (2D slices often have none).
    """
    data = torch.as_tensor(label)
    if data.is_floating_point():
        if not bool(torch.isfinite(data).all()):
            raise BadInputError(f"{path}: label map holds NaN or infinite values")
        fractional = data[data != torch.round(data)]
        if fractional.numel():
            raise BadInputError(f"{path}: label values must be integers, found {float(fractional[0]):g}")
    values = [int(v) for v in torch.unique(data).tolist()]
    top = None if num_classes is None else num_classes - 1
    outside = [v for v in values if v < 0 or (top is not None and v > top)]
    if outside:
        allowed = "non-negative integers" if top is None else f"0 .. {top} ({num_classes} classes)"
        raise BadInputError(f"{path}: label values {outside} outside the bundle's classes {allowed}")
    if not allow_empty and values == [0]:
        raise BadInputError(f"{path}: empty mask (every voxel is background 0; no foreground class)")


def check_pair(
    image: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    image_path: str,
    label_path: str,
    image_affine: torch.Tensor | np.ndarray | None = None,
    label_affine: torch.Tensor | np.ndarray | None = None,
) -> None:
    """An image and its label: same spatial shape and, when given, the same affine (voxel grid)."""
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise BadInputError(
            f"{label_path}: label shape {_shape(label[0])} differs from its image's {_shape(image[0])} "
            f"({image_path})"
        )
    if image_affine is None or label_affine is None:
        return
    a = np.asarray(torch.as_tensor(image_affine, dtype=torch.float64))
    b = np.asarray(torch.as_tensor(label_affine, dtype=torch.float64))
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=AFFINE_ATOL):
        difference = float(np.abs(a - b).max()) if a.shape == b.shape else float("nan")
        raise BadInputError(
            f"{label_path}: label affine differs from its image's ({image_path}) by up to {difference:.4g}: "
            "spacing, origin and orientation must match"
        )


def _paths(value: object) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if isinstance(value, Sequence) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [str(v) for v in value]
    return []


def check_datalist(
    items: Iterable[dict | str], source: str = "datalist", keys: Sequence[str] = DATALIST_KEYS
) -> None:
    """Every file a datalist names under ``keys`` exists and is readable (one error listing all that are
    not), and no case (the file(s) under the first key) is listed twice.

    Args:
        items: MONAI datalist items (``{"image": path, "label": path}``; a value may be a list of paths),
            or paths.
        source: what the list is (a config key or file), for the message.
        keys: item keys holding paths.
    """
    missing: list[str] = []
    unreadable: list[str] = []
    first_index: dict[tuple[str, ...], int] = {}
    for index, item in enumerate(items):
        paths = [p for key in keys for p in _paths(item.get(key))] if isinstance(item, dict) else _paths(item)
        case = _paths(item.get(keys[0])) if isinstance(item, dict) else _paths(item)
        if case:
            # The same file however it is spelled (relative, "./", through a symbolic link).
            real = tuple(os.path.realpath(p) for p in case)
            if real in first_index:
                raise BadInputError(
                    f"{source}: case listed twice: {', '.join(case)} "
                    f"(items {first_index[real]} and {index}); it could land in both training and validation"
                )
            first_index[real] = index
        for path in paths:
            if not os.path.exists(path):
                missing.append(path)
            elif not os.access(path, os.R_OK):
                unreadable.append(path)
    problems = []
    for what, paths in (("do not exist", missing), ("are not readable", unreadable)):
        if paths:
            shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
            problems.append(f"{len(paths)} file(s) {what}: {shown}")
    if problems:
        raise BadInputError(f"{source}: " + "; ".join(problems))


def check_positive_int(value: object, key: str) -> None:
    """A config value that must be a positive integer (epochs, intervals)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise BadInputError(f"{key}: must be a positive integer, got {value!r}")


def check_writable_folder(path: str | os.PathLike, key: str) -> None:
    """An output folder can be created and written: its nearest existing ancestor is a writable folder.

    Creates nothing, so a run that fails later leaves no empty folders behind.
    """
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"{key}: {target}: cannot create a folder there, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInputError(f"{key}: {target}: folder {existing} is not writable (permission denied)")
