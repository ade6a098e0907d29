"""Bad input that used to give silently wrong output (issue 16): damaged affines, intensities whose
normalisation is not finite, duplicate / escaping / malformed datalist entries, and evaluate's classes.

Every case runs through the real CLI (``unet_monai.cli.main``) on files made from real MSD hippocampus
cases, and must stop with one ``error: <file>: <problem>`` line, exit code 2, no traceback, nothing written.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests import test_bad_input as corpus
from tests.conftest import HIPPOCAMPUS, REPO_ROOT, require
from tests.test_bad_input import TRAIN_2D, _msd_copy, assert_one_error, infer_args, run_cli, written_files
from unet_monai.checks import BadInputError
from unet_monai.transforms import build_eval_transforms

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# The corpus's fixtures: random weights of the small networks, live log streams.
checkpoints = corpus.checkpoints
_live_log_streams = corpus._live_log_streams

BUNDLES = REPO_ROOT / "bundles"
CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004")


def _source() -> nib.Nifti1Image:
    return nib.load(require(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz"))


def _patch_header(path: Path, offset: int, fmt: str, *values: float) -> None:
    """Write ``values`` into a .nii.gz header as the raw bytes say, past nibabel's fixes on save."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(gzip.compress(bytes(raw)))


# NIfTI-1 header offsets: pixdim (8 float32) at 76, qform_code / sform_code (int16) at 252 / 254,
# quatern_b.. qoffset_z (6 float32) at 256, srow_x / srow_y / srow_z (4 float32 each) at 280 / 296 / 312.
AFFINE_CASES: dict[str, Callable[[Path], None]] = {
    # sform NaN: MONAI's reader silently falls back to the qform, nibabel keeps the NaN.
    "sform_nan": lambda p: _patch_header(p, 280, "f", float("nan")),
    # qform used (sform_code 0) with a NaN offset.
    "qform_nan": lambda p: (_patch_header(p, 254, "h", 0), _patch_header(p, 268, "f", float("nan"))),
    # a zero spacing in the qform's pixdim: nibabel would replace it by 1 when loading.
    "zero_spacing": lambda p: (_patch_header(p, 254, "h", 0), _patch_header(p, 80, "f", 0.0)),
    # a singular sform: the x row all zeros.
    "singular": lambda p: _patch_header(p, 280, "ffff", 0.0, 0.0, 0.0, 0.0),
    "inf_sform": lambda p: _patch_header(p, 296, "f", float("inf")),
}
AFFINE_PROBLEMS = {
    "sform_nan": r"affine has NaN/Inf \(sform",
    "qform_nan": r"affine has NaN/Inf \(qform",
    "zero_spacing": r"degenerate affine \(qform.*spacing 0",
    "singular": r"degenerate affine \(sform",
    "inf_sform": r"affine has NaN/Inf \(sform",
}


@pytest.mark.parametrize("case", list(AFFINE_CASES))
def test_damaged_affine_is_one_error_and_no_mask(
    case: str, checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case}.nii.gz"
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001.nii.gz", path)
    AFFINE_CASES[case](path)
    output = tmp_path / "masks"
    code, _, err = run_cli(infer_args("hippocampus_unet3d", path, output, checkpoints), capsys)
    assert_one_error(code, err, path, AFFINE_PROBLEMS[case])
    assert written_files(output) == []


def _float_image(tmp_path: Path, name: str, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    source = _source()
    data = change(np.asarray(source.dataobj, dtype=np.float32))
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), source.affine), path)
    return path


