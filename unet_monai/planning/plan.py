"""The plan: every training decision for a dataset, made from its fingerprint, with the reason for each.

``make_plan(fingerprint)`` decides, in this order (nnU-Net's experiment planner is the model; where we
differ, the reason says why):

- **target spacing**: the median spacing per axis; no resampling when every case already has it;
- **normalisation**: CT (a channel named CT): clip to the foreground 0.5 / 99.5 percentiles, then one
  z-score with the foreground mean / std of the whole dataset; already-normalised data: none; anything
  else (MR, microscopy, ...): z-score per case and channel;
- **configuration**: 2D images: ``2d``; strongly anisotropic volumes (``thick_axis`` in the
  fingerprint): ``2d`` slices across the thick axis; volumes small enough to train whole on the device:
  ``3d``; larger ones: ``2.5d`` (slices along every axis, neighbours as channels, an ensemble);
- **patch, network, batch**: the median resampled shape, pooled down to a 4-voxel bottleneck (at most 5
  levels), rounded to a multiple of ``2 ** depth`` and capped for the device; patches per step from a
  voxel budget for the device; base features for the device;
- **loss, optimiser, augmentation**: Dice + cross-entropy, AdamW with polynomial decay, rotation /
  scaling / intensity augmentation, mirroring along every axis but left-right when a label is named
  left or right.

The number of epochs is not decided here: ``unet_monai.planning.budget`` measures a training step on
this device and fits the epochs into the time budget (``set_epochs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PLAN_VERSION = 1
CONFIGURATIONS = ("auto", "2d", "2.5d", "3d")
MIN_BOTTLENECK = 4  # voxels per axis at the deepest level (nnU-Net: 4)
MAX_DEPTH = 5
RESAMPLE_TOLERANCE = 0.02  # relative spread of a spacing axis under which every case counts as on target
# Per device kind: the largest volume trained whole as 3D (voxels), the largest patch edge, the voxels
# one training step sees (patches x patch voxels), and the base feature count.
DEVICE_LIMITS: dict[str, dict[str, int]] = {
    "cpu": {"max_3d_voxels": 96**3, "max_edge_3d": 96, "max_edge_2d": 256, "step_voxels_3d": 400_000,
            "step_voxels_2d": 200_000, "features_3d": 16, "features_2d": 24},
    "cuda": {"max_3d_voxels": 256**3, "max_edge_3d": 160, "max_edge_2d": 512, "step_voxels_3d": 4_000_000,
             "step_voxels_2d": 2_000_000, "features_3d": 32, "features_2d": 32},
}  # fmt: skip
SIDE_WORDS = ("left", "right")


def _target_spacing(geometry: dict[str, Any]) -> tuple[list[float], bool, str]:
    """Median spacing; whether resampling is needed (the cases' spacings differ), and why."""
    spacing = geometry["spacing"]
    median = [float(value) for value in spacing["median"]]
    spread = [
        (float(high) - float(low)) / value if value > 0 else 0.0
        for low, high, value in zip(spacing["min"], spacing["max"], median, strict=True)
    ]
    if max(spread) <= RESAMPLE_TOLERANCE:
        return median, False, f"every case has spacing {median}: no resampling"
    return (
        median,
        True,
        (
            f"spacings differ between cases (min {spacing['min']}, max {spacing['max']}): "
            f"resampled to the median {median} (images bilinear, labels nearest, masks back on each "
            f"file's grid by inverting the resampling)"
        ),
    )


def _normalisation(fingerprint: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The intensity method for all channels and why (the chains scale every channel one way)."""
    channels = fingerprint["intensity"]
    names = [str(channel.get("name") or "").lower() for channel in channels]
    if all(channel["looks_normalised"] for channel in channels):
        return {
            "intensity": "none",
            "ct_stats": None,
        }, "intensities already look normalised (mean ~0, std ~1)"
    if len(channels) == 1 and names[0] == "ct" and channels[0]["foreground"]:
        stats = channels[0]["foreground"]
        ct_stats = [stats["percentile_00_5"], stats["percentile_99_5"], stats["mean"], stats["std"]]
        return {"intensity": "ct", "ct_stats": ct_stats}, (
            f"CT: clipped to the foreground 0.5 / 99.5 percentiles [{ct_stats[0]}, {ct_stats[1]}], then "
            f"one z-score for the dataset (mean {ct_stats[2]}, std {ct_stats[3]}), as nnU-Net does"
        )
    kinds = ", ".join(name or "unnamed" for name in names)
    return {"intensity": "zscore", "ct_stats": None}, f"{kinds}: z-score per case and channel"


def _depth_and_size(shape: Sequence[float], max_edge: int) -> tuple[int, list[int]]:
    """Levels so that the smallest axis keeps ``MIN_BOTTLENECK`` voxels at the bottom, and the patch:
    ``shape`` capped at ``max_edge``, rounded up to a multiple of ``2 ** depth``."""
    capped = [min(float(edge), float(max_edge)) for edge in shape]
    depth = max(1, min(MAX_DEPTH, int(math.floor(math.log2(max(min(capped), 2) / MIN_BOTTLENECK)))))
    step = 2**depth
    size = [max(step, int(math.ceil(edge / step)) * step) for edge in capped]
    return depth, size


def _resampled_shape(geometry: dict[str, Any], target: Sequence[float]) -> list[float]:
    """The median shape after cropping to the non-zero region, at the target spacing."""
    shape = geometry["shape_after_crop"]["median"]
    spacing = geometry["spacing"]["median"]
    return [float(s) * float(old) / float(new) for s, old, new in zip(shape, spacing, target, strict=True)]


def _flip_axes(fingerprint: dict[str, Any], spatial_dims: int) -> tuple[list[int], str]:
    """Mirror along every axis, except left-right (RAS axis 0) when a class is named for a side."""
    names = [str(record.get("name") or "").lower() for record in fingerprint["classes"].values()]
    sided = any(word in name for name in names for word in SIDE_WORDS)
    if sided and fingerprint["geometry"]["axes"].startswith("RAS"):
        return list(range(1, spatial_dims)), "no left-right mirroring: a class is named for a side"
    return list(range(spatial_dims)), "mirroring along every axis (nnU-Net's default)"


def _configuration(
    fingerprint: dict[str, Any], shape: Sequence[float], limits: dict[str, int]
) -> tuple[str, str]:
    geometry = fingerprint["geometry"]
    if fingerprint["spatial_dims"] == 2:
        return "2d", "2D images"
    if geometry["thick_axis"] is not None:
        return "2d", (
            f"anisotropy {geometry['anisotropy']} (thick axis {geometry['thick_axis']}): 2D slices across "
            f"the thick axis, as nnU-Net prefers 2D for such data"
        )
    voxels = math.prod(shape)
    if voxels <= limits["max_3d_voxels"]:
        return "3d", f"the median volume ({round(voxels)} voxels) trains whole as 3D patches on this device"
    return "2.5d", (
        f"the median volume ({round(voxels)} voxels) is too large to train whole on this device: 2.5D slices "
        f"along every axis (an ensemble), as the hippocampus bundle does"
    )


def class_names(fingerprint: dict[str, Any]) -> list[str]:
    """Names of the foreground classes (``class_<value>`` where the dataset names none)."""
    return [
        str(record.get("name") or f"class_{value}")
        for value, record in fingerprint["classes"].items()
        if value != "0"
    ]


def make_plan(
    fingerprint: dict[str, Any], configuration: str = "auto", device: str = "cpu"
) -> dict[str, Any]:
    """Every decision for training on ``fingerprint``'s dataset, each with its reason (``reasons``).

    Args:
        configuration: "auto" (decided from the data) or one of "2d", "2.5d", "3d".
        device: "cpu" or "cuda": sets the patch, batch and feature limits.

    Raises:
        ValueError: an unknown configuration or device, or "3d" for 2D images.
    """
    if configuration not in CONFIGURATIONS:
        raise ValueError(f"configuration must be one of {', '.join(CONFIGURATIONS)}, got {configuration!r}")
    if device not in DEVICE_LIMITS:
        raise ValueError(f"device must be one of {', '.join(DEVICE_LIMITS)}, got {device!r}")
    limits = DEVICE_LIMITS[device]
    spatial_dims = int(fingerprint["spatial_dims"])
    if int(fingerprint.get("num_cases", 2)) < 2:
        raise ValueError("a dataset of one labelled case cannot be split into training and validation")
    if spatial_dims == 2 and configuration in ("2.5d", "3d"):
        raise ValueError(f"configuration {configuration!r} needs volumes; this dataset holds 2D images")
    geometry = fingerprint["geometry"]
    reasons: dict[str, str] = {}
    target, resample, reasons["spacing"] = _target_spacing(geometry)
    normalisation, reasons["normalisation"] = _normalisation(fingerprint)
    shape = _resampled_shape(geometry, target)
    if configuration == "auto":
        configuration, reasons["configuration"] = _configuration(fingerprint, shape, limits)
    else:
        reasons["configuration"] = f"{configuration}: chosen by the user"
    slice_axes: list[int] = []
    if configuration == "3d":
        depth, roi_size = _depth_and_size(shape, limits["max_edge_3d"])
        patches = limits["step_voxels_3d"] // math.prod(roi_size)
        network_dims, features = 3, limits["features_3d"]
    else:
        if spatial_dims == 2:
            in_plane = shape
        elif configuration == "2d":
            thick = (
                geometry["thick_axis"]
                if geometry["thick_axis"] is not None
                else int(max(range(3), key=lambda a: target[a]))
            )
            slice_axes = [thick]
            in_plane = [edge for axis, edge in enumerate(shape) if axis != thick]
        else:  # 2.5d: one network per axis; the patch covers the largest in-plane sizes
            slice_axes = [0, 1, 2]
            in_plane = sorted(shape)[1:]
        depth, roi_size = _depth_and_size(in_plane, limits["max_edge_2d"])
        patches = limits["step_voxels_2d"] // math.prod(roi_size)
        network_dims, features = 2, limits["features_2d"]
    num_samples = 2 if configuration == "3d" else 4
    training_cases = max(1, int(fingerprint.get("num_cases", 10)) * 4 // 5)  # a fold's training share
    batch_size = max(1, min(min(16, patches) // num_samples, training_cases))
    reasons["patch"] = (
        f"median shape {[round(edge) for edge in shape]} at the target spacing -> patch {roi_size} "
        f"({depth} poolings to a >= {MIN_BOTTLENECK}-voxel bottleneck, a multiple of {2**depth}); "
        f"{batch_size} x {num_samples} patches per step ({device} voxel budget)"
    )
    flip_axes, reasons["augmentation"] = _flip_axes(fingerprint, spatial_dims)
    names = class_names(fingerprint)
    stored = sorted(int(value) for value in fingerprint["classes"])
    label_values = None if stored == list(range(len(stored))) else stored
    if label_values is not None:
        reasons["labels"] = (
            f"label files store {stored}: mapped to classes 0 .. {len(stored) - 1} when read, masks written "
            "back with the stored values"
        )
    neighbours = 1 if configuration == "2.5d" else 0
    channels = int(fingerprint["channels"])
    return {
        "plan_version": PLAN_VERSION,
        "device": device,
        "configuration": configuration,
        "spatial_dims": spatial_dims,
        "slice_axes": slice_axes,
        "channels": channels,
        "num_classes": len(names) + 1,
        "class_names": names,
        "label_values": label_values,
        "axcodes": "RAS" if spatial_dims == 3 else None,
        "target_spacing": target if spatial_dims == 3 else None,
        "resample": resample,
        **normalisation,
        "roi_size": roi_size,
        "neighbours": neighbours,
        "network": {
            "name": "ronneberger_unet",
            "spatial_dims": network_dims,
            "in_channels": channels * (2 * neighbours + 1),
            "features": features,
            "depth": depth,
            "norm": "batch",
        },
        "batch_size": batch_size,
        "num_folds": min(5, int(fingerprint.get("num_cases", 5))),
        "num_samples": num_samples,
        "loss": "DiceCELoss",
        "optimizer": "AdamW",
        "learning_rate": 0.002,
        "flip_axes": flip_axes,
        "reasons": reasons,
    }


def summary_lines(plan: dict[str, Any]) -> list[str]:
    """The plan in a few lines, for the terminal."""
    network = plan["network"]
    lines = [
        f"configuration {plan['configuration']}"
        + (f" (slices along axis {plan['slice_axes']})" if plan["slice_axes"] else "")
        + f", {plan['num_classes']} classes ({', '.join(plan['class_names'])}), device {plan['device']}",
        f"patch {plan['roi_size']}, batch {plan['batch_size']} x {plan['num_samples']}, "
        f"U-Net depth {network['depth']} with {network['features']} base features",
        f"intensity {plan['intensity']}, spacing {plan['target_spacing']}"
        + (" (resampled)" if plan["resample"] else ""),
    ]
    if "max_epochs" in plan:
        lines.append(
            f"{plan['max_epochs']} epochs of {plan['iterations_per_epoch']} steps "
            f"({plan['step_seconds']:.3f} s measured per step) to fit {plan['budget_minutes']} minutes"
        )
    lines += [f"why {key}: {reason}" for key, reason in plan["reasons"].items()]
    return lines
