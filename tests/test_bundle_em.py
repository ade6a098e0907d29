"""The em_cells_unet2d bundle on ISBI 2012 EM: weight map, elastic augmentation, metrics, runs.

Real data from ../shared/data/isbi2012-em (and dsb2018-nuclei for the second modality); tests that
need it skip, naming the path, when it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import verify_net_in_out
from PIL import Image
from scipy import ndimage
from skimage.measure import label as connected_components

from tests.conftest import REPO_ROOT, SHARED_DATA, assert_scripted_export_matches, require
from unet_monai.bundle import load_workflow, run_workflow
from unet_monai.cli import main as cli_main
from unet_monai.data.em_layout import (
    build_em_eval_transforms,
    build_em_train_transforms,
    em_datalist,
    split_by_slice,
)
from unet_monai.losses import WeightedCrossEntropyLoss
from unet_monai.metrics import AdaptedRandError, adapted_rand, binary_dice, em_scores
from unet_monai.transforms.weight_map import (
    BorderWeightMapd,
    border_weight_map,
    class_balance_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EM = SHARED_DATA / "isbi2012-em"
DSB = SHARED_DATA / "dsb2018-nuclei"
EM_BUNDLE = REPO_ROOT / "bundles" / "em_cells_unet2d"
CONFIGS = EM_BUNDLE / "configs"
# A tiny network on small patches: one epoch takes seconds on one thread.
TINY = {"network_def#features": 4, "roi_size": [128, 128]}
SMOKE = {**TINY, "num_samples": 1, "batch_size": 4, "val_slices": [24], "train#trainer#max_epochs": 1}


def _label(n: int = 0) -> np.ndarray:
    """Classes of a real label file: 1 membrane, 0 cell (row, column order)."""
    return (np.asarray(Image.open(require(EM) / "train" / "label" / f"{n}.png")) < 128).astype(np.int64)


def _exact_weight_map(label: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Eq. 2 by brute force: a full distance transform per cell."""
    cells = connected_components(label == 0, connectivity=1)
    distances = np.sort(
        [ndimage.distance_transform_edt(cells != i) for i in range(1, cells.max() + 1)], axis=0
    )
    border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    return class_balance_weights(label) + np.where(cells == 0, border, 0.0)


def test_datalist_in_slice_order_and_split_by_slice() -> None:
    items = em_datalist(require(EM))
    assert [item["slice"] for item in items] == list(range(30))  # numeric, not lexical, order
    assert all(
        Path(i["label"]).parent.name == "label" and Path(i["label"]).name == f"{i['slice']}.png"
        for i in items
    )
    train, val, test = split_by_slice(items, [22, 23, 24], range(25, 30))
    assert [i["slice"] for i in train] == list(range(22))
    assert [i["slice"] for i in val] == [22, 23, 24] and [i["slice"] for i in test] == list(range(25, 30))
    with pytest.raises(ValueError, match="both validation and test"):
        split_by_slice(items, [24, 25], [25])
    with pytest.raises(ValueError, match=r"no slice\(s\) \[30\]"):
        split_by_slice(items, [], [30])


