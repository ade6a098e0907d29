"""Real multi-class slices in the HipMRI layout (``unet_monai.data.hipmri_layout``), a test fixture.

The HipMRI data are not here, so ``build_hipmri_fixture`` writes slices of the MSD hippocampus
volumes in that layout: ``keras_slices_{train,validate,test}/case_*.nii.gz`` and
``keras_slices_seg_*/seg_*.nii.gz``. Cases are split before slicing, so the slices of one case are
all in one split. ``python tools/hipmri_fixture.py --help`` (from the repository root); the tests
import ``build_hipmri_fixture``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from unet_monai.data.datalists import msd_datalist
from unet_monai.data.hipmri_layout import IMAGE_PREFIX, SPLITS, image_dir, mask_dir, mask_name, nifti_files


def slice_affine(affine: np.ndarray, slice_axis: int, index: int) -> np.ndarray:
    """Affine of slice ``index`` along ``slice_axis`` of a volume, as a 2D image's 4x4 affine.

    Columns 0 and 1 are the volume's two other axes (in order), column 2 the slice normal, and the
    origin moves to the slice, so every pixel keeps its world position.
    """
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    result = np.eye(4)
    result[:3, 0] = affine[:3, in_plane[0]]
    result[:3, 1] = affine[:3, in_plane[1]]
    result[:3, 2] = affine[:3, slice_axis]
    result[:3, 3] = affine[:3, 3] + index * affine[:3, slice_axis]
    return result


def _save_slice(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _case_id(path: str) -> str:
    """``.../hippocampus_017.nii.gz`` -> ``017``."""
    name = Path(path).name.split(".")[0]
    return name.rsplit("_", 1)[-1]


def build_hipmri_fixture(
    source_dir: str | Path,
    output_dir: str | Path,
    num_cases: Sequence[int] = (8, 2, 10),
    slice_axis: int = 2,
    all_slices: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write slices of MSD volumes in the HipMRI layout, split by case.

    Args:
        source_dir: an MSD dataset folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``), e.g.
            ``../shared/data/msd-hippocampus`` (3 classes).
        output_dir: the layout's root; its six folders are created.
        num_cases: cases for train, validate and test; the cases are shuffled with ``seed`` first.
        slice_axis: the volume axis to slice along (2: axial for RAS volumes).
        all_slices: also write slices without any foreground label (default: only slices with one).
        seed: the shuffle seed.
        overwrite: delete the NIfTI files already in the six folders first; without it, a folder
            that holds any is an error (so slices of two builds never mix).

    Returns the fixture's description (also written to ``OUTPUT/fixture.json``): the cases and the
    number of slices of each split.
    """
    if len(num_cases) != len(SPLITS) or min(num_cases) < 1:
        raise ValueError(f"num_cases needs one positive count per split {SPLITS}, got {list(num_cases)}")
    output_dir = Path(output_dir)
    folders = [folder(output_dir, split) for split in SPLITS for folder in (image_dir, mask_dir)]
    existing = [path for folder in folders if folder.is_dir() for path in nifti_files(folder)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0].parent}: holds NIfTI files already; pass overwrite to replace them"
        )
    items = msd_datalist(source_dir)
    if sum(num_cases) > len(items):
        raise ValueError(f"{source_dir} has {len(items)} cases, {sum(num_cases)} asked for")
    for path in existing:
        path.unlink()
    order = np.random.default_rng(seed).permutation(len(items))
    description: dict = {"source": str(Path(source_dir).resolve()), "slice_axis": slice_axis, "seed": seed}
    start = 0
    for split, count in zip(SPLITS, num_cases, strict=True):
        chosen = [items[i] for i in order[start : start + count]]
        start += count
        images_out, masks_out = image_dir(output_dir, split), mask_dir(output_dir, split)
        images_out.mkdir(parents=True, exist_ok=True)
        masks_out.mkdir(parents=True, exist_ok=True)
        num_slices = 0
        for item in chosen:
            volume = nib.load(item["image"])
            image = np.asarray(volume.dataobj)
            label = np.asarray(nib.load(item["label"]).dataobj).astype(np.uint8)
            for index in range(image.shape[slice_axis]):
                label_slice = np.take(label, index, axis=slice_axis)
                if not all_slices and not label_slice.any():
                    continue
                affine = slice_affine(volume.affine, slice_axis, index)
                name = f"{IMAGE_PREFIX}{_case_id(item['image'])}_slice_{index}.nii.gz"
                _save_slice(np.take(image, index, axis=slice_axis), affine, images_out / name)
                _save_slice(label_slice, affine, masks_out / mask_name(name))
                num_slices += 1
        description[split] = {"cases": [Path(i["image"]).name for i in chosen], "slices": num_slices}
    (output_dir / "fixture.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/hipmri_fixture.py",
        description="Write real multi-class slices (MSD hippocampus volumes) in the HipMRI layout: "
        "keras_slices_{train,validate,test}/case_*.nii.gz, keras_slices_seg_*/seg_*.nii.gz, split by case.",
    )
    parser.add_argument("--source", default="../shared/data/msd-hippocampus", help="MSD dataset folder")
    parser.add_argument("--output", default="/tmp/hipmri_slices", help="the layout's root folder")
    parser.add_argument(
        "--cases", type=int, nargs=3, default=[8, 2, 10], metavar=("TRAIN", "VALIDATE", "TEST")
    )
    parser.add_argument("--slice-axis", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--all-slices", action="store_true", help="also write slices without foreground")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace the slices of an earlier build")
    args = parser.parse_args(argv)
    description = build_hipmri_fixture(
        args.source, args.output, args.cases, args.slice_axis, args.all_slices, args.seed, args.overwrite
    )
    counts = ", ".join(f"{split} {description[split]['slices']}" for split in SPLITS)
    print(f"HipMRI layout in {args.output}: slices {counts} (cases {list(args.cases)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
