"""Every file the project writes goes through here: one atomic write, one file mode, safe names.

- ``atomic_output(final)``: a context manager that yields a hidden temporary path beside ``final``
  (``.partial-<token>-<name>``, same folder, same extension so writers pick the format by it). When the
  block ends without error the file is flushed to disk (``fsync``), checked (it must exist and be
  non-empty, and pass ``verify`` if given), given mode 0644 and renamed over ``final`` (``os.replace``:
  atomic within one folder), and the folder entry is synced. On any error the temporary file is removed
  and the error raised: an ``OutputError`` naming ``final`` (never the temporary name) for disk errors
  such as a full file system. Nothing half-written ever carries the final name.
- ``write_bytes`` / ``write_text`` / ``write_json``: the same for content in memory.
- ``safe_name(text)``: one path component made from untrusted text (a DICOM UID or description, a case
  name from a datalist); ``output_path(folder, name)``: ``folder / name`` after checking that it lies
  inside ``folder``.
- ``stale_partials(final)``: the temporary files a killed run left for ``final``.
- ``DEFAULT_CHECKPOINT`` / ``trained_weights``: where a bundle keeps its trained weights, and the file
  inference loads (a given one, the ``ckpt_path`` override, else the bundle's ``models/model.pt``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_PREFIX = ".partial-"
TOKEN_LENGTH = 12
FILE_MODE = 0o644  # every output: readable by the group and others (reports, masks, SEG, checkpoints)
MAX_NAME_LENGTH = 120  # characters of a name made from untrusted text (file systems allow 255 bytes)
# NIfTI endings, longest first (so ".nii.gz" is stripped whole), and every single-file image format the
# pipeline reads: NIfTI, DICOM files, PNG and TIFF.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".dcm", ".png", ".tif", ".tiff")
# A bundle's trained weights, relative to its folder (its configs' ckpt_path).
DEFAULT_CHECKPOINT = "models/model.pt"


class OutputError(OSError):
    """A file could not be written: ``<final path>: could not write (<reason>)[; <advice>]``; nothing was
    left. ``filename`` is the final path and ``strerror`` the rest, so code that prints an ``OSError`` as
    ``<filename>: <strerror>`` prints the same line."""

    def __init__(self, final: Path, reason: str, error_number: int | None = None, advice: str = "") -> None:
        message = f"could not write ({reason})" + (f"; {advice}" if advice else "")
        super().__init__(error_number, message, str(final))
        self.final = Path(final)
        self.reason = reason
        self.advice = advice

    def __str__(self) -> str:
        return f"{self.final}: {self.strerror}"


def partial_path(final: Path) -> Path:
    """A fresh hidden temporary name beside ``final``, keeping its extension (writers pick formats by it)."""
    final = Path(final)
    return final.with_name(f"{PARTIAL_PREFIX}{uuid.uuid4().hex[:TOKEN_LENGTH]}-{final.name}")


def stale_partials(final: Path) -> list[Path]:
    """Temporary files a killed run left for ``final`` (``.partial-<token>-<final name>``, exactly)."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(PARTIAL_PREFIX)}[0-9a-f]{{{TOKEN_LENGTH}}}-{re.escape(final.name)}")
    return [p for p in final.parent.glob(f"{PARTIAL_PREFIX}*") if pattern.fullmatch(p.name)]


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); file systems that cannot sync a folder are left as they are."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def error_line(error: BaseException, with_type: bool = False) -> str:
    """An error's message as one line: its first line (``<type>: <first line>`` with ``with_type``), or the
    type's name when the message is empty."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0].strip()}" if with_type else lines[0].strip()


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return error_line(error)


def _as_output_error(error: BaseException, final: Path) -> BaseException:
    """Disk errors (full file system, quota, file size limit, I/O) as an ``OutputError`` naming ``final``."""
    if isinstance(error, OutputError):
        return error
    if isinstance(error, OSError):
        return OutputError(final, _reason(error), error.errno)
    return error


@contextmanager
def atomic_output(final: Path | str, verify: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` to; rename it into place only if all went well.

    ``verify(temporary)`` may raise to refuse what was written (e.g. re-open it). The folder of ``final``
    must exist. Errors: an ``OutputError`` naming ``final`` for disk errors, anything else as raised;
    in every case the temporary file is gone and ``final`` is as it was.
    """
    final = Path(final)
    temporary = partial_path(final)
    try:
        yield temporary
        if not temporary.is_file():
            raise OutputError(final, "the writer produced no file")
        _fsync_file(temporary)
        if temporary.stat().st_size == 0:
            raise OutputError(final, "the writer produced an empty file")
        if verify is not None:
            verify(temporary)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, final)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        converted = _as_output_error(error, final)
        if converted is error:
            raise
        # from None: the original error names the temporary file, and callers that report the innermost
        # error of a chain (the CLI) must see the OutputError naming ``final`` (the original stays in
        # ``__context__`` for debugging)
        raise converted from None
    _fsync_folder(final.parent)


def write_bytes(final: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically; returns ``final``."""
    with atomic_output(final) as temporary:
        temporary.write_bytes(data)
    return Path(final)


def write_text(final: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``final`` atomically; returns ``final``."""
    return write_bytes(final, text.encode("utf-8"))


def write_json(final: Path | str, content: Any) -> Path:
    """Write ``content`` as indented JSON (strict: no NaN) to ``final`` atomically; returns ``final``."""
    return write_text(final, json.dumps(content, indent=2, allow_nan=False) + "\n")


def is_disk_full(error: BaseException) -> bool:
    """Whether an error means the file system (or the process's file-size limit) has no room left."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "unnamed", max_length: int = MAX_NAME_LENGTH) -> str:
    """One harmless path component from untrusted text (a UID, a description, a case name).

    Unicode is reduced to ASCII, every run of characters other than letters, digits, ``.``, ``_`` and
    ``-`` (slashes, NUL, spaces, ...) becomes ``_``, leading dots are dropped (no hidden files, no
    ``..``), and the result is cut to ``max_length`` characters. Empty results give ``fallback``.
    """
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", ascii_text).lstrip(".")
    name = name[:max_length].rstrip(".")
    return name if name.strip("_") else fallback


def output_path(folder: Path | str, name: str) -> Path:
    """``folder / name``, refused (``ValueError`` naming both) unless it lies inside ``folder``."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path.parent != root and root not in path.parents:
        raise ValueError(f"{name!r}: output name leads outside the output folder {root}; refused")
    return root / name


def trained_weights(
    bundle: str | Path, checkpoint: str | Path | None = None, overrides: dict | None = None
) -> Path:
    """The weights inference loads: ``checkpoint``, else the ``ckpt_path`` override, else the bundle's
    ``DEFAULT_CHECKPOINT``. A missing file is a ``FileNotFoundError`` saying how to make it (one line)."""
    if checkpoint is not None:
        path = Path(checkpoint).resolve()
    else:
        path = Path((overrides or {}).get("ckpt_path", Path(bundle) / DEFAULT_CHECKPOINT))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained weights; run `unet-monai train --bundle {bundle}`")
    return path
