"""Batch inference (``unet-monai infer`` on a folder): bad cases reported and skipped, atomic outputs,
``--resume`` after a SIGKILL, and a folder split across processes (``--shard`` and ``torchrun``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import (
    AXIAL_ONLY,
    HIPPOCAMPUS,
    HIPPOCAMPUS_BUNDLE,
    REPO_ROOT,
    require,
    wide_random_checkpoint,
)
from unet_monai.batch_inference import EXIT_FAILED, shard_from, wait_for_other_ranks
from unet_monai.bundle import run_workflow
from unet_monai.cli import main
from unet_monai.io import OutputError
from unet_monai.transforms import AtomicSaveImaged
from unet_monai.transforms.save import AtomicSaveImage

SMALL = {"network_def#features": 8, "members": AXIAL_ONLY["members"]}
SMALL_ARGS = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(AXIAL_ONLY["members"])]
GOOD = 3  # real volumes in the mixed folder
KILL_CASES = 16  # volumes in the kill-and-resume folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded wide random weights of the small axial network (see wide_random_checkpoint)."""
    return wide_random_checkpoint(tmp_path_factory.mktemp("model"), SMALL)


@pytest.fixture(scope="module")
def sources() -> list[Path]:
    return sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[:KILL_CASES]


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, sources: list[Path], checkpoint: Path, one_torch_thread: None
) -> Path:
    """Masks of the first volumes from plain single-file runs of the bundle's inference.json."""
    out = tmp_path_factory.mktemp("reference")
    for source in sources[:GOOD]:
        run_workflow(
            HIPPOCAMPUS_BUNDLE,
            "inference",
            **SMALL,
            datalist=[str(source)],
            output_dir=str(out),
            ckpt_path=str(checkpoint),
        )
    return out


def _masks(folder: Path) -> list[str]:
    """The masks under their final names (pathlib's glob also matches hidden ``.partial-`` files)."""
    return sorted(p.name for p in folder.glob("*_seg.nii.gz") if not p.name.startswith("."))


def _seg_name(source: Path) -> str:
    return source.name.replace(".nii.gz", "_seg.nii.gz")


def _mixed_folder(folder: Path, sources: list[Path]) -> tuple[Path, Path]:
    """GOOD real volumes (links), a truncated .nii.gz and a NaN volume made from the first one."""
    folder.mkdir()
    for source in sources[:GOOD]:
        (folder / source.name).symlink_to(source)
    data = sources[0].read_bytes()
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    image = nib.load(sources[0])
    array = image.get_fdata().astype(np.float32)
    array[5:8, 10:14, 8:10] = np.nan
    nan = folder / "nan_volume.nii.gz"
    nib.save(nib.Nifti1Image(array, image.affine), nan)
    return truncated, nan


def _infer(checkpoint: Path, source: Path, output: Path, *extra: str) -> int:
    return main(["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(checkpoint), *SMALL_ARGS,
                 "--input", str(source), "--output", str(output), *extra])  # fmt: skip


def _assert_equal_masks(folder: Path, reference: Path, names: list[str]) -> None:
    for name in names:
        mask = np.asarray(nib.load(folder / name).dataobj)
        expected = np.asarray(nib.load(reference / name).dataobj)
        assert len(np.unique(expected)) > 1, f"{name}: reference mask holds one label (a vacuous comparison)"
        np.testing.assert_array_equal(mask, expected, err_msg=name)


def test_bad_cases_are_reported_and_skipped_good_ones_written(
    tmp_path: Path,
    sources: list[Path],
    checkpoint: Path,
    reference: Path,
    capsys: pytest.CaptureFixture,
    one_torch_thread: None,
) -> None:
    truncated, nan = _mixed_folder(tmp_path / "in", sources)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".partial-0123456789ab-{_seg_name(sources[0])}"  # what a killed run leaves
    stale.write_bytes(b"half a mask")

    assert _infer(checkpoint, tmp_path / "in", out) == EXIT_FAILED
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert any(truncated.name in line for line in errors) and any(nan.name in line for line in errors)
    assert f"{GOOD} written, 0 skipped, 2 failed" in captured.out

    good = [_seg_name(s) for s in sources[:GOOD]]
    assert sorted(p.name for p in out.iterdir()) == sorted([*good, "inference_report.json"])  # stale one gone
    _assert_equal_masks(out, reference, good)

    report = json.loads((out / "inference_report.json").read_text())
    assert report["summary"] == {"written": GOOD, "skipped": 0, "failed": 2}
    cases = {Path(case["file"]).name: case for case in report["cases"]}
    assert len(cases) == GOOD + 2
    for source in sources[:GOOD]:
        case = cases[source.name]
        assert case["status"] == "written" and case["error"] is None
        assert case["output"] == str(out / _seg_name(source))
    for bad in (truncated, nan):
        case = cases[bad.name]
        assert case["status"] == "failed" and bad.name in case["error"] and "\n" not in case["error"]
        assert not Path(case["output"]).exists()
    assert "NaN" in cases[nan.name]["error"]

    # --resume: the written masks are skipped (untouched), the failed cases are tried again
    stamps = {name: (out / name).stat().st_mtime_ns for name in good}
    assert _infer(checkpoint, tmp_path / "in", out, "--resume") == EXIT_FAILED
    assert f"0 written, {GOOD} skipped, 2 failed" in capsys.readouterr().out
    assert {name: (out / name).stat().st_mtime_ns for name in good} == stamps
    # without --resume: every mask is written again, by rename (a new inode), with the same content
    inodes = {name: (out / name).stat().st_ino for name in good}
    assert _infer(checkpoint, tmp_path / "in", out) == EXIT_FAILED
    assert all((out / name).stat().st_ino != inodes[name] for name in good)
    _assert_equal_masks(out, reference, good)


