"""Real MR slices written in the left-ventricle project's layout: 2D DICOM files with PNG masks.

No left-ventricle data is available here, so the fixture takes axial FLAIR slices of the BraTS 2015
subset (``../shared/data/brats2015-subset``) with the whole tumour (``OTMultiClass > 0``) as the
mask, and writes them exactly as that project stored its data::

    OUTPUT/training/<name>.dcm + OUTPUT/training/<name>.png    (mask beside each image)
    OUTPUT/test/<name>.dcm     + OUTPUT/test/GT/<name>.png
    OUTPUT/fixture.json                                        (where each slice came from)

Training slices come from the BraTS ``train`` and ``validation`` patients, test slices from the
``test`` patients, so no patient is in both. The pixels stay real: each slice is stored as
integers with a rescale slope / intercept chosen so that the modality LUT gives back the FLAIR
values to within half a slope. Files cycle through four encodings that a DICOM reader must
handle: signed and unsigned 16-bit, 12 of 16 bits stored, and MONOCHROME1 (inverted grey scale).

Run ``python tools/lv_fixture.py --output /tmp/lv_dicom_fixture`` (from the repository root) to write it; the
tests import ``build_lv_fixture``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import MRImageStorage, generate_uid

# Relative to the repository root, like the bundles' default data paths.
DEFAULT_BRATS = Path("../shared/data/brats2015-subset")
IMAGE_FILE = "Flair_subtrMeanDivStd.nii.gz"
LABEL_FILE = "OTMultiClass.nii.gz"
BRAIN_FILE = "brainmask.nii.gz"
SERIES = "FLAIR (BraTS 2015)"
# A fixed UID root makes the UIDs of a rebuilt fixture identical (pydicom hashes the entropy sources).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class Encoding:
    """How a file stores pixels: ``round((value - intercept) / slope)``, inverted for MONOCHROME1."""

    name: str
    photometric: str
    signed: bool
    bits_stored: int
    slope: float
    intercept: float

    @property
    def stored_range(self) -> tuple[int, int]:
        """The smallest and largest stored value that ``bits_stored`` bits can hold."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1


# The FLAIR values are z-scores in about [-6, 12]; every encoding holds that range.
ENCODINGS = (
    Encoding("int16", "MONOCHROME2", signed=True, bits_stored=16, slope=0.001, intercept=0.0),
    Encoding("uint16_12bit", "MONOCHROME2", signed=False, bits_stored=12, slope=0.005, intercept=-8.0),
    Encoding("uint16_monochrome1", "MONOCHROME1", signed=False, bits_stored=16, slope=0.0005, intercept=-8.0),
    Encoding("int16_monochrome1", "MONOCHROME1", signed=True, bits_stored=16, slope=0.001, intercept=0.0),
)


@dataclass(frozen=True)
class SliceRecord:
    """Provenance of one fixture image."""

    name: str
    section: str
    patient: str
    source_split: str
    slice_index: int
    tumour_pixels: int
    encoding: str


