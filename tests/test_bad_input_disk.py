"""A full disk, for real: masks, DICOM SEG, evaluate's reports, the JSON report and checkpoints.

Each writer runs in a subprocess against a folder that really runs out of room: a small tmpfs when the
tests run as root and may mount one (space left is chosen by a filler file), else a file-size limit
(``RLIMIT_FSIZE``, SIGXFSZ ignored: writes past it fail with EFBIG). Every fault must end in one line
naming the final file and the reason, leave no empty or partial file under a final name and no
``.partial-`` file, and a full-disk ``infer`` followed by ``--resume`` once there is room must give
every mask, voxel-equal to a run on a normal disk.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from tests.conftest import (
    AXIAL_ONLY,
    HIPPOCAMPUS,
    HIPPOCAMPUS_BUNDLE,
    REPO_ROOT,
    SHARED_DATA,
    require,
    wide_random_checkpoint,
)
from unet_monai.cli import main

SMALL = {"network_def#features": 8, "members": AXIAL_ONLY["members"]}
SMALL_ARGS = ["--set", "network_def#features=8", "--set", "members=" + json.dumps(AXIAL_ONLY["members"])]
CASES = 4
PAGE = 4096  # tmpfs hands out space by pages
TMPFS_SIZE = 8 * 1024 * 1024
NO_ROOM = r"(No space left on device|File too large)"
CT_FILES = [SHARED_DATA / "dicom-ct-liver-seg" / "ct-3slice" / f"0{index}.dcm" for index in (1, 2, 3)]

# Run in each subprocess before the code under test: the file-size limit (if any), one torch thread.
PRELUDE = """
import resource, signal, sys
import torch
limit = {limit!r}
if limit is not None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
torch.set_num_threads(1)
"""


class FullDisk:
    """A folder that can be made (nearly) full: on a tmpfs (``kind`` "tmpfs") or under a file-size limit
    for the subprocesses of ``run`` (``kind`` "rlimit")."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.kind = kind
        self.limit: int | None = None
        self.filler = folder / "filler"

    def fill(self, room: int) -> None:
        """Leave ``room`` bytes: free space on the tmpfs, or the largest file the subprocesses may write."""
        if self.kind == "rlimit":
            self.limit = room
            return
        stat = os.statvfs(self.folder)
        free = stat.f_bavail * stat.f_frsize
        with open(self.filler, "ab") as stream:
            stream.write(b"\0" * max(free - room, 0))

    def free(self) -> None:
        self.limit = None
        self.filler.unlink(missing_ok=True)

    def run(self, code: str) -> subprocess.CompletedProcess:
        """``python -c PRELUDE + code`` from the repository root, under this disk's limit."""
        program = PRELUDE.format(limit=self.limit) + code
        return subprocess.run(
            [sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
        )

    def files(self, folder: Path | None = None) -> list[Path]:
        """Every file under ``folder`` (default: the whole disk) but the filler."""
        return sorted(p for p in (folder or self.folder).rglob("*") if p.is_file() and p != self.filler)


def _mount_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(folder)], capture_output=True
    )
    return result.returncode == 0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[FullDisk]:
    folder = tmp_path / "disk"
    folder.mkdir()
    if _mount_tmpfs(folder):
        try:
            yield FullDisk(folder, "tmpfs")
        finally:
            subprocess.run(["umount", str(folder)], check=False)
        return
    if not hasattr(resource, "RLIMIT_FSIZE"):
        pytest.skip("no way to fill a disk here: not root (no tmpfs mount) and no RLIMIT_FSIZE")
    yield FullDisk(folder, "rlimit")


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The process failed with exactly one ``error: ...`` line and no traceback; that line."""
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-4000:]
    return errors[0]


def _assert_nothing_partial(disk: FullDisk) -> None:
    """No empty file and no ``.partial-`` temporary file anywhere on the disk."""
    files = disk.files()
    assert not [p for p in files if p.stat().st_size == 0], files
    assert not [p for p in files if p.name.startswith(".partial-")], files


def _cli(*args: str) -> str:
    return f"from unet_monai.cli import main\nsys.exit(main({list(args)!r}))\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded wide random weights of the small axial network (see wide_random_checkpoint)."""
    return wide_random_checkpoint(tmp_path_factory.mktemp("model"), SMALL)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of CASES real hippocampus volumes (links)."""
    folder = tmp_path_factory.mktemp("inputs")
    for source in sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[:CASES]:
        (folder / source.name).symlink_to(source)
    return folder


def _infer_args(checkpoint: Path, inputs: Path, output: Path, *extra: str) -> list[str]:
    return ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--checkpoint", str(checkpoint), *SMALL_ARGS,
            "--input", str(inputs), "--output", str(output), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, inputs: Path) -> Path:
    """The masks of a run on a normal disk."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_infer_args(checkpoint, inputs, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _mask_names(inputs: Path) -> list[str]:
    return sorted(p.name.replace(".nii.gz", "_seg.nii.gz") for p in inputs.iterdir())