def test_killed_run_leaves_no_partial_mask_and_resume_finishes(
    tmp_path: Path, sources: list[Path], checkpoint: Path, reference: Path, one_torch_thread: None
) -> None:
    if len(sources) < KILL_CASES:
        pytest.skip(f"needs {KILL_CASES} hippocampus volumes, found {len(sources)}")
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for source in sources:
        (folder / source.name).symlink_to(source)
    command = [sys.executable, "-m", "unet_monai.cli", "infer", "--bundle", str(HIPPOCAMPUS_BUNDLE),
               "--checkpoint", str(checkpoint), *SMALL_ARGS,
               "--input", str(folder), "--output", str(out)]  # fmt: skip
    log = tmp_path / "killed_run.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=sink, stderr=sink
        )
    deadline = time.monotonic() + 120
    while len(_masks(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"run ended before the kill:\n{log.read_text()[-2000:]}"
    done = _masks(out)
    assert 3 <= len(done) < KILL_CASES
    for name in done:  # every mask under its final name is complete
        assert (
            np.asarray(nib.load(out / name).dataobj).shape
            == nib.load(folder / name.replace("_seg", "")).shape
        )

    assert _infer(checkpoint, folder, out, "--resume") == 0
    report = json.loads((out / "inference_report.json").read_text())
    assert report["summary"] == {"written": KILL_CASES - len(done), "skipped": len(done), "failed": 0}
    assert {Path(c["output"]).name for c in report["cases"] if c["status"] == "skipped"} == set(done)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*(_seg_name(s) for s in sources), "inference_report.json"])  # no .partial- left
    _assert_equal_masks(out, reference, [_seg_name(s) for s in sources[:GOOD]])


def _written_by(reports: list[dict]) -> list[str]:
    return [Path(c["output"]).name for r in reports for c in r["cases"] if c["status"] == "written"]


def test_shards_split_the_folder_disjointly(
    tmp_path: Path, sources: list[Path], checkpoint: Path, reference: Path, one_torch_thread: None
) -> None:
    truncated, _ = _mixed_folder(tmp_path / "in", sources)
    out = tmp_path / "out"
    codes = [_infer(checkpoint, tmp_path / "in", out, "--shard", f"{k}/2") for k in range(2)]
    reports = [json.loads((out / f"inference_report.rank{k}.json").read_text()) for k in range(2)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    files = [Path(c["file"]).name for r in reports for c in r["cases"]]
    assert len(files) == len(set(files)) == GOOD + 2  # every file in exactly one shard
    written = _written_by(reports)
    assert sorted(written) == sorted(_seg_name(s) for s in sources[:GOOD])
    _assert_equal_masks(out, reference, written)
    failing_rank = next(r["rank"] for r in reports for c in r["cases"] if Path(c["file"]) == truncated)
    assert codes[failing_rank] == EXIT_FAILED


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_torchrun_two_ranks_write_every_mask_once(
    tmp_path: Path, sources: list[Path], checkpoint: Path, reference: Path
) -> None:
    truncated, nan = _mixed_folder(tmp_path / "in", sources)
    out = tmp_path / "out"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "unet_monai.cli",
            "infer",
            "--bundle",
            str(HIPPOCAMPUS_BUNDLE),
            "--checkpoint",
            str(checkpoint),
            *SMALL_ARGS,
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
        ],  # fmt: skip
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0, "a rank had failed cases: torchrun must exit non-zero"
    reports = [json.loads((out / f"inference_report.rank{k}.json").read_text()) for k in range(2)]
    assert all(r["world_size"] == 2 for r in reports)
    assert sum(r["summary"]["failed"] for r in reports) == 2
    written = _written_by(reports)
    assert len(written) == len(set(written)) == GOOD
    assert _masks(out) == sorted(_seg_name(s) for s in sources[:GOOD])
    _assert_equal_masks(out, reference, written)
    for bad in (truncated, nan):
        assert bad.name in result.stdout + result.stderr


