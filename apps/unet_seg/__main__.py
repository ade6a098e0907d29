"""Entry point of the MONAI Application Package: ``python apps/unet_seg -i DICOM -o OUTPUT -m BUNDLE``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import RULES, main  # noqa: E402

if __name__ == "__main__":
    main(rules=RULES)
