"""The bundles' JSON files in the MONAI model zoo's format (its ``pretty-format-json`` pre-commit hook).

``python tools/check_json.py`` lists the files the hook would rewrite and exits 1 if there are any
(``make lint``); ``--fix`` rewrites them (``make format``). Paths default to every JSON file under
``bundles/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unet_monai.bundle_contract import json_needs_format, zoo_json

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Check (or with ``--fix`` rewrite) JSON files; 1 when a file needs formatting and is not fixed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="JSON files (default: bundles/**/*.json)")
    parser.add_argument("--fix", action="store_true", help="rewrite the files in the zoo's format")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "bundles").rglob("*.json"))
    unformatted = [path for path in paths if json_needs_format(path)]
    for path in unformatted:
        if args.fix:
            path.write_text(zoo_json(path.read_text(encoding="utf-8")), encoding="utf-8")
            print(f"formatted {path}")
        else:
            print(f"{path}: not in the model zoo's JSON format (make format rewrites it)")
    return 0 if args.fix or not unformatted else 1


if __name__ == "__main__":
    sys.exit(main())
