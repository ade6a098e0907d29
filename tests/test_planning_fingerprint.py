"""The dataset fingerprint: known values on synthetic data, the real hippocampus set, worker-count
independence, and one line naming the file for each bad input."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.conftest import HIPPOCAMPUS, SPINALCORD
from tests.planning_data import BRATS, LGG, brats_msd, lgg_folders, spinal_cord_folders
from unet_monai.checks import BadInputError
from unet_monai.planning.fingerprint import (
    fingerprint_dataset,
    load_fingerprint,
    main,
    save_fingerprint,
)

SHAPE = (32, 32, 16)  # RAS voxels of every synthetic case
SPACINGS = [(0.8, 0.8, 3.0), (0.9, 0.9, 3.0), (0.8, 0.8, 3.0), (1.0, 1.0, 4.0)]  # RAS mm
MEAN, STD = 100.0, 10.0  # foreground intensities
BOX_1 = (slice(4, 12), slice(4, 12), slice(2, 6))  # label 1: 8 x 8 x 4 voxels
BOXES_2 = [(slice(16, 20), slice(16, 20), slice(8, 12)), (slice(24, 30), slice(20, 30), slice(10, 12))]
VOXELS = math.prod(SHAPE)
CLASS_1 = 8 * 8 * 4
CLASS_2 = [4 * 4 * 4, 6 * 10 * 2]
# The array axes of the third case point to P, S and R (as the spinal-cord T2 does): the directions
# (world RAS) of the array axes are the columns.
PSR = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], dtype=np.float64)
LABELS = {"0": "background", "1": "one", "2": "two"}


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[BOX_1] = 1
    for box in BOXES_2:
        label[box] = 2
    return label


def _image(label: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.uniform(1.0, 20.0, size=SHAPE)
    image[label > 0] = rng.normal(MEAN, STD, size=int((label > 0).sum()))
    return image.astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), str(path))


def write_msd(root: Path, cases: int = 4, spacings: list[tuple[float, ...]] = SPACINGS) -> Path:
    """An MSD folder of ``cases`` synthetic volumes; the third is stored PSR, the others RAS."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for index in range(cases):
        label = _label()
        image = _image(label, index)
        affine = np.diag([*spacings[index], 1.0])
        if index == 2:
            # stored[i, j, k] = ras[k, ny - 1 - i, j]: array axes (y reversed, z, x), spacing with them
            image, label = (np.flip(np.transpose(a, (1, 2, 0)), axis=0) for a in (image, label))
            x, y, z = spacings[index]
            affine[:3, :3] = PSR @ np.diag([y, z, x])
        name = f"case_{index:03d}.nii.gz"
        _save(root / "imagesTr" / name, np.ascontiguousarray(image), affine)
        _save(root / "labelsTr" / name, np.ascontiguousarray(label), affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {"modality": {"0": "MRI"}, "labels": LABELS, "training": training}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


@pytest.fixture(scope="module")
def msd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_msd(tmp_path_factory.mktemp("msd"))


@pytest.fixture(scope="module")
def msd_fingerprint(msd: Path) -> dict:
    return fingerprint_dataset(msd, workers=1, progress=False)


def test_geometry_in_ras_order(msd_fingerprint: dict) -> None:
    geometry = msd_fingerprint["geometry"]
    assert msd_fingerprint["num_cases"] == 4 and msd_fingerprint["spatial_dims"] == 3
    assert geometry["spacing"]["median"] == [0.85, 0.85, 3.0]  # per axis: median of 4 cases
    assert geometry["spacing"]["min"] == [0.8, 0.8, 3.0] and geometry["spacing"]["max"] == [1.0, 1.0, 4.0]
    assert geometry["shape"]["median"] == list(SHAPE)
    assert geometry["anisotropy"] == pytest.approx(3.0 / 0.85, rel=1e-5)
    assert geometry["thick_axis"] == 2
    assert geometry["orientations"] == ["PSR", "RAS"]
    psr = msd_fingerprint["cases"][2]
    assert psr["orientation"] == "PSR"
    assert psr["shape"] == [SHAPE[1], SHAPE[2], SHAPE[0]]
    assert psr["spacing"] == [0.8, 3.0, 0.8]
    # the non-zero region is the whole volume (background intensities >= 1)
    assert geometry["median_relative_size_after_crop"] == 1.0


def test_class_fractions_and_objects(msd_fingerprint: dict) -> None:
    classes = msd_fingerprint["classes"]
    assert msd_fingerprint["label_values"] == [0, 1, 2]
    assert classes["1"]["name"] == "one"
    assert classes["1"]["voxel_fraction"] == pytest.approx(CLASS_1 / VOXELS, rel=1e-5)
    assert classes["2"]["voxel_fraction"] == pytest.approx(sum(CLASS_2) / VOXELS, rel=1e-5)
    assert classes["0"]["voxel_fraction"] == pytest.approx(1 - (CLASS_1 + sum(CLASS_2)) / VOXELS, rel=1e-5)
    assert classes["1"]["objects_per_case"] == {"min": 1, "median": 1, "max": 1}
    assert classes["2"]["objects_per_case"]["median"] == 2
    assert classes["2"]["object_voxels"] == {"min": 64, "median": 92, "max": 120}
    case = msd_fingerprint["cases"][0]
    assert case["classes"]["1"]["fraction"] == pytest.approx(CLASS_1 / VOXELS, rel=1e-5)
    assert case["classes"]["2"]["objects"] == 2
    # object volume in mm3: voxels times each case's voxel volume
    assert classes["1"]["object_volume"]["min"] == pytest.approx(CLASS_1 * 0.8 * 0.8 * 3.0, rel=1e-5)


def test_foreground_intensities_follow_the_written_distribution(msd_fingerprint: dict) -> None:
    (channel,) = msd_fingerprint["intensity"]
    stats = channel["foreground"]
    z = 2.5758  # the normal distribution's 99.5 % quantile
    assert channel["name"] == "MRI"
    assert stats["median"] == pytest.approx(MEAN, abs=0.5)
    assert stats["mean"] == pytest.approx(MEAN, abs=0.5)
    assert stats["std"] == pytest.approx(STD, abs=0.5)
    assert stats["percentile_00_5"] == pytest.approx(MEAN - z * STD, abs=2.0)
    assert stats["percentile_99_5"] == pytest.approx(MEAN + z * STD, abs=2.0)
    assert stats["min"] < stats["percentile_00_5"] < stats["percentile_99_5"] < stats["max"]
    assert channel["looks_normalised"] is False
    per_case = msd_fingerprint["cases"][1]["intensity"][0]["foreground"]
    assert per_case["mean"] == pytest.approx(MEAN, abs=1.0)


def test_already_normalised_images_are_detected(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", cases=2)
    for path in (root / "imagesTr").glob("*.nii.gz"):
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        _save(path, (data - data.mean()) / data.std(), image.affine)
    fingerprint = fingerprint_dataset(root, workers=1, progress=False)
    assert fingerprint["intensity"][0]["looks_normalised"] is True


def test_4d_image_with_channels_last(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", cases=2)
    for path in (root / "imagesTr").glob("*.nii.gz"):
        _rewrite(path, lambda d, a: (np.stack([d, 2 * d], axis=-1), a))  # MSD: channels on the 4th axis
    description = json.loads((root / "dataset.json").read_text())
    description["modality"] = {"0": "T1", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(description))
    fingerprint = fingerprint_dataset(root, workers=1, progress=False)
    assert fingerprint["channels"] == 2 and fingerprint["channel_names"] == ["T1", "T2"]
    assert fingerprint["cases"][0]["shape"] == list(SHAPE)
    first, second = (c["foreground"] for c in fingerprint["intensity"])
    assert second["median"] == pytest.approx(2 * first["median"], rel=1e-4)
    assert second["percentile_99_5"] == pytest.approx(2 * first["percentile_99_5"], rel=1e-4)


def test_nnunet_raw_layout(tmp_path: Path, msd_fingerprint: dict) -> None:
    """nnU-Net v2's raw folder: no training list, one imagesTr/<case>_<XXXX> file per channel."""
    root = write_msd(tmp_path / "raw")
    for image in sorted((root / "imagesTr").glob("*.nii.gz")):
        image.rename(image.with_name(image.name.replace(".nii.gz", "_0000.nii.gz")))
    description = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "one": 1, "two": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    fingerprint = fingerprint_dataset(root, workers=1, progress=False)
    for key in ("geometry", "intensity", "classes", "label_values"):
        assert fingerprint[key] == msd_fingerprint[key]
    assert [c["case"] for c in fingerprint["cases"]] == [f"case_{i:03d}" for i in range(4)]
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(root, workers=1, progress=False)
    _one_line(error, str(root / "imagesTr" / "case_001_0000.nii.gz"), "no such file", "nnU-Net layout")


def test_same_result_with_one_and_two_workers(msd: Path, msd_fingerprint: dict) -> None:
    assert fingerprint_dataset(msd, workers=2, progress=False) == msd_fingerprint


def test_save_and_load(msd_fingerprint: dict, tmp_path: Path) -> None:
    path = save_fingerprint(msd_fingerprint, tmp_path / "fingerprint.json")
    assert load_fingerprint(path) == msd_fingerprint
    text = path.read_text()
    assert "NaN" not in text and "0.8000000000000000444" not in text
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(BadInputError, match="other.json: not a fingerprint"):
        load_fingerprint(tmp_path / "other.json")


def test_command_line_entry(msd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "fingerprint.json"
    assert main(["--data", str(msd), "--output", str(output), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 cases, 3D, 1 channel(s)" in out and "spacing median [0.85, 0.85, 3.0]" in out
    assert load_fingerprint(output)["num_cases"] == 4
    assert main(["--data", str(tmp_path), "--output", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset.json" in err


def test_png_folders(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        label = np.zeros((40, 60), dtype=np.uint8)
        label[10:20, 5 : 5 + 10 * (index + 1)] = 1  # 100, 200, 300 pixels
        image = rng.integers(0, 50, size=label.shape).astype(np.uint8)
        image[label == 1] = 200
        Image.fromarray(image).save(images / f"slice_{index}.png")
        Image.fromarray(label).save(labels / f"slice_{index}.png")
    fingerprint = fingerprint_dataset(images_dir=images, labels_dir=labels, workers=1, progress=False)
    assert fingerprint["spatial_dims"] == 2 and fingerprint["channels"] == 1
    assert fingerprint["geometry"]["axes"] == "as stored"
    assert [c["case"] for c in fingerprint["cases"]] == ["slice_0", "slice_1", "slice_2"]
    assert fingerprint["classes"]["1"]["voxel_fraction"] == pytest.approx(600 / (3 * 2400), rel=1e-5)
    assert [c["classes"]["1"]["fraction"] for c in fingerprint["cases"]] == pytest.approx(
        [100 / 2400, 200 / 2400, 300 / 2400], rel=1e-5
    )
    assert fingerprint["intensity"][0]["foreground"]["median"] == 200.0
    assert fingerprint["declared_labels"] is None and fingerprint["label_values"] == [0, 1]


def test_mha_folders_through_itk(tmp_path: Path) -> None:
    import itk

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for index in range(2):
        label = _label()
        for folder, data in ((images, _image(label, index)), (labels, label)):
            volume = itk.image_from_array(np.ascontiguousarray(data.transpose(2, 1, 0)))  # ITK: z, y, x
            volume.SetSpacing([0.5, 0.5, 2.0])
            itk.imwrite(volume, str(folder / f"case_{index}.mha"))
    fingerprint = fingerprint_dataset(images_dir=images, labels_dir=labels, workers=1, progress=False)
    assert [c["case"] for c in fingerprint["cases"]] == ["case_0", "case_1"]
    assert fingerprint["geometry"]["spacing"]["median"] == [0.5, 0.5, 2.0]
    assert fingerprint["geometry"]["orientations"] == ["LPS"]  # ITK's identity direction, in RAS terms
    assert fingerprint["classes"]["1"]["voxel_fraction"] == pytest.approx(CLASS_1 / VOXELS, rel=1e-5)
    (images / "case_1.mha").write_text("garbage")
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(images_dir=images, labels_dir=labels, workers=1, progress=False)
    _one_line(error, str(images / "case_1.mha"), "unreadable or corrupt image file")


@pytest.mark.skipif(not SPINALCORD.is_dir(), reason=f"real data absent: {SPINALCORD} (see shared/data)")
def test_real_spinal_cord_anisotropic_and_psr(tmp_path: Path) -> None:
    images, labels = spinal_cord_folders(tmp_path)
    fingerprint = fingerprint_dataset(images_dir=images, labels_dir=labels, workers=1, progress=False)
    geometry = fingerprint["geometry"]
    assert geometry["orientations"] == ["LAS", "PSR"]
    assert geometry["spacing"]["median"] == pytest.approx([0.84375, 0.84375, 7.5], rel=1e-5)
    assert geometry["thick_axis"] == 2 and geometry["anisotropy"] > 8
    t2 = next(c for c in fingerprint["cases"] if c["case"] == "t2")
    assert t2["shape"] == [60, 55, 52] and t2["ras_axes"] == [1, 2, 0]
    assert fingerprint["classes"]["1"]["objects_per_case"]["median"] == 1
    assert fingerprint["dtypes"] == ["float32", "int16"]


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"real data absent: {HIPPOCAMPUS} (see shared/data)")
def test_real_hippocampus_subset() -> None:
    one = fingerprint_dataset(HIPPOCAMPUS, workers=1, progress=False, max_cases=12)
    two = fingerprint_dataset(HIPPOCAMPUS, workers=1, progress=False, max_cases=12)
    assert one == two
    assert one["num_cases"] == 12 and one["channel_names"] == ["MRI"]
    assert one["geometry"]["spacing"]["median"] == [1.0, 1.0, 1.0]
    assert one["geometry"]["orientations"] == ["RAS"] and one["geometry"]["thick_axis"] is None
    assert one["label_values"] == [0, 1, 2]
    for value in ("1", "2"):
        assert 0.01 < one["classes"][value]["voxel_fraction"] < 0.06
        assert one["classes"][value]["objects_per_case"]["median"] == 1
    assert all(30 <= n <= 60 for n in one["geometry"]["shape"]["median"])


@pytest.mark.skipif(not LGG.is_dir(), reason=f"real data absent: {LGG} (see shared/data)")
def test_real_lgg_tiff_slices(tmp_path: Path) -> None:
    """3-channel TIFF slices and their masks (255), paired by name through two folders of links."""
    images, labels = lgg_folders(tmp_path)
    fingerprint = fingerprint_dataset(
        images_dir=images, labels_dir=labels, workers=2, progress=False, max_cases=12
    )
    assert fingerprint["num_cases"] == 12
    assert fingerprint["spatial_dims"] == 2 and fingerprint["channels"] == 3
    assert fingerprint["geometry"]["shape"]["median"] == [256, 256]
    assert fingerprint["dtypes"] == ["uint8"]
    assert set(fingerprint["label_values"]) <= {0, 255}


@pytest.mark.skipif(not BRATS.is_dir(), reason=f"real data absent: {BRATS} (see shared/data)")
def test_real_brats_as_a_two_channel_msd_folder(tmp_path: Path) -> None:
    """BraTS as nnU-Net writes it: one file per channel, ``channel_names``, labels as name -> value."""
    data = brats_msd(tmp_path / "brats")
    fingerprint = fingerprint_dataset(data, workers=2, progress=False)
    assert fingerprint["channels"] == 2 and fingerprint["channel_names"] == ["FLAIR", "T1c"]
    assert fingerprint["declared_labels"]["2"] == "edema"
    assert fingerprint["geometry"]["shape"]["median"] == [240, 240, 155]
    assert fingerprint["geometry"]["orientations"] == ["LPS"]
    # z-scored in the brain (std 1.3 - 1.8 there), a constant fill value around it
    assert [c["looks_normalised"] for c in fingerprint["intensity"]] == [True, True]
    assert fingerprint["classes"]["2"]["cases_present"] == 2


# --- bad input: one line naming the file and the problem ------------------------------------------


def _one_line(error: pytest.ExceptionInfo[BadInputError], *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


@pytest.fixture
def small_msd(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "msd", cases=2)


def _rewrite(path: Path, change) -> None:  # noqa: ANN001
    image = nib.load(str(path))
    data, affine = change(np.asarray(image.dataobj), image.affine.copy())
    _save(path, data, affine)


def test_undeclared_label_value(small_msd: Path) -> None:
    label = small_msd / "labelsTr" / "case_001.nii.gz"
    _rewrite(label, lambda d, a: (np.where(d == 2, 3, d).astype(np.uint8), a))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=1, progress=False)
    _one_line(error, str(label), "[3] not declared", "dataset.json")


def test_label_shape_differs(small_msd: Path) -> None:
    label = small_msd / "labelsTr" / "case_000.nii.gz"
    _rewrite(label, lambda d, a: (d[:, :, :8], a))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=1, progress=False)
    _one_line(error, str(label), "shape 32x32x8 differs")


def test_label_affine_differs(small_msd: Path) -> None:
    label = small_msd / "labelsTr" / "case_001.nii.gz"
    _rewrite(label, lambda d, a: (d, a @ np.diag([1.0, 1.0, 1.1, 1.0])))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=2, progress=False)
    _one_line(error, str(label), "affine differs")


def test_channel_count_differs_between_cases(small_msd: Path) -> None:
    image = small_msd / "imagesTr" / "case_001.nii.gz"
    _rewrite(image, lambda d, a: (np.stack([d, d], axis=-1), a))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=1, progress=False)
    _one_line(error, str(image), "2 channel(s)", "declares 1")
    # without a declaration (image folders): against the first case
    (small_msd / "dataset.json").unlink()
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(
            images_dir=small_msd / "imagesTr", labels_dir=small_msd / "labelsTr", workers=1, progress=False
        )
    _one_line(error, str(image), "2 channel(s)", "case_000.nii.gz has 1")


def test_truncated_file(small_msd: Path) -> None:
    image = small_msd / "imagesTr" / "case_001.nii.gz"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # header intact, voxels cut
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=2, progress=False)
    _one_line(error, str(image), "truncated or corrupt NIfTI")


def test_nan_in_an_image(small_msd: Path) -> None:
    image = small_msd / "imagesTr" / "case_000.nii.gz"
    _rewrite(image, lambda d, a: (np.where(np.arange(d.size).reshape(d.shape) == 5, np.nan, d), a))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=1, progress=False)
    _one_line(error, str(image), "1 NaN")


def test_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(images_dir=tmp_path / "images", labels_dir=tmp_path / "labels", progress=False)
    _one_line(error, str(tmp_path / "images"), "empty dataset")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "training": []}))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(tmp_path, progress=False)
    _one_line(error, "dataset.json", "lists no cases")


def test_no_foreground_anywhere(small_msd: Path) -> None:
    for label in (small_msd / "labelsTr").glob("*.nii.gz"):
        _rewrite(label, lambda d, a: (np.zeros_like(d), a))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=1, progress=False)
    _one_line(error, "dataset.json", "empty label set")


def test_label_file_missing(small_msd: Path) -> None:
    label = small_msd / "labelsTr" / "case_001.nii.gz"
    label.unlink()
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, progress=False)
    _one_line(error, str(label), "do not exist")
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(
            images_dir=small_msd / "imagesTr", labels_dir=small_msd / "labelsTr", progress=False
        )
    _one_line(error, str(label), "label file missing")


def test_no_dataset_json(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(tmp_path, progress=False)
    _one_line(error, str(tmp_path / "dataset.json"), "--images DIR --labels DIR")


def test_gzip_garbage_is_one_line(small_msd: Path) -> None:
    label = small_msd / "labelsTr" / "case_000.nii.gz"
    label.write_bytes(gzip.compress(b"not a nifti header" * 3))
    with pytest.raises(BadInputError) as error:
        fingerprint_dataset(small_msd, workers=1, progress=False)
    _one_line(error, str(label), "corrupt")
