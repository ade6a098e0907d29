"""Which series of a study to segment: a default rule, MONAI Deploy selection rules, and the log of why.

A study as a scanner sends it holds more than the volume to segment: localizers (scouts), derived
objects (SEG, SR, PR, KO), series of other modalities, stray files. :func:`choose_series` picks the one
series a bundle can segment, in three steps:

1. **The default rule** (always): a series is skipped when it is a localizer (ImageType LOCALIZER or
   SCOUT), has fewer than :data:`MIN_VOLUME_SLICES` slices, has slices that are not parallel, or has a
   modality the bundle's ``metadata.json`` does not accept (its ``network_data_format.inputs.image.
   modality``; a bundle naming no DICOM modality accepts any). Derived objects and files that are not
   DICOM images never become series (:func:`unet_monai.dicom.series.find_series` skips them).
2. **Selection rules** (optional, ``--rules FILE``): MONAI Deploy's ``DICOMSeriesSelectorOperator``
   format, ``{"selections": [{"name": ..., "conditions": {"Modality": "(?i)MR", ...}}]}``, matched as
   the SDK matches them (:func:`condition_matches`). Selections are tried in order; the first that
   matches a series decides.
3. **Explicit conditions** (optional): ``series_uid``, ``modality``, ``description`` (a regex).

When several series are left, an original series (ImageType ORIGINAL) is taken over derived ones (a
reformat, a map, a subtraction: ImageType DERIVED); a rules file can still select a derived series. One
series left is taken; none is :class:`NoSeriesToSegment` (each series' reason in the message);
several is a one-line :class:`DicomSeriesError` listing the candidates (unlike the SDK, which takes
the first match in file order, a guess here would segment the wrong series silently). Every decision
is logged with UIDs and descriptions only, never patient attributes.
"""

from __future__ import annotations

import json
import logging
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.multival import MultiValue

from unet_monai.dicom.series import (
    DicomSeriesError,
    SeriesInfo,
    SkippedFile,
    find_series,
    shown,
)

logger = logging.getLogger(__name__)

# Fewer slices than this are not a volume (a localizer often has 1-3; a volume bundle needs more).
MIN_VOLUME_SLICES = 5
LOCALIZER_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT"})
# DICOM modality codes a bundle's metadata may name, and the other words that mean one of them.
DICOM_MODALITIES = frozenset({"CT", "MR", "PT", "US", "CR", "DX", "XA", "MG", "NM", "OT", "SC", "RF", "OCT"})
MODALITY_WORDS = {"MRI": "MR", "PET": "PT", "T1": "MR", "T1W": "MR", "T2": "MR", "T2W": "MR", "FLAIR": "MR"}
ORIENTATION_TOLERANCE = 1e-3
NUMERIC_OPERATORS = (">", ">=", "<", "<=", "!=")


class NoSeriesToSegment(DicomSeriesError):
    """Every series of a folder was skipped by the rules (a localizer, a SEG, an unaccepted modality ...);
    the message names the folder and each series' reason. A listening node records it as 'skipped'."""


