"""Whole-volume inference: masks keep the input's shape, affine and orientation."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer

from tests.conftest import AXIAL_ONLY, HIPPOCAMPUS, HIPPOCAMPUS_BUNDLE, SPINALCORD, require
from unet_monai.bundle import load_workflow, run_workflow
from unet_monai.inference import volume_inferer
from unet_monai.networks import create_network

SPINALCORD_VOLUMES = [
    "t2/t2.nii.gz",
    "t1/t1w.nii.gz",
    "mt/mt1.nii.gz",
    "t2s/t2s.nii.gz",
    "t2s/t2s_uncropped.nii.gz",
]


def _infer(inputs: list[Path], output_dir: Path, checkpoint: Path) -> None:
    run_workflow(
        HIPPOCAMPUS_BUNDLE,
        "inference",
        datalist=[str(p) for p in inputs],
        ckpt_path=str(checkpoint),
        output_dir=str(output_dir),
        **{"network_def#features": 8},
        **AXIAL_ONLY,
    )


def _assert_same_geometry(source: Path, mask_path: Path) -> np.ndarray:
    image = nib.load(source)
    mask = nib.load(mask_path)
    assert mask.shape == image.shape, source.name
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4, err_msg=source.name)
    assert nib.aff2axcodes(mask.affine) == nib.aff2axcodes(image.affine)
    values = np.asarray(mask.dataobj)
    assert values.dtype == np.uint8
    assert set(np.unique(values).tolist()) <= {0, 1, 2}
    return values


def test_masks_of_real_hippocampus_volumes_keep_shape_and_affine(
    tmp_path: Path, trained_checkpoint: Path
) -> None:
    images = sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[:4]
    _infer(images, tmp_path, trained_checkpoint)
    for image in images:
        _assert_same_geometry(image, tmp_path / image.name.replace(".nii.gz", "_seg.nii.gz"))


def test_masks_of_spinalcord_volumes_in_psr_ras_las(tmp_path: Path, trained_checkpoint: Path) -> None:
    sources = [require(SPINALCORD / name) for name in SPINALCORD_VOLUMES]
    orientations = {nib.aff2axcodes(nib.load(p).affine) for p in sources}
    assert {("P", "S", "R"), ("R", "A", "S"), ("L", "A", "S")} <= orientations
    # Copy so that case names are unique (two folders hold volumes with the same stem otherwise).
    inputs = []
    for source in sources:
        target = tmp_path / "in" / source.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(source, target)
        inputs.append(target)
    _infer(inputs, tmp_path / "out", trained_checkpoint)
    for source in inputs:
        _assert_same_geometry(source, tmp_path / "out" / source.name.replace(".nii.gz", "_seg.nii.gz"))


def test_mask_follows_the_image_when_voxels_are_reordered(tmp_path: Path, trained_checkpoint: Path) -> None:
    """The same anatomy stored in PSR order and in RAS order gives the same mask in world space."""
    source = require(SPINALCORD / "t2" / "t2.nii.gz")
    psr = nib.load(source)
    ras = nib.as_closest_canonical(psr)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nib.save(psr, tmp_path / "a" / "vol.nii.gz")
    nib.save(ras, tmp_path / "b" / "vol.nii.gz")
    _infer([tmp_path / "a" / "vol.nii.gz"], tmp_path / "a_out", trained_checkpoint)
    _infer([tmp_path / "b" / "vol.nii.gz"], tmp_path / "b_out", trained_checkpoint)
    mask_psr = nib.load(tmp_path / "a_out" / "vol_seg.nii.gz")
    mask_ras = nib.load(tmp_path / "b_out" / "vol_seg.nii.gz")
    np.testing.assert_array_equal(
        np.asarray(nib.as_closest_canonical(mask_psr).dataobj), np.asarray(mask_ras.dataobj)
    )


def test_volume_inferer_kinds_and_shapes() -> None:
    assert isinstance(volume_inferer([48, 64], slice_axis=2), SliceInferer)
    sliding = volume_inferer([16, 16, 16], slice_axis=None)
    assert isinstance(sliding, SlidingWindowInferer) and not isinstance(sliding, SliceInferer)
    with pytest.raises(ValueError, match="3D roi_size"):
        volume_inferer([16, 16], slice_axis=None)
    with pytest.raises(ValueError, match="2D roi_size"):
        volume_inferer([16, 16, 16], slice_axis=1)

    volume = torch.randn(1, 1, 37, 29, 23)
    net2d = create_network("ronneberger_unet", spatial_dims=2, out_channels=3, features=4, depth=2).eval()
    net3d = create_network("ronneberger_unet", spatial_dims=3, out_channels=3, features=4, depth=2).eval()
    with torch.no_grad():
        for axis in (0, 1, 2):
            assert volume_inferer([16, 16], slice_axis=axis, sw_batch_size=8)(volume, net2d).shape == (
                1,
                3,
                37,
                29,
                23,
            )
        assert volume_inferer([16, 16, 16], slice_axis=None)(volume, net3d).shape == (1, 3, 37, 29, 23)


def test_slice_inference_equals_a_loop_over_slices() -> None:
    """Batched slice-by-slice inference gives what the seed projects' one-slice-at-a-time loop gives."""
    torch.manual_seed(0)
    net = create_network("ronneberger_unet", spatial_dims=2, out_channels=3, features=4, depth=2).eval()
    volume = torch.randn(1, 1, 16, 20, 7)
    with torch.no_grad():
        batched = volume_inferer([16, 20], slice_axis=2, sw_batch_size=64)(volume, net)
        looped = torch.stack([net(volume[..., k]) for k in range(volume.shape[-1])], dim=-1)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-4)


