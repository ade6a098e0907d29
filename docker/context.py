"""Read a Dockerfile's instructions and replay its COPY steps into a folder standing in for the image.

``make docker-check`` (docker/check.sh) runs the images' install steps outside Docker on exactly
the files the Dockerfile copies; tests/test_docker_files.py reads the instructions with the same code.

    python docker/context.py DOCKERFILE IMAGE_ROOT   # copy each COPY source to IMAGE_ROOT/<dest>
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

# What .dockerignore lets back in under bundles/*/models: the weights the bundles ship (large_files.yml).
SHIPPED_WEIGHTS = ("hippocampus_unet2d/models/model.pt", "hippocampus_unet3d/models/model.pt")


def _ignored(folder: str, names: list[str]) -> set[str]:
    """What .dockerignore keeps out of the folders the images copy: caches, a bundle's outputs (its
    models folder holds only the weights it ships)."""
    ignored = {name for name in names if name == "__pycache__" or name.endswith(".pyc")}
    here = Path(folder)
    if "configs" in names:  # a bundle folder
        ignored |= {"eval", "runs"} & set(names)
        if not any(shipped.startswith(f"{here.name}/models/") for shipped in SHIPPED_WEIGHTS):
            ignored |= {"models"} & set(names)
    if here.name == "models" and (here.parent / "configs").is_dir():
        ignored |= {name for name in names if f"{here.parent.name}/models/{name}" not in SHIPPED_WEIGHTS}
    return ignored


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments and blanks dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    if pending:
        raise ValueError(f"{dockerfile}: the last instruction ends with a line continuation")
    return result


def copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (``--from`` copies left out)."""
    result = []
    for keyword, arguments in instructions(dockerfile):
        words = shlex.split(arguments)
        if keyword != "COPY" or any(word.startswith("--from") for word in words):
            continue
        *sources, destination = [word for word in words if not word.startswith("--")]
        result.append((sources, destination))
    return result


def replay_copies(dockerfile: Path, context: Path, image_root: Path) -> list[Path]:
    """Copy what each COPY of ``dockerfile`` copies from ``context`` to ``image_root``/<destination>.

    As Docker does: a folder's contents go into the destination; files go into it when it ends with
    ``/``. A missing source is an error naming it. Returns the paths written.
    """
    written = []
    for sources, destination in copies(dockerfile):
        target = image_root / destination.lstrip("/")
        for source in sources:
            path = context / source
            if not path.exists():
                raise FileNotFoundError(f"{dockerfile}: COPY source {source!r} not found in {context}")
            if path.is_dir():
                shutil.copytree(path, target, ignore=_ignored, dirs_exist_ok=True)
                written.append(target)
            else:
                into = target / path.name if destination.endswith("/") else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)
                written.append(into)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    dockerfile = Path(argv[0])
    for path in replay_copies(dockerfile, dockerfile.resolve().parents[1], Path(argv[1])):
        print(f"copied {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