def encode(values: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Stored pixel values (int16 / uint16) for real ``values`` under ``encoding``."""
    low, high = encoding.stored_range
    stored = np.rint((values.astype(np.float64) - encoding.intercept) / encoding.slope)
    if stored.min() < low or stored.max() > high:
        raise ValueError(
            f"values {values.min():.3f}..{values.max():.3f} do not fit encoding {encoding.name} "
            f"(stored {stored.min():.0f}..{stored.max():.0f}, allowed {low}..{high})"
        )
    if encoding.photometric == "MONOCHROME1":
        stored = low + high - stored  # the smallest stored value is displayed white
    return stored.astype(np.int16 if encoding.signed else np.uint16)


def _ras_to_lps(vector: np.ndarray) -> np.ndarray:
    """NIfTI world coordinates (RAS) to DICOM patient coordinates (LPS)."""
    return vector * np.array([-1.0, -1.0, 1.0])


def dicom_slice(
    values: np.ndarray,
    affine: np.ndarray,
    slice_index: int,
    encoding: Encoding,
    patient: str,
    series_description: str,
) -> pydicom.Dataset:
    """An MR Image Storage dataset for the axial slice ``values`` (indexed ``[i, j]`` like the volume).

    Args:
        values: the slice, indexed like the NIfTI volume (first axis = DICOM columns).
        affine: the volume's voxel-to-RAS affine, for position, orientation and spacing.
        slice_index: the slice's index along the volume's third axis.
        encoding: how to store the pixels.
        patient: patient name, also the source of the study and series UIDs.
        series_description: written to SeriesDescription.
    """
    stored = encode(values.T, encoding)  # DICOM rows run along the volume's second axis
    column_step, row_step = affine[:3, 0], affine[:3, 1]
    position = _ras_to_lps((affine @ np.array([0.0, 0.0, float(slice_index), 1.0]))[:3])
    spacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step))]
    sop_uid = generate_uid(UID_PREFIX, [patient, "FLAIR", str(slice_index)])

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = MRImageStorage
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = generate_uid(UID_PREFIX, ["unet-monai lv fixture"])

    ds = pydicom.Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = "unet-monai fixture (BraTS 2015 data)"
    ds.PatientName = patient
    ds.PatientID = patient
    ds.StudyInstanceUID = generate_uid(UID_PREFIX, [patient, "study"])
    ds.SeriesInstanceUID = generate_uid(UID_PREFIX, [patient, "FLAIR"])
    ds.FrameOfReferenceUID = generate_uid(UID_PREFIX, [patient, "frame"])
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = slice_index + 1
    ds.SeriesDescription = series_description
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [
        round(float(v), 6)
        for v in (
            *(_ras_to_lps(column_step) / np.linalg.norm(column_step)),
            *(_ras_to_lps(row_step) / np.linalg.norm(row_step)),
        )
    ]
    ds.PixelSpacing = [round(s, 6) for s in spacing]
    ds.SliceThickness = round(float(np.linalg.norm(affine[:3, 2])), 6)
    ds.SliceLocation = round(float(position[2]), 4)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 1 if encoding.signed else 0
    ds.RescaleSlope = encoding.slope
    ds.RescaleIntercept = encoding.intercept
    ds.RescaleType = "US"
    ds.PixelData = stored.tobytes()
    return ds


def _pick_slices(usable: np.ndarray, count: int) -> list[int]:
    """``count`` slice indices spread evenly over the ``usable`` slices (a boolean per slice)."""
    candidates = np.flatnonzero(usable)
    if len(candidates) < count:
        raise ValueError(f"only {len(candidates)} slices are usable, {count} wanted")
    positions = np.linspace(0, len(candidates) - 1, count).round().astype(int)
    return [int(candidates[p]) for p in positions]


def _patients(brats_dir: Path, splits: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``(source split, patient folder)`` for every patient of the given BraTS splits."""
    found = [(split, p) for split in splits for p in sorted((brats_dir / split).glob("*")) if p.is_dir()]
    if not found:
        raise FileNotFoundError(f"{brats_dir}: no patient folders under {'/'.join(splits)}")
    return found


def _share(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal whole numbers."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def build_lv_fixture(
    output_dir: str | Path,
    brats_dir: str | Path = DEFAULT_BRATS,
    num_train: int = 60,
    num_test: int = 40,
    min_tumour_pixels: int = 200,
    min_brain_fraction: float = 0.15,
    mask_value: int = 1,
) -> Path:
    """Write the fixture; returns ``output_dir``. The same arguments always write the same files.

    Args:
        output_dir: where ``training/``, ``test/`` and ``fixture.json`` go.
        brats_dir: the BraTS 2015 subset (``train/``, ``validation/``, ``test/`` patient folders).
        num_train: slices for ``training/``, shared evenly by the ``train`` and ``validation`` patients.
        num_test: slices for ``test/``, shared evenly by the ``test`` patients.
        min_tumour_pixels: only slices with at least this much whole tumour are used,
        min_brain_fraction: and whose brain mask covers at least this fraction of the slice (slices
            through the bulk of the brain, as short-axis slices cut through the ventricles; near the
            top of the head the 95th intensity percentile would fall on the empty background).
        mask_value: the PNG value of the mask (1, or 255 for masks that show in an image viewer).
    """
    brats_dir, output_dir = Path(brats_dir), Path(output_dir)
    layout = {
        "training": (("train", "validation"), num_train, output_dir / "training", output_dir / "training"),
        "test": (("test",), num_test, output_dir / "test", output_dir / "test" / "GT"),
    }
    records: list[SliceRecord] = []
    for section, (splits, total, image_dir, mask_dir) in layout.items():
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        patients = _patients(brats_dir, splits)
        for (split, folder), count in zip(patients, _share(total, len(patients)), strict=True):
            flair = nib.load(folder / IMAGE_FILE)
            values = flair.get_fdata(dtype=np.float32)
            tumour = np.asarray(nib.load(folder / LABEL_FILE).dataobj) > 0
            brain = np.asarray(nib.load(folder / BRAIN_FILE).dataobj) > 0
            usable = (tumour.sum(axis=(0, 1)) >= min_tumour_pixels) & (
                brain.mean(axis=(0, 1)) >= min_brain_fraction
            )
            for z in _pick_slices(usable, count):
                encoding = ENCODINGS[len(records) % len(ENCODINGS)]
                name = f"{folder.name}_z{z:03d}"
                ds = dicom_slice(values[:, :, z], flair.affine, z, encoding, folder.name, SERIES)
                ds.save_as(image_dir / f"{name}.dcm", enforce_file_format=True)
                mask = (tumour[:, :, z].T * mask_value).astype(np.uint8)
                Image.fromarray(mask, mode="L").save(mask_dir / f"{name}.png")
                pixels = int(tumour[:, :, z].sum())
                records.append(SliceRecord(name, section, folder.name, split, z, pixels, encoding.name))
    manifest = {
        "source": str(brats_dir.resolve()),
        "image": IMAGE_FILE,
        "mask": f"{LABEL_FILE} > 0 (whole tumour), PNG value {mask_value}",
        "selection": f"{min_tumour_pixels}+ tumour pixels, brain mask {min_brain_fraction:.0%}+ of the slice",
        "slices": [asdict(record) for record in records],
    }
    (output_dir / "fixture.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="fixture folder to write")
    parser.add_argument("--brats", type=Path, default=DEFAULT_BRATS, help="the BraTS 2015 subset folder")
    parser.add_argument("--train", type=int, default=60, help="training slices (default 60)")
    parser.add_argument("--test", type=int, default=40, help="test slices (default 40)")
    args = parser.parse_args(argv)
    output = build_lv_fixture(args.output, args.brats, args.train, args.test)
    slices = json.loads((output / "fixture.json").read_text())["slices"]
    counts = {s: sum(r["section"] == s for r in slices) for s in ("training", "test")}
    print(f"wrote {counts['training']} training and {counts['test']} test slices to {output}")


if __name__ == "__main__":
    main()