def _one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_bad_input_gives_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "em"
    for section in ("image", "label"):
        (root / "train" / section).mkdir(parents=True)
        for n in (0, 1, 2):
            shutil.copy(require(EM) / "train" / section / f"{n}.png", root / "train" / section / f"{n}.png")
    assert len(em_datalist(root)) == 3
    (root / "train" / "label" / "1.png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        em_datalist(root)
    assert "no label beside it" in _one_line(error, root / "train" / "image" / "1.png")
    code = cli_main(["train", "--bundle", str(EM_BUNDLE), "--data", str(root), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(root / "train" / "image" / "1.png") in err, err
    small = root / "train" / "label" / "1.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(small)
    with pytest.raises(ValueError) as error:
        em_datalist(root)
    assert "differs from its image's" in _one_line(error, small)
    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(small)
    with pytest.raises(ValueError) as error:
        em_datalist(root)
    assert "RGB channels" in _one_line(error, small)
    (root / "train" / "image" / "2.png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        em_datalist(root)
    assert "label without its image" in _one_line(error, root / "train" / "label" / "2.png")


def test_weight_map_peaks_between_two_touching_cells() -> None:
    label = np.ones((60, 100), np.int64)  # membrane everywhere ...
    label[5:35, 5:29] = 0  # ... but two cells one pixel apart (column 29)
    label[5:35, 30:55] = 0
    weight = border_weight_map(label, w0=10.0, sigma=5.0)
    assert weight.shape == label.shape and weight.dtype == np.float32
    w_cell, w_membrane = weight[label == 0].max(), weight[label == 1].min()
    # class balance: both classes carry the same total w_c, and w_c averages 1
    np.testing.assert_allclose(w_cell * (label == 0).sum(), w_membrane * (label == 1).sum(), rtol=1e-5)
    np.testing.assert_allclose(class_balance_weights(label).mean(), 1.0, rtol=1e-5)
    assert np.all(weight[label == 0] == w_cell)  # no border term inside cells
    # in the one-pixel gap d1 = d2 = 1: w_c + w0 exp(-4 / 50), the map's maximum
    peak = w_membrane + 10.0 * np.exp(-4 / 50)
    np.testing.assert_allclose(weight[20, 29], peak, rtol=1e-5)
    assert weight.max() == pytest.approx(peak, rel=1e-5)
    assert weight[58, 98] == pytest.approx(w_membrane, abs=1e-4)  # far from both cells: w_c only
    np.testing.assert_allclose(weight, _exact_weight_map(label), atol=1e-3)
    one_cell = label.copy()
    one_cell[5:35, 30:55] = 1  # no second-nearest cell: no border term
    np.testing.assert_array_equal(border_weight_map(one_cell), class_balance_weights(one_cell))


def test_weight_map_of_a_real_label() -> None:
    item = {
        "image": str(require(EM) / "train" / "image" / "0.png"),
        "label": str(EM / "train" / "label" / "0.png"),
    }
    sample = BorderWeightMapd(keys="label")(build_em_eval_transforms()(item))
    label, weight = sample["label"], sample["weight"]
    assert weight.shape == label.shape == (1, 512, 512) and weight.dtype == torch.float32
    label, weight = label[0].numpy(), weight[0].numpy()
    w_cell, w_membrane = weight[label == 0].max(), weight[label == 1].min()
    assert np.all(weight[label == 0] == w_cell) and w_membrane > 1 > w_cell  # membrane is the rarer class
    np.testing.assert_allclose(w_cell * (label == 0).sum(), w_membrane * (label == 1).sum(), rtol=1e-4)
    # touching cells (thin membranes) get close to w0 on top of w_c, never more
    assert w_membrane + 8.0 < weight.max() <= w_membrane + 10.0
    # the bounded-box computation is eq. 2 (checked on a 192x192 corner: the exact one is slow)
    corner = label[:192, :192]
    np.testing.assert_allclose(border_weight_map(corner), _exact_weight_map(corner), atol=1e-3)


def test_elastic_augmentation_keeps_image_label_and_weight_aligned() -> None:
    """The label file read as the image too: after the warp, image, label and weight still agree."""
    path = str(require(EM) / "train" / "label" / "3.png")
    chain = build_em_train_transforms(patch_size=(512, 512), num_samples=1, elastic_prob=1.0, flips=False)
    chain.set_random_state(seed=1)
    sample = chain({"image": path, "label": path})[0]
    image, classes, weight = sample["image"][0], sample["label"][0], sample["label"][1]
    assert sample["label"].shape == (2, 512, 512) and image.shape == (512, 512)
    original = torch.as_tensor(_label(3).T, dtype=torch.float32)  # PILReader reads (x, y)
    changed = (classes != original).float().mean()
    assert 0.02 < changed < 0.5, changed  # deformed, not replaced
    # image: the z-scored label, warped bilinearly; membrane is the dark side
    agreement = ((image < image.mean()).float() == classes).float().mean()
    assert agreement > 0.97, agreement
    # weight: warped with the label's own grid, so each class keeps its own w_c exactly
    cell_weights = weight[classes == 0]
    assert torch.all(cell_weights == cell_weights[0]) and torch.all(weight[classes == 1] > cell_weights[0])
    # "false" as `python -m monai.bundle run --weight_map false` passes it: the map is off
    without = build_em_train_transforms(patch_size=(128, 128), num_samples=2, weight_map="false")
    samples = without({"image": path, "label": path})
    assert len(samples) == 2 and samples[0]["label"].shape == (1, 128, 128) and "weight" not in samples[0]


def test_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, classes = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 1, 8, 8)).float()
    loss = WeightedCrossEntropyLoss()
    plain = F.cross_entropy(logits, classes[:, 0].long())
    torch.testing.assert_close(loss(logits, classes), plain)
    torch.testing.assert_close(loss(logits, torch.cat([classes, torch.full_like(classes, 3.0)], 1)), plain)
    weight = torch.zeros_like(classes)
    weight[..., :4] = 1.0  # only the left half counts
    expected = F.cross_entropy(logits[..., :4], classes[:, 0, :, :4].long())
    torch.testing.assert_close(loss(logits, torch.cat([classes, weight], 1)), expected)
    assert WeightedCrossEntropyLoss(dice_weight=1.0)(logits, classes) > plain
    with pytest.raises(ValueError, match="1 \\(class\\) or 2"):
        loss(logits, torch.zeros(2, 3, 8, 8))


def test_metrics_on_known_masks() -> None:
    label = _label(25)
    perfect = em_scores(label, label)
    for key in ("accuracy", "f1", "iou", "mean_iou", "rand_precision", "rand_recall"):
        assert perfect[key] == pytest.approx(1.0), key
    assert perfect["rand_error"] == pytest.approx(0.0, abs=1e-9)
    inverted = em_scores(1 - label, label)
    assert inverted["accuracy"] == pytest.approx(0.0) and inverted["f1"] == 0.0 and inverted["iou"] == 0.0
    # membrane predicted as cell along one thin wall merges cells: pixel scores barely move, Rand does
    merged = label.copy()
    merged[:, 250:262] = 0
    scores = em_scores(merged, label)
    assert scores["accuracy"] > 0.98 and scores["rand_error"] > 0.05 and scores["rand_recall"] < 1.0
    # a 2x2 toy case worked by hand: TP 1, FP 1, FN 0, TN 2
    toy = em_scores(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
    assert toy["accuracy"] == 0.75 and toy["f1"] == pytest.approx(2 / 3) and toy["iou"] == 0.5
    assert adapted_rand(label, label)[0] == pytest.approx(0.0, abs=1e-9)
    metric = AdaptedRandError()
    one_hot = torch.stack([torch.as_tensor(1 - label), torch.as_tensor(label)]).float()
    metric(y_pred=torch.stack([one_hot, one_hot]), y=torch.stack([one_hot, one_hot]))
    assert metric.aggregate().item() == pytest.approx(0.0, abs=1e-6)
    assert binary_dice(label, label) == 1.0 and binary_dice(label, 1 - label) == 0.0


def test_saved_masks_keep_the_files_orientation(tmp_path: Path) -> None:
    """A label read by the eval chain and written by inference.json's postprocessing is the same file."""
    post = load_workflow(EM_BUNDLE, "inference", output_dir=str(tmp_path)).parser.get_parsed_content(
        "postprocessing"
    )
    label_file = require(EM) / "train" / "label" / "7.png"
    sample = build_em_eval_transforms()({"image": str(label_file), "label": str(label_file)})
    # logits of a perfect prediction (the label's metadata names the output file)
    post({"pred": torch.cat([1.0 - sample["label"], sample["label"]]) * 10})
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "7_seg.png")), np.asarray(Image.open(label_file))
    )