def test_shard_argument_and_environment() -> None:
    assert shard_from(None, {}) == (0, 1)
    assert shard_from(None, {"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert shard_from("2/3", {}) == (2, 3)
    for bad in ("3/3", "1", "a/2", "-1/2"):
        with pytest.raises(ValueError, match="expected I/N"):
            shard_from(bad, {})
    with pytest.raises(ValueError, match="not both"):
        shard_from("0/2", {"RANK": "0", "WORLD_SIZE": "2"})


def test_output_folder_under_a_file_is_one_error(
    tmp_path: Path, sources: list[Path], checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert _infer(checkpoint, sources[0], blocker / "masks") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {blocker / 'masks'}: cannot create the output folder there, {blocker} is a file"
    ]


def test_two_inputs_with_one_output_name_are_refused(
    tmp_path: Path, sources: list[Path], checkpoint: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / sources[0].name).symlink_to(sources[0])
    image = nib.load(sources[0])
    nib.save(
        nib.Nifti1Image(np.asarray(image.dataobj), image.affine), folder / sources[0].name.replace(".gz", "")
    )
    assert _infer(checkpoint, folder, tmp_path / "out") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "would both be written to" in errors[0]
    assert errors[0].count(sources[0].name.replace(".gz", "")) == 2  # names both inputs
    assert not list((tmp_path / "out").glob("*_seg.nii.gz"))


def test_every_bundle_saves_atomically(tmp_path: Path) -> None:
    """Every bundle's inference.json and evaluate.json save through AtomicSaveImaged (``python -m monai.bundle
    run`` too)."""

    def targets(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
            return found + [t for value in node.values() for t in targets(value)]
        if isinstance(node, list):
            return [t for value in node for t in targets(value)]
        return []

    configs = sorted((REPO_ROOT / "bundles").glob("*/configs/inference.json"))
    configs += sorted((REPO_ROOT / "bundles").glob("*/configs/evaluate.json"))
    assert len(configs) == 14
    for config in configs:
        savers = [t for t in targets(json.loads(config.read_text())) if "SaveImage" in t]
        assert savers == ["unet_monai.transforms.AtomicSaveImaged"], config
    saver = AtomicSaveImage(output_dir=tmp_path, output_postfix="seg", separate_folder=False, print_log=False)
    assert saver.writers and all(w.__name__.startswith("Atomic") for w in saver.writers)
    from monai.data import MetaTensor

    image = MetaTensor(torch.arange(24.0).reshape(1, 2, 3, 4), meta={"filename_or_obj": "/x/case.nii.gz"})
    AtomicSaveImaged(keys="pred", output_dir=tmp_path, output_postfix="seg", separate_folder=False)(
        {"pred": image}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]
    np.testing.assert_array_equal(nib.load(tmp_path / "case_seg.nii.gz").get_fdata(), image[0].numpy())
    # a write that fails leaves neither the mask nor its temporary file
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "case_seg.nii.gz").mkdir()  # a folder where the mask should go: the rename fails
    with pytest.raises(OutputError, match=r"case_seg\.nii\.gz: could not write \(Is a directory\)"):
        AtomicSaveImage(output_dir=blocked, output_postfix="seg", separate_folder=False)(image)
    assert [p.name for p in blocked.iterdir()] == ["case_seg.nii.gz"]


def test_atomic_nifti_writer_keeps_the_masks_dtype_values_and_affine(tmp_path: Path) -> None:
    """Without resampling, the atomic NIfTI writer skips MONAI's float32 copy: the file is what MONAI's
    own SaveImaged writes (values, dtype, affine), for a uint8 mask on an oblique, anisotropic grid."""
    from monai.data import MetaTensor
    from monai.transforms import SaveImaged

    rng = np.random.default_rng(0)
    affine = np.array([[0.0, 0.9, 0.1, 10.0], [1.2, 0.0, 0.0, -5.0], [0.0, -0.1, 2.5, 3.0], [0, 0, 0, 1]])
    mask = MetaTensor(torch.from_numpy(rng.integers(0, 3, (1, 9, 8, 7)).astype(np.uint8)), affine=affine)
    mask.meta["filename_or_obj"] = "case.nii.gz"
    options = {"keys": "pred", "output_postfix": "seg", "output_dtype": np.uint8, "resample": False}
    options |= {"separate_folder": False, "print_log": False}
    AtomicSaveImaged(output_dir=tmp_path / "atomic", **options)({"pred": mask})
    SaveImaged(output_dir=tmp_path / "monai", **options)({"pred": mask.clone()})
    ours, theirs = (nib.load(tmp_path / kind / "case_seg.nii.gz") for kind in ("atomic", "monai"))
    assert ours.get_data_dtype() == theirs.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    np.testing.assert_array_equal(np.asarray(ours.dataobj), mask[0].numpy())
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-6)
    np.testing.assert_allclose(ours.affine, affine, atol=1e-6)


def test_a_failed_rank_waits_for_the_other_reports_of_this_run(tmp_path: Path) -> None:
    """torchrun stops the other ranks when one exits non-zero: a failed rank waits for every report first."""
    stale = tmp_path / "inference_report.rank1.json"
    stale.write_text("{}")
    os.utime(stale, (0, 0))  # a report of an earlier run does not count
    (tmp_path / "inference_report.rank0.json").write_text("{}")
    since = time.time() - 1.0
    assert not wait_for_other_ranks(tmp_path, 2, since, poll_s=0.01, timeout_s=0.2)
    stale.write_text("{}")  # rank 1 finished this run
    assert wait_for_other_ranks(tmp_path, 2, since, poll_s=0.01, timeout_s=5.0)