def _spike(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[10, 20, 10] = 1e35
    return a


INTENSITY_CASES = {
    # every voxel times 1e35: MONAI's float32 z-score overflows (NaN / Inf), the mask was one label
    "scaled_1e35": (lambda a: a * np.float32(1e35), r"not finite after z-score intensity scaling"),
    # one corrupt voxel of 1e35: the z-score maps every other voxel to one value, the mask was one label
    "spike_1e35": (_spike, r"z-score intensity normalisation merges \d+ distinct intensities into [12]\b"),
}


@pytest.mark.parametrize("case", list(INTENSITY_CASES))
@pytest.mark.parametrize("bundle", ["hippocampus_unet2d", "hippocampus_unet3d"])
def test_intensities_whose_normalisation_is_not_usable_are_one_error(
    case: str,
    bundle: str,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    change, problem = INTENSITY_CASES[case]
    path = _float_image(tmp_path, case, change)
    output = tmp_path / "masks"
    code, _, err = run_cli(infer_args(bundle, path, output, checkpoints), capsys)
    assert_one_error(code, err, path, problem)
    assert written_files(output) == []


def test_moderate_outlier_is_accepted(tmp_path: Path) -> None:
    """A bright voxel of 1e6 squeezes the contrast but loses nothing in float32: not refused."""
    path = _float_image(
        tmp_path, "bright", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, 1e6, a)
    )
    out = build_eval_transforms(label_key=None)({"image": str(path)})
    assert torch.isfinite(out["image"]).all()


def test_percentile_scaling_of_extreme_values_is_one_error(tmp_path: Path) -> None:
    """Values near the float32 limit on both sides: the percentile range overflows to Inf."""

    def extremes(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[:5] = 3e38
        a[5:10] = -3e38
        return a

    path = _float_image(tmp_path, "extremes", extremes)
    chain = build_eval_transforms(label_key=None, intensity="percentile")
    with pytest.raises(Exception) as raised:
        chain({"image": str(path)})
    error: BaseException | None = raised.value
    while error is not None and not isinstance(error, BadInputError):
        error = error.__cause__
    assert error is not None and str(error).startswith(f"{path}: ")
    assert "not finite after percentile intensity scaling" in str(error)


# --- dataset.json ---------------------------------------------------------------------------------


def _edit_training(change: Callable[[list], object]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        description = json.loads((folder / "dataset.json").read_text())
        description["training"] = change(description["training"])
        (folder / "dataset.json").write_text(json.dumps(description))

    return edit


def _outside_file(folder: Path) -> None:
    """One entry names a real case copied outside the data folder (absolute path)."""
    elsewhere = folder.parent / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(folder / "imagesTr" / "hippocampus_001.nii.gz", elsewhere / "x.nii.gz")
    _edit_training(lambda t: [{**t[0], "image": str(elsewhere / "x.nii.gz")}, *t[1:]])(folder)


def _write(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "dataset.json").write_text(text)


DATASET_ERRORS = {
    "duplicate": (_edit_training(lambda t: [*t, t[1]]), r"case listed twice: .*hippocampus_003"),
    "duplicate_spelled_differently": (
        _edit_training(lambda t: [*t, {k: v.removeprefix("./") for k, v in t[0].items()}]),
        r"case listed twice: .*hippocampus_001",
    ),
    "dotdot": (
        _edit_training(lambda t: [*t, {"image": "../../etc/x.nii.gz", "label": "../../etc/y.nii.gz"}]),
        r"entry outside the data folder .*: \.\./\.\./etc/x\.nii\.gz",
    ),
    "absolute_elsewhere": (_outside_file, r"entry outside the data folder .*elsewhere/x\.nii\.gz"),
    "invalid_json": (_write('{"training": [}'), r"not valid JSON \(line 1"),
    "not_an_object": (_write("[1, 2]"), r"must hold a JSON object"),
    "no_training": (_write('{"name": "x"}'), r"no 'training' list"),
    "training_not_list": (_write('{"training": "imagesTr"}'), r"'training' must be a list"),
    "entry_not_object": (_write('{"training": ["a.nii.gz"]}'), r"training\[0\] must be an object"),
    "no_label": (
        _edit_training(lambda t: [{"image": t[0]["image"]}, *t[1:]]),
        r"training\[0\] has no 'label'",
    ),
    "label_not_string": (
        _edit_training(lambda t: [{**t[0], "label": 3}, *t[1:]]),
        r"training\[0\]\['label'\] must be a file path",
    ),
}


@pytest.mark.parametrize("case", list(DATASET_ERRORS))
def test_bad_dataset_json_is_one_error_naming_it(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, problem = DATASET_ERRORS[case]
    dataset = _msd_copy(tmp_path / "data", edit)
    models = tmp_path / "models"
    args = ["train", "--bundle", str(BUNDLES / "hippocampus_unet2d"), "--data", str(dataset), *TRAIN_2D]
    args += ["--set", f"ckpt_dir={models}", "--set", f"output_dir={tmp_path / 'runs'}"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert_one_error(code, err, (dataset / "dataset.json").resolve(), problem)
    assert written_files(models) == []


def test_datalist_override_listing_a_case_twice_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = _msd_copy(tmp_path / "data")
    items = [
        {
            "image": str(dataset / "imagesTr" / f"{c}.nii.gz"),
            "label": str(dataset / "labelsTr" / f"{c}.nii.gz"),
        }
        for c in ("hippocampus_001", "hippocampus_003", "hippocampus_001")
    ]
    args = ["train", "--bundle", str(BUNDLES / "hippocampus_unet2d"), "--data", str(dataset), *TRAIN_2D]
    args += ["--set", f"datalist={json.dumps(items)}", "--set", f"ckpt_dir={tmp_path / 'models'}"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert_one_error(
        code, err, "datalist", r"case listed twice: .*hippocampus_001\.nii\.gz \(items 0 and 2\)"
    )


# --- evaluate -------------------------------------------------------------------------------------


def _eval_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Reference labels of three real cases and perfect predictions (``<case>_seg.nii.gz``)."""
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    labels.mkdir()
    preds.mkdir()
    for case in CASES:
        source = require(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")
        shutil.copy(source, labels / f"{case}.nii.gz")
        shutil.copy(source, preds / f"{case}_seg.nii.gz")
    return preds, labels


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], dtype: type = np.uint8) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).astype(np.float64)).astype(dtype)
    header = image.header.copy()
    header.set_data_dtype(dtype)
    nib.save(nib.Nifti1Image(data, image.affine, header), path)


def _set_voxel(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[3, 4, 5] = value
        return a

    return change


def evaluate(preds: Path, labels: Path, output: Path, *extra: str) -> list[str]:
    return ["evaluate", "--pred", str(preds), "--label", str(labels), "--output", str(output), *extra]


BAD_PREDICTION = "hippocampus_003_seg.nii.gz"
EVALUATE_ERRORS = {
    # one voxel of 255: was a 255-class report (mean Dice 0.75 for a perfect mask)
    "255_no_classes": (
        lambda p: _rewrite(p, _set_voxel(255)),
        [],
        BAD_PREDICTION,
        r"label values \[255\] outside the classes 0 \.\. 2 \(3 classes; classes inferred from the label",
    ),
    "255_in_reference": (
        lambda p: _rewrite(p.parents[1] / "labels" / "hippocampus_003.nii.gz", _set_voxel(255)),
        [],
        "labels",
        r"reference label values 0, 1, 2, 255 are not a small contiguous set 0 \.\. K: pass --num-classes",
    ),
    "255_num_classes": (
        lambda p: _rewrite(p, _set_voxel(255)),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"label values \[255\] outside the classes 0 \.\. 2 \(3 classes; classes from --num-classes\)",
    ),
    # one voxel of 200000 (int32 file): was an attempt to allocate ~50 GB
    "200000": (
        lambda p: _rewrite(p, _set_voxel(200000), np.int32),
        ["--class-names", "anterior", "posterior"],
        BAD_PREDICTION,
        r"label values \[200000\] outside the classes 0 \.\. 2",
    ),
    "200000_bundle": (
        lambda p: _rewrite(p, _set_voxel(200000), np.int32),
        ["--bundle", str(BUNDLES / "hippocampus_unet3d")],
        BAD_PREDICTION,
        r"label values \[200000\] outside the classes 0 \.\. 2",
    ),
    "nan": (
        lambda p: _rewrite(p, _set_voxel(np.nan), np.float32),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"1 NaN / infinite value\(s\) in a label map",
    ),
    "fraction": (
        lambda p: _rewrite(p, lambda a: np.where(a == 1, 0.9999, a), np.float32),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"label values must be integers, found 0\.9999",
    ),
    "negative": (
        lambda p: _rewrite(p, _set_voxel(-1), np.int16),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"label values \[-1\] outside the classes",
    ),
    "2d_prediction": (
        lambda p: nib.save(nib.Nifti1Image(np.asarray(nib.load(p).dataobj)[:, :, 0], np.eye(4)), p),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"2D label map \(shape \d+x\d+\) against a 3D reference \(shape \d+x\d+x\d+",
    ),
    "nan_affine": (
        lambda p: _patch_header(p, 280, "f", float("nan")),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"affine has NaN/Inf \(sform",
    ),
    "shape": (
        lambda p: nib.save(nib.Nifti1Image(np.asarray(nib.load(p).dataobj)[:-1], nib.load(p).affine), p),
        ["--num-classes", "3"],
        BAD_PREDICTION,
        r"Shape mismatch: prediction shape \(\d+, \d+, \d+\), reference .*hippocampus_003\.nii\.gz shape",
    ),
}


@pytest.mark.parametrize("case", list(EVALUATE_ERRORS))
def test_bad_prediction_is_one_evaluate_error(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, extra, where, problem = EVALUATE_ERRORS[case]
    preds, labels = _eval_folders(tmp_path)
    change(preds / BAD_PREDICTION)
    output = tmp_path / "report"
    code, _, err = run_cli(evaluate(preds, labels, output, *extra), capsys)
    assert code == 2
    place = labels if where == "labels" else preds / where
    assert_one_error(code, err, place, problem)
    assert written_files(output) == []


def test_evaluate_classes_from_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds, labels = _eval_folders(tmp_path)
    code, out, err = run_cli(
        evaluate(preds, labels, tmp_path / "report", "--bundle", str(BUNDLES / "hippocampus_unet2d")), capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["classes"] == ["anterior", "posterior"]
    assert summary["mean"]["dice"] == pytest.approx(1.0)
    assert "classes from" in out and "metadata.json" in out


def test_evaluate_infers_small_contiguous_classes_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preds, labels = _eval_folders(tmp_path)
    code, out, err = run_cli(evaluate(preds, labels, tmp_path / "report"), capsys)
    assert code == 0, err
    assert "classes inferred from the label values 0 .. 2 (3 classes)" in out
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["mean"]["dice"] == pytest.approx(
        1.0
    )


def test_evaluate_bundle_and_num_classes_disagree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds, labels = _eval_folders(tmp_path)
    args = evaluate(preds, labels, tmp_path / "report", "--bundle", str(BUNDLES / "hippocampus_unet2d"))
    code, _, err = run_cli([*args, "--num-classes", "5"], capsys)
    assert_one_error(code, err, "--num-classes 5", r"the bundle's metadata\.json has 3 classes")


def test_evaluate_memory_error_is_one_line_with_the_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    preds, labels = _eval_folders(tmp_path)

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError()

    monkeypatch.setattr("unet_monai.evaluate.case_metrics", no_memory)
    code, _, err = run_cli(evaluate(preds, labels, tmp_path / "report", "--num-classes", "3"), capsys)
    assert code == 2
    assert_one_error(
        code,
        err,
        preds / "hippocampus_001_seg.nii.gz",
        r"out of memory computing the metrics \(asked for about [\d.]+ [KMG]iB",
    )


FOLDER_ERRORS = {
    "empty_labels": (
        lambda p, labels: [f.unlink() for f in labels.iterdir()],
        "labels",
        r"no reference label maps",
    ),
    "empty_preds": (
        lambda p, labels: [f.unlink() for f in p.iterdir()],
        "preds",
        r"no prediction for 3 case\(s\)",
    ),
    "other_names": (
        lambda p, labels: [f.rename(p / f.name.replace("hippocampus", "hc")) for f in list(p.iterdir())],
        "preds",
        r"no prediction for 3 case\(s\): hippocampus_001, hippocampus_003, hippocampus_004",
    ),
    "missing_folder": (lambda p, labels: shutil.rmtree(p), "preds", r"no such folder"),
}


@pytest.mark.parametrize("case", list(FOLDER_ERRORS))
def test_evaluate_folder_problems_are_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, where, problem = FOLDER_ERRORS[case]
    preds, labels = _eval_folders(tmp_path)
    change(preds, labels)
    code, _, err = run_cli(evaluate(preds, labels, tmp_path / "report", "--num-classes", "3"), capsys)
    assert code == 2
    assert_one_error(code, err, preds if where == "preds" else labels, problem)


def test_chill_scores_the_cases_that_have_a_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preds, labels = _eval_folders(tmp_path)
    (preds / f"{CASES[1]}_seg.nii.gz").unlink()
    code, _, err = run_cli(evaluate(preds, labels, tmp_path / "strict", "--num-classes", "3"), capsys)
    assert_one_error(code, err, preds, r"no prediction for 1 case\(s\): hippocampus_003 .*--chill scores")
    assert not (tmp_path / "strict").exists()

    code, out, _ = run_cli(
        evaluate(preds, labels, tmp_path / "chill", "--num-classes", "3", "--chill"), capsys
    )
    assert code == 0
    assert "--chill: 1 case(s) without a prediction left out of the scores: hippocampus_003" in out
    summary = json.loads((tmp_path / "chill" / "summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["cases_without_prediction"] == ["hippocampus_003"]
    assert summary["mean"]["dice"] == pytest.approx(1.0)  # the two scored predictions are perfect