def test_both_inferers_give_whole_slice_outputs() -> None:
    x = torch.randn(1, 1, 512, 512)
    for padding, inferer_name, network_name in (
        ("same", "SlidingWindowInferer", "RonnebergerUNet"),
        ("valid", "SimpleInferer", "OverlapTileNet"),
    ):
        parser = load_workflow(EM_BUNDLE, "inference", padding=padding, **TINY).parser
        network, inferer = parser.get_parsed_content("network_def"), parser.get_parsed_content("inferer")
        assert type(network).__name__ == network_name and type(inferer).__name__ == inferer_name
        network.eval()
        with torch.no_grad():
            assert inferer(x, network).shape == (1, 2, 512, 512), padding
    # the inferer can be chosen on its own too: the valid network through the sliding window
    parser = load_workflow(
        EM_BUNDLE, "inference", padding="valid", inferer_name="sliding_window", **TINY
    ).parser
    assert type(parser.get_parsed_content("inferer")).__name__ == "SlidingWindowInferer"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One tiny epoch through ``python -m monai.bundle run``, as a user types it (one thread)."""
    root = tmp_path_factory.mktemp("em_bundle")
    overrides = {"dataset_dir": str(require(EM)), "bundle_root": str(root), **SMOKE}
    arguments = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json")]
    for key, value in overrides.items():
        arguments += [f"--{key}", json.dumps(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(arguments, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, result.stdout + result.stderr


def test_one_epoch_through_monai_bundle_run(smoke_run: tuple[Path, str]) -> None:
    root, output = smoke_run
    assert "validation [24] | test (held out) [25, 26, 27, 28, 29] | weight map True" in output
    assert "val_f1" in output and "val_rand_error" in output and "train_epoch_loss" in output
    assert "train_f1" in output
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model_best.pt").is_file()


def test_evaluate_on_the_held_out_slices(smoke_run: tuple[Path, str]) -> None:
    root, _ = smoke_run
    evaluation = run_workflow(EM_BUNDLE, "evaluate", dataset_dir=str(EM), bundle_root=str(root), **TINY)
    metrics = evaluation.parser.get_parsed_content("validate#evaluator").state.metrics
    assert set(metrics) == {"val_f1", "val_accuracy", "val_iou", "val_rand_error"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    masks = sorted((root / "eval" / "pred").glob("*_seg.png"))
    assert [m.name for m in masks] == [f"{n}_seg.png" for n in range(25, 30)]
    # the masks written are what the metrics were computed on: pixels pooled, Rand error per slice
    predicted = [np.asarray(Image.open(m)) == 0 for m in masks]
    labels = [_label(n) for n in range(25, 30)]
    pooled = em_scores(np.concatenate(predicted), np.concatenate(labels))
    for key in ("f1", "accuracy", "iou"):
        assert pooled[key] == pytest.approx(metrics[f"val_{key}"], abs=1e-5), key
    rand = np.mean([adapted_rand(p, t)[0] for p, t in zip(predicted, labels, strict=True)])
    assert rand == pytest.approx(metrics["val_rand_error"], abs=1e-5)


def test_infer_whole_slices_and_a_nuclei_image(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    """`unet-monai infer` on a 512x512 EM slice and on the DSB 2018 uint16 fluorescence TIFF."""
    root, _ = smoke_run
    settings = ["--set", "network_def#features=4", "--set", "roi_size=[128,128]"]
    nuclei = require(DSB) / "img2d.tif"
    for image in (EM / "test" / "3.png", nuclei):
        args = ["infer", "--bundle", str(EM_BUNDLE), "--input", str(image), "--output", str(tmp_path)]
        assert cli_main(args + ["--checkpoint", str(root / "models" / "model.pt")] + settings) == 0
    for name in ("3_seg.png", "img2d_seg.png"):
        mask = np.asarray(Image.open(tmp_path / name))
        assert mask.shape == (512, 512) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    # nuclei are the enclosed bright objects, as cells are in EM: Dice of the predicted cells vs mask > 0
    reference = np.asarray(Image.open(DSB / "mask2d.tif")) > 0
    assert 0.0 <= binary_dice(np.asarray(Image.open(tmp_path / "img2d_seg.png")) > 0, reference) <= 1.0


def test_verify_net_in_out_and_torchscript_export(smoke_run: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = smoke_run
    common = {"meta_file": str(CONFIGS / "metadata.json"), "config_file": str(CONFIGS / "inference.json")}
    verify_net_in_out(net_id="network_def", n=2, **{"network_def#features": 4}, **common)
    verify_net_in_out(net_id="network_def", n=2, padding="valid", **{"network_def#features": 4}, **common)
    shapes = [(1, 1, 512, 512), (1, 1, 48, 80)]
    assert_scripted_export_matches(EM_BUNDLE, root / "models" / "model.pt", TINY, shapes, tmp_path)