class RulesError(ValueError):
    """A selection rules file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class SelectionRules:
    """MONAI Deploy selection rules: named selections, each a dict of DICOM keyword -> condition."""

    selections: list[tuple[str, dict[str, Any]]]
    source: str = "rules"


@dataclass
class Selection:
    """The series taken, why, and every other series with the reason it was skipped."""

    series: SeriesInfo
    reason: str
    skipped: list[tuple[SeriesInfo, str]] = field(default_factory=list)
    skipped_files: list[SkippedFile] = field(default_factory=list)


def load_rules(path: str | Path) -> SelectionRules:
    """Read a rules JSON file (MONAI Deploy's format); one-line :class:`RulesError` naming the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RulesError(f"{path}: not a JSON rules file ({str(error).splitlines()[0]})") from None
    return parse_rules(document, str(path))


def parse_rules(document: Any, source: str = "rules") -> SelectionRules:
    """Check a rules document: ``selections``, a list of {"name", "conditions": {keyword: value}}."""
    selections = document.get("selections") if isinstance(document, dict) else None
    if not isinstance(selections, list) or not selections:
        raise RulesError(f'{source}: expected {{"selections": [...]}} with at least one selection')
    checked = []
    for number, selection in enumerate(selections, start=1):
        name = str(selection.get("name", "")).strip() if isinstance(selection, dict) else ""
        conditions = selection.get("conditions") if isinstance(selection, dict) else None
        where = f"{source}: selection {number}" + (f" '{shown(name)}'" if name else "")
        if not isinstance(conditions, dict) or not conditions:
            raise RulesError(f"{where}: 'conditions' must be an object of DICOM keyword -> condition")
        for keyword, wanted in conditions.items():
            _check_condition(where, keyword, wanted)
        checked.append((name or f"selection {number}", dict(conditions)))
    return SelectionRules(checked, source)


def _check_condition(where: str, keyword: str, wanted: Any) -> None:
    if isinstance(wanted, str):
        try:
            re.compile(wanted)
        except re.error as error:
            raise RulesError(f"{where}: {keyword}: bad regular expression {wanted!r} ({error})") from None
    elif isinstance(wanted, list):
        if len(wanted) == 2 and isinstance(wanted[1], str) and wanted[1] in NUMERIC_OPERATORS:
            if not isinstance(wanted[0], numbers.Number):
                raise RulesError(f"{where}: {keyword}: [value, operator] needs a number, got {wanted[0]!r}")
        elif not all(isinstance(v, (str, numbers.Number)) for v in wanted):
            raise RulesError(f"{where}: {keyword}: a list condition holds strings or numbers, got {wanted!r}")
    elif wanted is not None and not isinstance(wanted, (numbers.Number, bool)):
        raise RulesError(f"{where}: {keyword}: unsupported condition {wanted!r}")


def accepted_modalities(metadata: dict) -> frozenset[str]:
    """DICOM modalities the bundle's metadata names for its image input (empty: any is accepted)."""
    image = metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
    words = re.split(r"[^A-Za-z0-9]+", str(image.get("modality", "")).upper())
    found = {MODALITY_WORDS.get(word, word) for word in words if word}
    return frozenset(found & DICOM_MODALITIES)


def _values(header: Any, keyword: str) -> list[str]:
    value = header.get(keyword)
    if value is None:
        return []
    items = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    return [str(v).strip().upper() for v in items]


def _first_image_type(info: SeriesInfo) -> str:
    """The first ImageType value of the series' first instance: ORIGINAL or DERIVED ('' when absent)."""
    values = _values(info.headers[0], "ImageType") if info.headers else []
    return values[0] if values else ""


def _is_localizer(info: SeriesInfo) -> str | None:
    for header in info.headers:
        found = LOCALIZER_IMAGE_TYPES.intersection(_values(header, "ImageType"))
        if found:
            return f"a localizer (ImageType {sorted(found)[0]})"
    return None


def _orientations(info: SeriesInfo) -> int:
    """How many different slice orientations the series has (0 when none is given)."""
    seen: list[np.ndarray] = []
    for header in info.headers:
        value = header.get("ImageOrientationPatient")
        if value is None or len(value) != 6:
            continue
        cosines = np.asarray([float(v) for v in value])
        normal = np.cross(cosines[:3], cosines[3:])
        if not any(np.allclose(np.abs(normal @ other), 1.0, atol=ORIENTATION_TOLERANCE) for other in seen):
            seen.append(normal)
    return len(seen)


def default_skip_reason(info: SeriesInfo, modalities: frozenset[str], min_slices: int) -> str | None:
    """Why the default rule skips ``info`` (None: a candidate)."""
    localizer = _is_localizer(info)
    if localizer:
        return localizer
    modality = info.modality.strip().upper()
    if modalities and modality not in modalities:
        return f"modality {shown(modality) or '(none)'}; the bundle takes {', '.join(sorted(modalities))}"
    orientations = _orientations(info)
    if orientations > 1:
        return f"slices in {orientations} orientations (not parallel: not one volume)"
    if info.num_instances < min_slices:
        return f"{info.num_instances} slice(s); a volume needs at least {min_slices}"
    return None


def _attribute(info: SeriesInfo, keyword: str) -> Any:
    """A series' value of ``keyword`` (the first instance's: study and series attributes are shared); DS and
    IS values stay pydicom's float / int subclasses, whose text is the file's, as the SDK compares them."""
    if keyword == "SeriesInstanceUID":
        return info.series_uid
    if keyword == "Modality":
        return info.modality
    if keyword == "SeriesDescription":
        return info.description
    return info.headers[0].get(keyword) if info.headers else None


def _orientation_name(value: Any) -> str | None:
    cosines = np.asarray([float(v) for v in value])
    normal = np.abs(np.cross(cosines[:3], cosines[3:]))
    return ("Sagittal", "Coronal", "Axial")[int(np.argmax(normal))]


def _match_number(wanted: Any, value: numbers.Number) -> bool:
    """A numeric condition; a regex is matched against the value's text (a DS value's text as in the file)."""
    if isinstance(wanted, str):
        return re.fullmatch(wanted, str(value)) is not None
    number = float(value)
    if isinstance(wanted, list):
        if isinstance(wanted[1], str):
            limit, operator = float(wanted[0]), wanted[1]
            return {
                ">": number > limit,
                ">=": number >= limit,
                "<": number < limit,
                "<=": number <= limit,
                "!=": number != limit,
            }[operator]
        return float(wanted[0]) <= number <= float(wanted[1])
    return float(wanted) == number


def condition_matches(keyword: str, wanted: Any, value: Any) -> bool:
    """Whether a series' ``value`` of ``keyword`` meets ``wanted``, as MONAI Deploy's selector matches:

    - a missing or empty value never matches; an empty condition always does;
    - ``ImageOrientationPatient``: "Axial", "Coronal" or "Sagittal" (the slice normal's main axis);
    - numbers: exact, ``[low, high]`` (inclusive), ``[limit, ">"]`` (also >=, <, <=, !=), or a regex;
    - text: equal ignoring case, else a case-insensitive regex search;
    - multi-valued text (ImageType): a list of terms, each contained, ``"!TERM"`` not contained.
    """
    if wanted is None or wanted == "" or wanted == []:
        return True
    if value is None or value == "" or (isinstance(value, (MultiValue, list)) and len(value) == 0):
        return False
    if keyword == "ImageOrientationPatient":
        return str(wanted).casefold() == str(_orientation_name(value)).casefold()
    if isinstance(value, (MultiValue, list, tuple)):
        text = str([str(v) for v in value]).lower()
        terms = [str(t).lower() for t in (wanted if isinstance(wanted, list) else [wanted])]
        return all(t[1:] not in text if t.startswith("!") else t in text for t in terms)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return _match_number(wanted, value)
    text = str(value)
    if not isinstance(wanted, str):
        return text.casefold() == str(wanted).casefold()
    return text.casefold() == wanted.casefold() or re.search(wanted, text, re.IGNORECASE) is not None


def matches_selection(info: SeriesInfo, conditions: dict[str, Any]) -> bool:
    """Whether ``info`` meets every condition of one selection."""
    return all(
        condition_matches(keyword, wanted, _attribute(info, keyword))
        for keyword, wanted in conditions.items()
    )


def _explicit(
    info: SeriesInfo, series_uid: str | None, modality: str | None, description: str | None
) -> str | None:
    if series_uid is not None and info.series_uid != series_uid:
        return "not the series UID asked for"
    if modality is not None and info.modality.strip().upper() != modality.strip().upper():
        return f"modality {shown(info.modality)}, not {modality}"
    if description is not None and re.search(description, info.description) is None:
        return f"description does not match {description!r}"
    return None


def check_description(description: str | None) -> None:
    """A one-line ValueError when ``description`` is not a regular expression."""
    if description is not None:
        try:
            re.compile(description)
        except re.error as error:
            raise ValueError(f"--description {description!r}: bad regular expression ({error})") from None


@dataclass(frozen=True)
class Criteria:
    """What decides the series: a rules file, explicit conditions (``description`` is a regex), the
    modalities the bundle takes (empty: any) and the fewest slices a volume has."""

    rules: SelectionRules | None = None
    series_uid: str | None = None
    modality: str | None = None
    description: str | None = None
    modalities: frozenset[str] = frozenset()
    min_slices: int = MIN_VOLUME_SLICES

    def asked(self) -> str:
        """The explicit conditions given, for a message (empty when none)."""
        given = {"series_uid": self.series_uid, "modality": self.modality, "description": self.description}
        return ", ".join(f"{key}={shown(value)}" for key, value in given.items() if value is not None)


def choose_from(series: Sequence[SeriesInfo], folder: str | Path, criteria: Criteria) -> Selection:
    """The one series of ``series`` the criteria leave (see the module docstring), and why."""
    check_description(criteria.description)
    skipped: list[tuple[SeriesInfo, str]] = []
    candidates: list[SeriesInfo] = []
    for info in series:
        reason = _explicit(info, criteria.series_uid, criteria.modality, criteria.description)
        if reason is None and criteria.series_uid is None:
            reason = default_skip_reason(info, criteria.modalities, criteria.min_slices)
        if reason is None:
            candidates.append(info)
        else:
            skipped.append((info, reason))
    why = (
        "the series UID asked for"
        if criteria.series_uid is not None
        else "the only series the default rule leaves"
    )
    rules = criteria.rules
    if rules is not None and candidates:
        for name, conditions in rules.selections:
            chosen = [info for info in candidates if matches_selection(info, conditions)]
            if chosen:
                reason = f"not matched by selection '{shown(name)}' of {rules.source}"
                skipped += [(info, reason) for info in candidates if all(info is not c for c in chosen)]
                candidates, why = chosen, f"selection '{shown(name)}' of {rules.source}"
                break
        else:
            skipped += [(info, f"matches no selection of {rules.source}") for info in candidates]
            candidates = []
    if len(candidates) > 1:  # a tie-break, after the rules: an original series over derived ones
        originals = [info for info in candidates if _first_image_type(info) == "ORIGINAL"]
        if originals and len(originals) < len(candidates):
            reason = "a derived series (ImageType not ORIGINAL) beside an original one"
            skipped += [(info, reason) for info in candidates if all(info is not o for o in originals)]
            candidates = originals
            why += "; the original series among derived ones"
    listed = "; ".join(f"skipped {info.summary()}: {reason}" for info, reason in skipped) or "no image series"
    if not candidates:
        asked = f" ({criteria.asked()})" if criteria.asked() else ""
        raise NoSeriesToSegment(f"{folder}: no series to segment{asked}; {listed}")
    if len(candidates) > 1:
        names = "; ".join(info.summary() for info in candidates)
        raise DicomSeriesError(
            f"{folder}: {len(candidates)} series match the rules ambiguously: {names}; choose one with "
            "--series-uid, --description or --rules"
        )
    return Selection(candidates[0], why, skipped)


def choose_series(folder: str | Path, criteria: Criteria | None = None) -> Selection:
    """Scan ``folder`` (recursively) and pick the one series to segment; log what was taken and skipped."""
    skipped_files: list[SkippedFile] = []
    series = find_series(folder, skipped_files)
    files = "; ".join(f"{shown(s.path.name)}: {s.reason}" for s in skipped_files[:5])
    if not series:
        more = f" ({len(skipped_files)} file(s) skipped: {files})" if skipped_files else ""
        raise NoSeriesToSegment(f"{folder}: no DICOM image series found{more}")
    selection = choose_from(series, folder, criteria or Criteria())
    selection.skipped_files = skipped_files
    log_selection(selection)
    return selection


def log_selection(selection: Selection) -> None:
    """One log line for the series taken and one for each series skipped (UIDs and descriptions only)."""
    logger.info("took series %s: %s", selection.series.summary(), selection.reason)
    for info, reason in selection.skipped:
        logger.info("skipped series %s: %s", info.summary(), reason)
    if selection.skipped_files:
        logger.info("skipped %d file(s) that are not DICOM images", len(selection.skipped_files))