def test_keep_largest_component_option(tmp_path: Path, trained_checkpoint: Path) -> None:
    from monai.transforms import KeepLargestConnectedComponentd
    from scipy import ndimage

    # The configured transform removes every component but the largest, per label.
    workflow = load_workflow(HIPPOCAMPUS_BUNDLE, "inference", keep_largest_labels=[1, 2])
    postprocessing = workflow.parser.get_parsed_content("postprocessing").transforms
    keep = next(t for t in postprocessing if isinstance(t, KeepLargestConnectedComponentd))
    crafted = torch.zeros(1, 12, 12, 12)
    crafted[0, 1:5, 1:5, 1:5] = 1  # label 1: a big and a small component
    crafted[0, 8:10, 8:10, 8:10] = 1
    crafted[0, 1:3, 8:11, 8:11] = 2  # label 2: one component, kept
    kept = keep({"pred": crafted})["pred"]
    assert int((kept == 1).sum()) == 64 and int((kept == 2).sum()) == 18

    # Through the whole inference config: the masks equal the plain masks with only the largest
    # component of each label kept (full connectivity, as MONAI's default).
    images = sorted((require(HIPPOCAMPUS) / "imagesTr").glob("*.nii.gz"))[:3]
    for name, labels in (("plain", []), ("largest", [1, 2])):
        run_workflow(
            HIPPOCAMPUS_BUNDLE,
            "inference",
            datalist=[str(p) for p in images],
            ckpt_path=str(trained_checkpoint),
            output_dir=str(tmp_path / name),
            keep_largest_labels=labels,
            **{"network_def#features": 8},
            **AXIAL_ONLY,
        )
    for plain_path in sorted((tmp_path / "plain").glob("*_seg.nii.gz")):
        plain = np.asarray(nib.load(plain_path).dataobj)
        largest = np.asarray(nib.load(tmp_path / "largest" / plain_path.name).dataobj)
        expected = plain.copy()
        for label in (1, 2):
            components, count = ndimage.label(plain == label, structure=np.ones((3, 3, 3)))
            if count > 1:
                sizes = np.bincount(components.ravel())[1:]
                expected[(plain == label) & (components != 1 + int(np.argmax(sizes)))] = 0
        np.testing.assert_array_equal(largest, expected, err_msg=plain_path.name)


def test_argmax_before_inverting_the_orientation_gives_the_softmax_invert_argmax_mask() -> None:
    """The bundle takes the argmax of the fused log-probabilities first and inverts one uint8 label
    map (nearest), not three float32 probability maps: the same mask in a fraction of the memory."""
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd
    from monai.utils import convert_to_dst_type

    source = require(SPINALCORD / "t2" / "t2.nii.gz")  # PSR: orientation to RAS and back is not a no-op
    parser = load_workflow(HIPPOCAMPUS_BUNDLE, "inference").parser
    preprocessing = parser.get_parsed_content("preprocessing")
    item = preprocessing({"image": str(source)})
    torch.manual_seed(0)  # log-probabilities of all three classes, as the inferer returns them
    logits = torch.log_softmax(torch.randn(3, *item["image"].shape[1:]), dim=0)
    pred = convert_to_dst_type(logits, item["image"])[0]  # with the image's metadata, as from the inferer
    bundle_steps = Compose(parser.get_parsed_content("postprocessing").transforms[:2])  # argmax, invert
    old_steps = Compose(
        [
            Activationsd(keys="pred", softmax=True),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False),
            AsDiscreted(keys="pred", argmax=True),
        ]
    )
    new = bundle_steps({"image": item["image"], "pred": pred.clone()})["pred"]
    old = old_steps({"image": item["image"], "pred": pred.clone()})["pred"]
    assert new.dtype == torch.uint8 and new.shape == old.shape == (1, *nib.load(source).shape)
    assert len(torch.unique(old)) == 3  # every class present: not a trivial comparison
    assert torch.equal(new.long(), old.long())


def test_argmax_labels_by_slab_equals_torch_argmax_in_uint8() -> None:
    from monai.data import MetaTensor

    from unet_monai.transforms import ArgmaxLabelsd, argmax_labels

    torch.manual_seed(0)
    scores = torch.randn(4, 9, 7, 37)
    scores[:, 0, 0, 0] = 1.0  # a tie: the lowest class wins, as with torch.argmax
    expected = scores.argmax(dim=0, keepdim=True)
    for slab in (1, 5, 16, 37, 100):
        labels = argmax_labels(scores, slab)
        assert labels.dtype == torch.uint8 and torch.equal(labels.long(), expected)
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    out = ArgmaxLabelsd(keys="pred", slab=4)({"pred": MetaTensor(scores, affine=affine)})["pred"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8
    assert torch.equal(out.affine, affine) and torch.equal(out.as_tensor().long(), expected)
    with pytest.raises(ValueError, match="uint8"):
        argmax_labels(torch.zeros(300, 2, 2, 2))
