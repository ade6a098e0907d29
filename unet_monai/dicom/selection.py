"""Which series of a study to segment: a default rule, MONAI Deploy selection rules, and the log of why.

(Being written: issue 19 part 1.)
"""

from __future__ import annotations

from unet_monai.dicom.series import DicomSeriesError


class NoSeriesToSegment(DicomSeriesError):
    """Every series of a folder was skipped by the rules (a localizer, a SEG, an unaccepted modality ...);
    the message names the folder and each series' reason. A listening node records it as 'skipped'."""
