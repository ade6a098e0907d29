"""A seeded generator of small multi-class 3D NIfTI volumes in the MSD layout (demo and tests).

Each case is an MR-like volume with two touching ellipsoids (labels 1 and 2) of different
brightness inside a larger "tissue" blob, a smooth bias field and noise. Geometry is realistic on
purpose: anisotropic spacing, a small rotation and a left-right flip in the affine, so that any
code that ignores the affine writes masks that do not line up.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

LABEL_NAMES = {0: "background", 1: "head", 2: "tail"}


def synthetic_affine(spacing: tuple[float, float, float], angle_degrees: float) -> np.ndarray:
    """Voxel-to-RAS affine: LAS axis directions, rotated about the S axis, with the given spacing."""
    angle = np.deg2rad(angle_degrees)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    flip_left_right = np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ flip_left_right @ np.diag(spacing)
    affine[:3, 3] = [20.0, -15.0, 8.0]
    return affine


def synthetic_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (40, 48, 32)
) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-3, 3, size=3)
    radii = np.array(shape, dtype=np.float32) * rng.uniform(0.16, 0.22, size=3)

    def ellipsoid(centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
        offsets = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
        return (offsets**2).sum(axis=0) <= 1.0

    tissue = ellipsoid(centre, np.array(shape, dtype=np.float32) * 0.42)
    head_centre = centre + np.array([0.0, radii[1] * 0.6, 0.0])
    tail_centre = centre - np.array([0.0, radii[1] * 0.6, 0.0])
    label = np.zeros(shape, dtype=np.uint8)
    label[ellipsoid(tail_centre, radii * np.array([0.8, 0.7, 0.8]))] = 2
    label[ellipsoid(head_centre, radii * 0.8)] = 1

    bias = 1.0 + 0.2 * np.sin(grid[0] / shape[0] * np.pi + rng.uniform(0, np.pi))
    image = np.where(tissue, 60.0, 10.0)
    image = np.where(label == 1, 140.0, image)
    image = np.where(label == 2, 100.0, image)
    image = image * bias + rng.normal(0.0, 8.0, size=shape)
    return image.astype(np.float32), label


def make_synthetic_dataset(
    output_dir: str | Path,
    num_cases: int = 16,
    shape: tuple[int, int, int] = (40, 48, 32),
    seed: int = 0,
) -> Path:
    """Write ``num_cases`` volumes as ``imagesTr/``, ``labelsTr/`` and an MSD ``dataset.json``.

    Returns the dataset folder. The same seed always writes the same volumes.
    """
    output_dir = Path(output_dir)
    (output_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (output_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    training = []
    for index in range(num_cases):
        name = f"synthetic_{index:03d}.nii.gz"
        image, label = synthetic_case(rng, shape)
        affine = synthetic_affine(spacing=(1.0, 0.9, 1.5), angle_degrees=float(rng.uniform(-10, 10)))
        nib.save(nib.Nifti1Image(image, affine), output_dir / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), output_dir / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "Synthetic",
        "description": "Seeded synthetic volumes made by unet_monai.data.synthetic",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "numTraining": num_cases,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    (output_dir / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return output_dir
