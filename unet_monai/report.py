"""Figures of an evaluation report: one case as image / prediction / reference panels, and training curves.

Figures are drawn with matplotlib's object-oriented API (a ``Figure`` saved through the Agg canvas), so
nothing here changes the global pyplot backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from unet_monai.io import atomic_output
from unet_monai.visualize import overlay_slice

# Scalar tags written by the bundles' TensorBoardStatsHandlers.
TRAIN_LOSS_TAG = "train_loss"
MEAN_DICE_TAG = "val_mean_dice"
CLASS_DICE_PREFIX = "val_dice_"


def _upright(rgb: np.ndarray) -> np.ndarray:
    """Array rows are the first voxel axis: transpose and flip so the picture is upright."""
    return np.ascontiguousarray(np.transpose(rgb, (1, 0, 2))[::-1])


def _label_colour(label: int, max_label: int) -> tuple[float, float, float, float]:
    """The RGBA colour ``overlay_slice`` gives ``label`` (HSV map, first 70 %), for the legend."""
    return colormaps["hsv"](label / max(max_label, 1) * 0.7)


def save_case_figure(
    image: np.ndarray,
    prediction: np.ndarray,
    reference: np.ndarray,
    png_path: str | Path,
    title: str,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
    slice_axis: int = 2,
) -> Path:
    """Save three panels (image, prediction, reference) of the slice with the most reference foreground.

    Args:
        image, prediction, reference: arrays on one grid, 2D or 3D (3D is cut across ``slice_axis``).
        png_path: where the PNG goes.
        title: figure title (e.g. the case name and its Dice per class).
        class_names: names of labels 1..C-1, shown in the legend with their overlay colours.
        spacing: voxel size in mm per axis, for the pixel aspect ratio (default square pixels).
        slice_axis: the volume axis to cut across (3D only).
    """
    if not image.shape == prediction.shape == reference.shape:
        raise ValueError(
            f"Image, prediction and reference shapes differ: {image.shape}, {prediction.shape}, "
            f"{reference.shape}."
        )
    if image.ndim not in (2, 3):
        raise ValueError(f"Expected 2D or 3D arrays, got shape {image.shape}.")
    if spacing is None:
        spacing = [1.0] * image.ndim
    in_plane = [axis for axis in range(image.ndim) if image.ndim == 2 or axis != slice_axis]
    if image.ndim == 3:
        index = int(np.argmax((reference > 0).sum(axis=tuple(in_plane))))
        image = np.take(image, index, axis=slice_axis)
        prediction = np.take(prediction, index, axis=slice_axis)
        reference = np.take(reference, index, axis=slice_axis)
    # After _upright, rows run along the second in-plane axis and columns along the first.
    aspect = float(spacing[in_plane[1]]) / float(spacing[in_plane[0]])
    max_label = len(class_names)
    panels = {
        "image": overlay_slice(image, np.zeros_like(reference), max_label),
        "prediction": overlay_slice(image, prediction, max_label),
        "reference": overlay_slice(image, reference, max_label),
    }

    figure = Figure(figsize=(9, 3.8))
    for axes, (name, rgb) in zip(figure.subplots(1, 3), panels.items(), strict=True):
        axes.imshow(_upright(rgb), aspect=aspect, interpolation="nearest")
        axes.set_title(name)
        axes.axis("off")
    figure.suptitle(title)
    handles = [Patch(color=_label_colour(i + 1, max_label), label=name) for i, name in enumerate(class_names)]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(png_path) as temporary:
        figure.savefig(temporary, dpi=100)
    return png_path


def _latest_run_files(log_dir: Path) -> list[Path]:
    """The event files of the newest training run in ``log_dir``.

    Every training run adds event files to the same folder (one per writer: the trainer's and the
    evaluator's). Files named ``events.out.tfevents.<time>.<host>.<pid>.<n>`` that share the newest
    file's process id belong to that run.
    """
    files = sorted(log_dir.glob("events.out.tfevents.*"), key=lambda path: path.stat().st_mtime)
    newest_pid = files[-1].name.split(".")[-2]
    return [path for path in files if path.name.split(".")[-2] == newest_pid]


def read_scalars(log_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of the newest training run's TensorBoard event files: ``{tag: (steps, values)}``."""
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in _latest_run_files(Path(log_dir)):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events = accumulator.Scalars(tag)
            scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return scalars


def save_training_curves(log_dir: str | Path, png_path: str | Path) -> Path | None:
    """Plot the training loss per iteration and the validation Dice per epoch (per class and mean).

    Reads the ``train_loss``, ``val_dice_<class>`` and ``val_mean_dice`` scalars of the TensorBoard event
    files in ``log_dir`` (one training run's folder). Returns None, writing nothing, when ``log_dir`` holds
    no event files or none of these scalars.
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir() or not any(log_dir.glob("events.out.tfevents.*")):
        return None
    scalars = read_scalars(log_dir)
    dice_tags = sorted(tag for tag in scalars if tag.startswith(CLASS_DICE_PREFIX))
    if MEAN_DICE_TAG in scalars:
        dice_tags.append(MEAN_DICE_TAG)
    if TRAIN_LOSS_TAG not in scalars and not dice_tags:
        return None

    figure = Figure(figsize=(11, 4))
    loss_axes, dice_axes = figure.subplots(1, 2)
    if TRAIN_LOSS_TAG in scalars:
        steps, values = scalars[TRAIN_LOSS_TAG]
        loss_axes.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label="per iteration")
        window = max(1, len(values) // 20)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            label = f"mean of {window} iterations"
            loss_axes.plot(steps[window - 1 :], smooth, color="tab:blue", label=label)
        loss_axes.legend()
    else:
        loss_axes.text(0.5, 0.5, f"no {TRAIN_LOSS_TAG} logged", ha="center", transform=loss_axes.transAxes)
    loss_axes.set(title="Training loss", xlabel="iteration", ylabel="loss")

    for tag in dice_tags:
        steps, values = scalars[tag]
        if tag == MEAN_DICE_TAG:
            dice_axes.plot(steps, values, "o-", color="black", linewidth=2, markersize=3, label="mean")
            best = int(np.argmax(values))
            dice_axes.axvline(steps[best], color="grey", linestyle=":", label=f"best: epoch {steps[best]}")
        else:
            label = tag[len(CLASS_DICE_PREFIX) :]
            dice_axes.plot(steps, values, "o-", linewidth=1, markersize=3, label=label)
    if dice_tags:
        dice_axes.legend(loc="lower right")
    else:
        dice_axes.text(0.5, 0.5, "no validation Dice logged", ha="center", transform=dice_axes.transAxes)
    dice_axes.set(title="Validation Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    dice_axes.xaxis.set_major_locator(MaxNLocator(integer=True))

    figure.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(png_path) as temporary:
        figure.savefig(temporary, dpi=100)
    return png_path
