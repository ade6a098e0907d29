"""The plan's decisions from a fingerprint, and fitting epochs into a time budget.

Fingerprints here are written out by hand (the fields ``make_plan`` reads), so each decision is tested
on the data property that drives it; the real hippocampus fingerprint is checked against nnU-Net's plan
for the same dataset (3d_fullres: spacing 1 mm, median shape 36 x 50 x 35, patch 40 x 56 x 40, batch 9)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.conftest import HIPPOCAMPUS, require
from unet_monai.planning.budget import BUDGET_MARGIN, fit_epochs
from unet_monai.planning.fingerprint import fingerprint_dataset
from unet_monai.planning.plan import make_plan, summary_lines


def fingerprint(
    spacing: list[float],
    shape: list[int],
    spacing_min: list[float] | None = None,
    spacing_max: list[float] | None = None,
    channel: str | None = "MRI",
    looks_normalised: bool = False,
    classes: dict[str, str | None] | None = None,
    spatial_dims: int = 3,
) -> dict[str, Any]:
    """The fields of a fingerprint that make_plan reads."""
    anisotropy = max(spacing) / min(spacing)
    classes = classes or {"0": "background", "1": "organ"}
    return {
        "spatial_dims": spatial_dims,
        "channels": 1,
        "geometry": {
            "axes": "RAS (as the pipeline reorients)" if spatial_dims == 3 else "as stored",
            "spacing": {"median": spacing, "min": spacing_min or spacing, "max": spacing_max or spacing},
            "shape_after_crop": {"median": shape},
            "anisotropy": anisotropy,
            "thick_axis": spacing.index(max(spacing)) if anisotropy >= 3 else None,
        },
        "intensity": [
            {
                "channel": 0,
                "name": channel,
                "looks_normalised": looks_normalised,
                "foreground": {
                    "percentile_00_5": -100.0,
                    "percentile_99_5": 300.0,
                    "mean": 80.0,
                    "std": 60.0,
                },
            }
        ],
        "classes": {value: {"name": name} for value, name in classes.items()},
    }


def test_small_isotropic_volumes_train_whole_in_3d() -> None:
    plan = make_plan(fingerprint([1.0, 1.0, 1.0], [35, 50, 36]))
    assert plan["configuration"] == "3d" and plan["slice_axes"] == []
    assert plan["roi_size"] == [40, 56, 40] and plan["network"]["depth"] == 3
    assert plan["network"]["spatial_dims"] == 3 and plan["network"]["in_channels"] == 1
    assert plan["num_classes"] == 2 and plan["class_names"] == ["organ"]
    assert plan["resample"] is False and plan["intensity"] == "zscore"
    assert all(size % 2 ** plan["network"]["depth"] == 0 for size in plan["roi_size"])


def test_strongly_anisotropic_volumes_get_2d_slices_across_the_thick_axis() -> None:
    plan = make_plan(fingerprint([0.8, 0.8, 5.0], [300, 280, 20]))
    assert plan["configuration"] == "2d" and plan["slice_axes"] == [2]
    assert len(plan["roi_size"]) == 2 and plan["network"]["spatial_dims"] == 2
    assert plan["roi_size"] == [256, 256]  # the CPU cap on a patch edge
    assert "anisotropy" in plan["reasons"]["configuration"]


def test_large_isotropic_volumes_get_a_2_5d_ensemble_on_the_cpu_and_3d_on_a_gpu() -> None:
    data = fingerprint([1.0, 1.0, 1.0], [200, 220, 180])
    cpu = make_plan(data)
    assert cpu["configuration"] == "2.5d" and cpu["slice_axes"] == [0, 1, 2]
    assert cpu["neighbours"] == 1 and cpu["network"]["in_channels"] == 3
    gpu = make_plan(data, device="cuda")
    assert gpu["configuration"] == "3d" and max(gpu["roi_size"]) <= 160


def test_ct_is_clipped_to_foreground_percentiles_then_zscored_with_dataset_statistics() -> None:
    plan = make_plan(fingerprint([1.0, 1.0, 1.0], [64, 64, 64], channel="CT"))
    assert plan["intensity"] == "ct" and plan["ct_stats"] == [-100.0, 300.0, 80.0, 60.0]


def test_normalised_data_is_left_alone() -> None:
    plan = make_plan(fingerprint([1.0, 1.0, 1.0], [64, 64, 64], looks_normalised=True))
    assert plan["intensity"] == "none"


def test_differing_spacings_are_resampled_to_the_median() -> None:
    plan = make_plan(
        fingerprint([1.0, 1.0, 1.5], [64, 64, 40], spacing_min=[0.9, 0.9, 1.0], spacing_max=[1.2, 1.2, 2.5])
    )
    assert plan["resample"] is True and plan["target_spacing"] == [1.0, 1.0, 1.5]


def test_no_left_right_mirroring_when_a_class_is_named_for_a_side() -> None:
    sided = make_plan(
        fingerprint(
            [1.0, 1.0, 1.0], [64, 64, 64], classes={"0": None, "1": "Left kidney", "2": "right kidney"}
        )
    )
    assert sided["flip_axes"] == [1, 2] and sided["class_names"] == ["Left kidney", "right kidney"]
    plain = make_plan(fingerprint([1.0, 1.0, 1.0], [64, 64, 64], classes={"0": None, "1": None}))
    assert plain["flip_axes"] == [0, 1, 2] and plain["class_names"] == ["class_1"]


def test_2d_images_plan_2d_and_refuse_3d() -> None:
    data = fingerprint([1.0, 1.0], [512, 512], spatial_dims=2)
    plan = make_plan(data)
    assert plan["configuration"] == "2d" and plan["slice_axes"] == [] and plan["target_spacing"] is None
    with pytest.raises(ValueError, match="'3d' needs volumes"):
        make_plan(data, configuration="3d")


@pytest.mark.parametrize(("argument", "value"), [("configuration", "4d"), ("device", "tpu")])
def test_unknown_configuration_or_device_is_refused(argument: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{argument} must be one of"):
        make_plan(fingerprint([1.0, 1.0, 1.0], [64, 64, 64]), **{argument: value})


def test_epochs_fill_the_budget_with_about_ten_validations() -> None:
    costs = {"cache_seconds_per_case": 0.5, "step_seconds": 0.25, "validation_seconds_per_case": 1.0}
    fitted = fit_epochs(costs, num_train=80, num_val=20, batch_size=4, budget_minutes=10)
    epoch, validation, caching = 20 * 0.25, 20 * 1.0, 100 * 0.5
    total = (
        caching
        + fitted["max_epochs"] * epoch
        + (fitted["max_epochs"] // fitted["val_interval"] + 1) * validation
    )
    assert total <= 10 * 60 * BUDGET_MARGIN
    one_more = total + epoch + validation
    assert one_more > 10 * 60 * BUDGET_MARGIN - validation  # no room left for much more
    assert fitted["iterations_per_epoch"] == 20
    assert 8 <= fitted["max_epochs"] // fitted["val_interval"] <= 12
    assert math.isclose(fitted["predicted_minutes"], total / 60, abs_tol=0.01)


def test_a_budget_too_small_for_one_epoch_says_how_much_is_needed() -> None:
    costs = {"cache_seconds_per_case": 1.0, "step_seconds": 2.0, "validation_seconds_per_case": 5.0}
    with pytest.raises(ValueError, match=r"give at least \d+ minutes?"):
        fit_epochs(costs, num_train=400, num_val=100, batch_size=2, budget_minutes=5)


def test_the_hippocampus_plan_matches_nnunets_3d_fullres() -> None:
    plan = make_plan(fingerprint_dataset(require(HIPPOCAMPUS), workers=1, progress=False, max_cases=40))
    assert plan["configuration"] == "3d"
    assert plan["target_spacing"] == [1.0, 1.0, 1.0] and plan["resample"] is False
    assert plan["roi_size"] == [
        40,
        56,
        40,
    ]  # nnU-Net 3d_fullres on Task04_Hippocampus (MIC-DKFZ/nnUNet issue #148)
    assert plan["class_names"] == ["Anterior", "Posterior"] and plan["intensity"] == "zscore"
    assert any("patch [40, 56, 40]" in line for line in summary_lines(plan))


def test_a_single_case_cannot_be_planned() -> None:
    data = fingerprint([1.0, 1.0, 1.0], [64, 64, 64]) | {"num_cases": 1}
    with pytest.raises(ValueError, match="one labelled case cannot be split into training and validation"):
        make_plan(data)
