"""Validation Dice of an ensemble of hippocampus checkpoints against each member, printed as JSON.

Each checkpoint is applied with the bundle's evaluation inferer (2.5D slices and mirror TTA, as in
``evaluate.json``) to the held-out validation cases; the ensemble averages the members' softmax
probabilities, then takes the argmax. Dice per class is MONAI's ``DiceMetric`` on the reoriented
volumes, the figure the bundle's evaluator reports. Train the members with different ``seed`` (the
split stays ``split_seed`` 0), e.g.::

    python studies/quality_hippocampus.py --epochs 35 --set seed=0 --keep runs_seed0
    python studies/quality_hippocampus.py --epochs 35 --set seed=1 --keep runs_seed1
    python studies/ensemble_hippocampus.py runs_seed0/epochs_35/models/model.pt \
        runs_seed1/epochs_35/models/model.pt

Members may differ in their settings: ``--member-set INDEX:KEY=VALUE`` applies an override to one
member's network and inferer only, e.g. an ensemble of slice directions::

    python studies/ensemble_hippocampus.py axial.pt sagittal.pt coronal.pt \
        --member-set 1:slice_axis=0 --member-set 1:roi_size=[64,48] \
        --member-set 2:slice_axis=1 --member-set 2:roi_size=[48,48]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from unet_monai.bundle import load_workflow, parse_override

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "hippocampus_unet2d"
DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"


def load_member(checkpoint: Path, overrides: dict) -> tuple[torch.nn.Module, Any]:
    """The bundle's network with a checkpoint's weights (in eval mode) and its evaluation inferer."""
    config = load_workflow(BUNDLE, "evaluate", **overrides).parser
    network = config.get_parsed_content("network_def")
    network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return network.eval(), config.get_parsed_content("validate#inferer")


def member_overrides(texts: list[str], num_members: int) -> list[dict]:
    """``INDEX:KEY=VALUE`` texts -> one override dict per member."""
    per_member: list[dict] = [{} for _ in range(num_members)]
    for text in texts:
        index, sep, override = text.partition(":")
        if not sep or not index.isdigit() or int(index) >= num_members:
            raise ValueError(f"--member-set {text!r}: expected INDEX:KEY=VALUE with INDEX < {num_members}")
        key, value = parse_override(override)
        per_member[int(index)][key] = value
    return per_member


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", type=Path, nargs="+", help="model.pt of each member")
    parser.add_argument("--data", type=Path, default=DATA, help="MSD hippocampus folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--member-set",
        action="append",
        default=[],
        metavar="INDEX:KEY=VALUE",
        help="config override for one member (0-based index), e.g. 1:slice_axis=0",
    )
    args = parser.parse_args()
    overrides = {"dataset_dir": str(args.data), **dict(parse_override(text) for text in args.set)}
    config = load_workflow(BUNDLE, "evaluate", **overrides).parser
    loader = config.get_parsed_content("validate#dataloader")
    num_classes = config.get_parsed_content("num_classes")
    class_names = config.get_parsed_content("class_names")
    per_member = member_overrides(args.member_set, len(args.checkpoints))
    members = [
        load_member(checkpoint, overrides | extra)
        for checkpoint, extra in zip(args.checkpoints, per_member, strict=True)
    ]

    names = [f"member_{i}" for i in range(len(members))] + ["ensemble"]
    metrics = {name: DiceMetric(include_background=False, reduction="mean_batch") for name in names}
    with torch.inference_mode():
        for batch in loader:
            label = one_hot(batch["label"], num_classes)
            probabilities = [
                torch.softmax(inferer(batch["image"], network), dim=1) for network, inferer in members
            ]
            probabilities.append(torch.stack(probabilities).mean(dim=0))
            for name, probability in zip(names, probabilities, strict=True):
                metrics[name](one_hot(probability.argmax(dim=1, keepdim=True), num_classes), label)

    result = {
        "checkpoints": [str(path) for path in args.checkpoints],
        "member_overrides": per_member,
        "val_dice": {},
    }
    for name, metric in metrics.items():
        per_class = metric.aggregate().tolist()
        result["val_dice"][name] = dict(zip(class_names, per_class, strict=True)) | {
            "mean": sum(per_class) / len(per_class)
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