def _assert_masks_equal(folder: Path, reference: Path, names: list[str]) -> None:
    for name in names:
        expected = np.asarray(nib.load(reference / name).dataobj)
        assert len(np.unique(expected)) > 1, f"{name}: the reference holds one label (a vacuous comparison)"
        np.testing.assert_array_equal(np.asarray(nib.load(folder / name).dataobj), expected, err_msg=name)


def test_full_disk_infer_stops_in_one_line_and_resume_completes_it(
    disk: FullDisk, checkpoint: Path, inputs: Path, reference: Path
) -> None:
    """The key scenario: masks on a disk that fills up; then ``--resume`` once there is room."""
    out = disk.folder / "masks"
    out.mkdir()
    names = _mask_names(inputs)
    pages = [-(-(reference / name).stat().st_size // PAGE) * PAGE for name in names]
    disk.fill(room=pages[0] + pages[1] if disk.kind == "tmpfs" else 100)  # tmpfs: 2 masks fit; rlimit: 0
    result = disk.run(_cli(*_infer_args(checkpoint, inputs, out)))
    line = _one_error_line(result)
    fitted = [name for name in names if (out / name).exists()]
    missing = [name for name in names if name not in fitted]
    assert len(fitted) == (2 if disk.kind == "tmpfs" else 0), disk.files()
    assert line.startswith(f"error: {out / missing[0]}: could not write ("), line
    assert re.search(NO_ROOM, line), line
    counts = f"{len(fitted)} written, 0 skipped, {CASES - len(fitted)} failed"
    assert line.endswith(f"); {counts}: free space and run again with --resume"), line
    _assert_nothing_partial(disk)
    _assert_masks_equal(out, reference, fitted)  # what was written is whole and right

    disk.free()
    result = disk.run(_cli(*_infer_args(checkpoint, inputs, out, "--resume")))
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{CASES - len(fitted)} written, {len(fitted)} skipped, 0 failed" in result.stdout
    _assert_nothing_partial(disk)
    _assert_masks_equal(out, reference, names)


def test_resume_redoes_an_output_that_does_not_load(
    tmp_path: Path, checkpoint: Path, inputs: Path, reference: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--resume`` runs a case again when its mask is empty, a truncated gzip or not NIfTI; a good mask
    is skipped, untouched."""
    out = tmp_path / "masks"
    out.mkdir()
    names = _mask_names(inputs)
    whole = (reference / names[1]).read_bytes()
    (out / names[0]).write_bytes(b"")
    (out / names[1]).write_bytes(whole[: len(whole) // 2])
    (out / names[2]).write_text("not a NIfTI file\n")
    shutil.copy(reference / names[3], out / names[3])
    before = (out / names[3]).stat().st_mtime_ns

    torch.set_num_threads(1)
    assert main(_infer_args(checkpoint, inputs, out, "--resume")) == 0
    captured = capsys.readouterr()
    assert "3 written, 1 skipped, 0 failed" in captured.out
    redone = [line for line in captured.err.splitlines() if "did not load" in line]
    assert len(redone) == 3 and all(any(name in line for line in redone) for name in names[:3]), captured.err
    _assert_masks_equal(out, reference, names)
    assert (out / names[3]).stat().st_mtime_ns == before
    report = json.loads((out / "inference_report.json").read_text())
    notes = {Path(case["output"]).name: case["note"] for case in report["cases"]}
    assert all("did not load" in notes[name] for name in names[:3]) and notes[names[3]] is None


def test_full_disk_json_report_names_the_report(
    disk: FullDisk, checkpoint: Path, inputs: Path, reference: Path
) -> None:
    """Every mask already there (``--resume`` skips them all), no room for inference_report.json."""
    out = disk.folder / "masks"
    shutil.copytree(reference, out)
    (out / "inference_report.json").unlink()
    disk.fill(room=0 if disk.kind == "tmpfs" else 10)
    line = _one_error_line(disk.run(_cli(*_infer_args(checkpoint, inputs, out, "--resume"))))
    assert line.startswith(f"error: {out / 'inference_report.json'}: could not write (")
    assert re.search(NO_ROOM, line), line
    assert not (out / "inference_report.json").exists()
    _assert_nothing_partial(disk)


@pytest.mark.parametrize("fault", ["metrics.csv", "overlay_best.png"])
def test_full_disk_evaluate_report(disk: FullDisk, tmp_path: Path, fault: str) -> None:
    """``unet-monai evaluate`` writing its report on a full disk: one line naming the file that did not
    fit (the CSV, or with room for it, the first figure); summary.json, written last, is not there."""
    labels, predictions = tmp_path / "labels", tmp_path / "pred"
    labels.mkdir()
    predictions.mkdir()
    for source in sorted((require(HIPPOCAMPUS) / "labelsTr").glob("*.nii.gz"))[:2]:
        shutil.copy(source, labels / source.name)
        shutil.copy(source, predictions / source.name.replace(".nii.gz", "_seg.nii.gz"))
    out = disk.folder / "report"
    out.mkdir()
    args = ["evaluate", "--pred", str(predictions), "--label", str(labels), "--output", str(out)]
    if fault == "metrics.csv":
        disk.fill(room=0 if disk.kind == "tmpfs" else 10)
    else:  # the CSV (about 1 kB) fits, a figure (tens of kB) does not
        disk.fill(room=PAGE if disk.kind == "tmpfs" else 4000)
        args += ["--images", str(HIPPOCAMPUS / "imagesTr")]
    line = _one_error_line(disk.run(_cli(*args)))
    assert line.startswith(f"error: {out / fault}: could not write ("), line
    assert re.search(NO_ROOM, line), line
    assert not (out / "summary.json").exists()
    assert [p.name for p in disk.files(out)] == ([] if fault == "metrics.csv" else ["metrics.csv"])
    _assert_nothing_partial(disk)


SEG_CODE = """
import numpy as np, pydicom
from unet_monai.dicom.seg import write_seg
sources = [pydicom.dcmread(path) for path in {files!r}]
labels = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), np.uint8)
labels[:, 100:300, 120:320] = 1
classes = {{"0": "background", "1": "liver"}}
outputs = {{"pred": {{"channel_def": classes}}}}
metadata = {{"name": "disk test", "network_data_format": {{"outputs": outputs}}}}
try:
    write_seg(labels, sources, metadata, {target!r}, "binary")
except OSError as error:
    print(f"error: {{error}}", file=sys.stderr)
    sys.exit(2)
"""


def test_full_disk_dicom_seg(disk: FullDisk) -> None:
    """``write_seg`` on a full disk: an OSError naming the SEG file and the reason, nothing left."""
    files = [str(require(path)) for path in CT_FILES]
    target = disk.folder / "seg" / "case_seg.dcm"
    target.parent.mkdir()
    disk.fill(room=PAGE if disk.kind == "tmpfs" else 1000)  # a 3-slice binary SEG is ~100 kB
    line = _one_error_line(disk.run(SEG_CODE.format(files=files, target=str(target))))
    assert line.startswith(f"error: {target}: could not write ("), line
    assert re.search(NO_ROOM, line), line
    assert disk.files(target.parent) == []
    _assert_nothing_partial(disk)

    disk.free()  # with room the same write succeeds
    assert disk.run(SEG_CODE.format(files=files, target=str(target))).returncode == 0
    assert int(pydicom.dcmread(target).NumberOfFrames) > 0


CHECKPOINT_CODE = """
from pathlib import Path
from ignite.engine import Engine
from unet_monai.handlers import AtomicCheckpointSaver, ResumeCheckpoint
folder = Path({folder!r})
network = torch.nn.Linear(300, 300)
saver = AtomicCheckpointSaver(str(folder), {{"model": network}}, save_key_metric=True, key_metric_name="dice",
                              key_metric_filename="model.pt")
engine = Engine(lambda engine, batch: None)
saver.attach(engine)
engine.state.epoch = {epoch}
engine.state.metrics = {{"dice": {dice}}}
try:
    if {which!r} == "best":
        saver.metrics_completed(engine)
    else:
        ResumeCheckpoint(folder / "resume.pt", {{"model": network}}).save(engine)
except OSError as error:
    print(f"error: {{error}}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("which", ["best", "resume"])
def test_full_disk_checkpoint(disk: FullDisk, which: str) -> None:
    """A checkpoint write on a full disk: one line naming the checkpoint; the previous file untouched."""
    folder = disk.folder / "models"
    name = "model.pt" if which == "best" else "resume.pt"
    code = {"folder": str(folder), "which": which}
    assert disk.run(CHECKPOINT_CODE.format(epoch=1, dice=0.5, **code)).returncode == 0  # ~360 kB
    previous = (folder / name).read_bytes()
    disk.fill(room=PAGE if disk.kind == "tmpfs" else 1000)
    line = _one_error_line(disk.run(CHECKPOINT_CODE.format(epoch=2, dice=0.9, **code)))
    assert line.startswith(f"error: {folder / name}: could not write ("), line
    assert re.search(NO_ROOM, line), line
    assert (folder / name).read_bytes() == previous
    assert [p.name for p in disk.files(folder)] == [name]
    _assert_nothing_partial(disk)
