"""Write a planned, self-contained MONAI bundle: configs that follow ``bundles/CONTRACT.md``, the plan,
the fingerprint, metadata, a README that explains the plan in words, and a licence.

The configs are built here as plain dicts (no template files to find at run time), one function per
config file; ``write_bundle`` writes them atomically in the model zoo's JSON format. Every value the
plan decided is a top-level id (``roi_size``, ``pixdim``, ``intensity``, ...), so ``--set`` changes it
and the checkpoint keeps it (``training_settings``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unet_monai.bundle_contract import zoo_json
from unet_monai.io import write_text

BUNDLE_VERSION = "0.1.0"
SETTINGS_IDS = (
    "num_classes",
    "label_values",
    "axcodes",
    "channels",
    "roi_size",
    "intensity",
    "ct_stats",
    "pixdim",
    "slice_axis",
    "neighbours",
    "features",
    "depth",
)
SHARED = Path(__file__).parent / "shared"  # the contract's shared blocks, as every bundle has them
FROM_ENGINE = "$monai.handlers.from_engine(['pred', 'label'])"
IMAGE_PATTERNS = ["*.nii.gz", "*.nii", "*.nrrd", "*.mha", "*.png", "*.tif", "*.tiff"]


def _shared_ids(plan: dict[str, Any], dataset_dir: str) -> dict[str, Any]:
    """The ids train.json and inference.json share: where things are, the device, the plan's values."""
    return {
        "imports": [
            "$import os",
            "$import torch",
            "$import ignite",
            "$import unet_monai",
            "$import unet_monai.bundle",
        ],
        "bundle_root": ".",
        "dataset_dir": dataset_dir,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": "$torch.cuda.is_available()",
        "num_classes": plan["num_classes"],
        "class_names": plan["class_names"],
        "channels": plan["channels"],
        "label_values": plan.get("label_values"),
        "axcodes": plan.get("axcodes", "RAS"),
        "roi_size": plan["roi_size"],
        "intensity": plan["intensity"],
        "ct_stats": plan["ct_stats"],
        "pixdim": plan["target_spacing"] if plan["resample"] else None,
        "slice_axis": plan["slice_axes"] or None,
        "neighbours": plan["neighbours"],
        "features": plan["network"]["features"],
        "depth": plan["network"]["depth"],
        "sw_batch_size": 8 if plan["configuration"] == "3d" else 32,
        "overlap": 0.5,
        "network_def": {
            "_target_": "unet_monai.networks.create_network",
            "name": plan["network"]["name"],
            "spatial_dims": plan["network"]["spatial_dims"],
            "in_channels": "$@channels * (2 * @neighbours + 1)",
            "out_channels": "@num_classes",
            "features": "@features",
            "depth": "@depth",
            "norm": plan["network"]["norm"],
        },
        "network": "$@network_def.to(@device)",
    }


def _chain(kind: str, label: bool) -> dict[str, Any]:
    """A training or evaluation chain built from the plan's ids."""
    chain: dict[str, Any] = {
        "_target_": f"unet_monai.transforms.build_{kind}_transforms",
        "intensity": "@intensity",
        "ct_stats": "@ct_stats",
        "pixdim": "@pixdim",
        "axcodes": "@axcodes",
        "channels": "@channels",
        "num_classes": "@num_classes",
        "spatial_dims": "$len(@roi_size) if @slice_axis is None else 3",
    }
    if label:
        chain["label_values"] = "@label_values"
    if kind == "train":
        chain |= {
            "slice_axis": "@slice_axis",
            "neighbours": "@neighbours",
            "roi_size": "@roi_size",
            "num_samples": "@num_samples",
            "flip_axes": "@flip_axes",
        }
    elif not label:
        chain["label_key"] = None
    return chain


CHECKPOINT_LOADER = {
    "_target_": "CheckpointLoader",
    "load_path": "@ckpt_path",
    "load_dict": {"model": "@network"},
    "map_location": "@device",
}


def _mask_saver(key: str, output_dir: str) -> dict[str, Any]:
    """Masks of ``key`` as ``<case>_seg`` uint8 files in ``output_dir``, on the grid they already have."""
    return {
        "_target_": "unet_monai.transforms.AtomicSaveImaged",
        "keys": key,
        "output_dir": output_dir,
        "output_postfix": "seg",
        "output_dtype": "$numpy.uint8",
        "resample": False,
        "separate_folder": False,
        "print_log": False,
    }


def _stored_values(plan: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Masks back to the values the label files store (``[0, 255]``), where the plan maps them."""
    if plan.get("label_values") is None:
        return []
    return [
        {
            "_target_": "MapLabelValued",
            "keys": key,
            "orig_labels": "$list(range(len(@label_values)))",
            "target_labels": "@label_values",
        }
    ]


def _inferer(mirror: bool) -> dict[str, Any]:
    inferer = {
        "_target_": "unet_monai.inference.volume_inferer",
        "roi_size": "@roi_size",
        "slice_axis": "@slice_axis",
        "neighbours": "@neighbours",
        "sw_batch_size": "@sw_batch_size",
        "overlap": "@overlap",
        "mode": "gaussian",
    }
    if mirror:
        inferer["mirror_axes"] = "@flip_axes"
    return inferer


def _datalist(data_kind: str) -> str:
    if data_kind == "msd":
        return "$unet_monai.data.msd_datalist(@dataset_dir)"
    return "$unet_monai.data.folder_datalist(@dataset_dir, @labels_dir, pattern=@image_pattern)"


def train_config(
    plan: dict[str, Any], dataset_dir: str, data_kind: str, labels_dir: str | None = None
) -> dict[str, Any]:
    """train.json: the plan's recipe, fold ``fold`` of ``num_folds``, stopped by the time budget too."""
    shared = _shared_ids(plan, dataset_dir)
    config: dict[str, Any] = {
        "imports": shared.pop("imports"),
        "bundle_root": shared.pop("bundle_root"),
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/runs'",
        "resume": False,
        "resume_checkpoint": "$@ckpt_dir + '/resume.pt'",
        **shared,
        "seed": 0,
        "max_epochs": plan.get("max_epochs", 20),
        "val_interval": plan.get("val_interval", 2),
        "time_limit_minutes": plan.get("budget_minutes"),
        "num_folds": plan.get("num_folds", 5),
        "fold": 0,
        "split_seed": 0,
        "flip_axes": plan["flip_axes"],
        "num_samples": plan["num_samples"],
        "batch_size": plan["batch_size"],
        "num_workers": 0,
        "learning_rate": plan["learning_rate"],
    }
    if data_kind == "folders":
        config["labels_dir"] = labels_dir
        config["image_pattern"] = plan.get("image_pattern", "*.nii.gz")
    config |= {
        "datalist": _datalist(data_kind),
        "split": "$unet_monai.data.fold_split(@datalist, @num_folds, @fold, @split_seed)",
        "training_settings": {
            "_target_": "unet_monai.checkpoints.TrainingSettings",
            "bundle_root": "@bundle_root",
            "values": {name: f"@{name}" for name in SETTINGS_IDS},
        },
        "loss": {
            "_target_": "DiceCELoss",
            "to_onehot_y": True,
            "softmax": True,
            "include_background": False,
            "batch": True,
        },
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": "$@network.parameters()",
            "lr": "@learning_rate",
            "weight_decay": 1e-05,
        },
        "lr_scheduler": {
            "_target_": "torch.optim.lr_scheduler.PolynomialLR",
            "optimizer": "@optimizer",
            "total_iters": "@train#trainer#max_epochs",
            "power": 0.9,
        },
        "train": _train_section(),
        "validate": _validate_section(),
        "initialize": [
            "$monai.utils.set_determinism(seed=@seed)",
            "$getattr(@network_def, '_check_input_size', lambda shape: None)(tuple(@roi_size))",
            "$print('planned U-Net (depth', @depth, ', patch', @roi_size, ') fold', @fold, 'of', @num_folds, "
            "':', len(@split[0]), 'training cases,', len(@split[1]), 'validation cases, device', @device)",
        ],
        "run": [
            "$@train#trainer.run()",
            "$os.path.exists(@ckpt_dir + '/model.pt') and print('trained:', @ckpt_dir + '/model.pt')",
        ],
    }
    return config


def _train_section() -> dict[str, Any]:
    loss_output = "$monai.handlers.from_engine(['loss'], first=True)"
    return {
        "preprocessing": _chain("train", label=True),
        "dataset": {
            "_target_": "CacheDataset",
            "data": "$@split[0]",
            "transform": "@train#preprocessing",
            "cache_rate": 1.0,
            "num_workers": 2,
            "progress": True,
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@train#dataset",
            "batch_size": "@batch_size",
            "shuffle": True,
            "num_workers": "@num_workers",
        },
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": []},
        "handlers": [
            {"_target_": "unet_monai.handlers.PlainTensorBatches"},
            {"_target_": "unet_monai.handlers.SkipNonFiniteSteps"},
            {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": True},
            {"_target_": "unet_monai.handlers.StopAfter", "minutes": "@time_limit_minutes"},
            {
                "_target_": "ValidationHandler",
                "validator": "@validate#evaluator",
                "epoch_level": True,
                "interval": "@val_interval",
            },
            {
                "_target_": "unet_monai.handlers.ValidateAtEnd",
                "validator": "@validate#evaluator",
                "interval": "@val_interval",
            },
            {
                "_target_": "StatsHandler",
                "tag_name": "train_loss",
                "output_transform": loss_output,
                "iteration_log": False,
            },
            {
                "_target_": "TensorBoardStatsHandler",
                "log_dir": "@output_dir",
                "tag_name": "train_loss",
                "output_transform": loss_output,
            },
            {
                "_target_": "TensorBoardStatsHandler",
                "log_dir": "@output_dir",
                "iteration_log": False,
                "epoch_event_writer": "$lambda engine, writer: writer.add_scalar("
                "'learning_rate', @optimizer.param_groups[0]['lr'], engine.state.epoch)",
            },
            {"_target_": "ignite.handlers.ProgressBar", "persist": False},
            {
                "_target_": "unet_monai.handlers.ResumeCheckpoint",
                "path": "@resume_checkpoint",
                "resume": "@resume",
                "save_dict": {
                    "model": "@network",
                    "optimizer": "@optimizer",
                    "lr_scheduler": "@lr_scheduler",
                    "settings": "@training_settings",
                },
                "validator": "@validate#evaluator",
                "best_saver": "@validate#best_saver",
                "map_location": "@device",
            },
        ],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": "@max_epochs",
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "loss_function": "@loss",
            "optimizer": "@optimizer",
            "inferer": "@train#inferer",
            "postprocessing": "@train#postprocessing",
            "train_handlers": "@train#handlers",
            "amp": "@amp",
        },
    }


def _onehot_postprocessing() -> dict[str, Any]:
    return {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "AsDiscreted",
                "keys": ["pred", "label"],
                "argmax": [True, False],
                "to_onehot": "@num_classes",
            },
        ],
    }


def _validate_section() -> dict[str, Any]:
    return {
        "preprocessing": _chain("eval", label=True),
        "dataset": {
            "_target_": "CacheDataset",
            "data": "$@split[1]",
            "transform": "@validate#preprocessing",
            "cache_rate": 1.0,
            "num_workers": 2,
            "progress": False,
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@validate#dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": _inferer(mirror=False),
        "postprocessing": _onehot_postprocessing(),
        "key_metric": {
            "val_mean_dice": {
                "_target_": "MeanDice",
                "include_background": False,
                "output_transform": FROM_ENGINE,
            }
        },
        "additional_metrics": {
            "val_class_dice": {
                "_target_": "MeanDice",
                "include_background": False,
                "reduction": "mean_batch",
                "return_with_label": "$['val_dice_' + name for name in @class_names]",
                "output_transform": FROM_ENGINE,
            },
            "val_mean_iou": {
                "_target_": "MeanIoUHandler",
                "include_background": False,
                "output_transform": FROM_ENGINE,
            },
        },
        "best_saver": {
            "_target_": "unet_monai.handlers.AtomicCheckpointSaver",
            "save_dir": "@ckpt_dir",
            "save_dict": {"model": "@network", "settings": "@training_settings"},
            "save_key_metric": True,
            "key_metric_filename": "model.pt",
        },
        "handlers": [
            {"_target_": "StatsHandler", "iteration_log": False},
            {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir", "iteration_log": False},
            "@validate#best_saver",
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
            "inferer": "@validate#inferer",
            "postprocessing": "@validate#postprocessing",
            "key_val_metric": "@validate#key_metric",
            "additional_metrics": "@validate#additional_metrics",
            "val_handlers": "@validate#handlers",
            "amp": "@amp",
        },
    }


def inference_config(plan: dict[str, Any], dataset_dir: str) -> dict[str, Any]:
    """inference.json: every image in ``dataset_dir`` -> a mask on the image's own grid."""
    shared = _shared_ids(plan, dataset_dir)
    del shared["network"]  # the fold ensemble's, below
    return {
        "imports": [*shared.pop("imports"), "$import unet_monai.networks"],
        "bundle_root": shared.pop("bundle_root"),
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "output_dir": "$@bundle_root + '/eval'",
        **shared,
        "flip_axes": plan["flip_axes"],
        "ensemble_folds": plan.get("ensemble_folds", 1),
        "network": "$unet_monai.networks.fold_ensemble(@network_def, @ensemble_folds).to(@device)",
        "datalist": "$unet_monai.bundle.dataset_items('dataset_dir', @dataset_dir, "
        f"unet_monai.bundle.image_files, patterns={IMAGE_PATTERNS!r})",
        "preprocessing": _chain("eval", label=False),
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': path} for path in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": _inferer(mirror=True),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "unet_monai.transforms.ArgmaxLabelsd", "keys": "pred"},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": True,
                    "to_tensor": True,
                },
                *_stored_values(plan, "pred"),
                _mask_saver("pred", "@output_dir"),
            ],
        },
        "handlers": [
            CHECKPOINT_LOADER,
            {"_target_": "ignite.handlers.ProgressBar", "persist": True},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "@amp",
        },
        "initialize": [
            "$getattr(@network_def, '_check_input_size', lambda shape: None)(tuple(@roi_size))",
            "$print('inferring', len(@datalist), 'image(s) from', @dataset_dir, 'into', @output_dir)",
        ],
        "run": ["$@evaluator.run()"],
    }


def evaluate_config(plan: dict[str, Any]) -> dict[str, Any]:
    """evaluate.json, layered on train.json: the fold's validation cases through ``ckpt_path`` with mirror
    TTA; masks written on each file's own grid (``pred_dir``), then ``unet_monai.evaluate``'s per-case CSV,
    summary.json and overlay figures, and MONAI's MetricsSaver CSVs."""
    return {
        "ckpt_path": "$@ckpt_dir + '/model.pt'",
        "output_dir": "$@bundle_root + '/eval'",
        "pred_dir": "$@output_dir + '/pred'",
        "validate#inferer#mirror_axes": "@flip_axes",
        "validate#postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "CopyItemsd", "keys": "pred", "names": "pred_on_source"},
                {
                    "_target_": "Invertd",
                    "keys": "pred_on_source",
                    "transform": "@validate#preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred_on_source", "argmax": True},
                *_stored_values(plan, "pred_on_source"),
                _mask_saver("pred_on_source", "@pred_dir"),
                {"_target_": "DeleteItemsd", "keys": "pred_on_source"},
                {
                    "_target_": "AsDiscreted",
                    "keys": ["pred", "label"],
                    "argmax": [True, False],
                    "to_onehot": "@num_classes",
                },
            ],
        },
        "validate#handlers": [
            CHECKPOINT_LOADER,
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": "MetricsSaver",
                "save_dir": "@output_dir",
                "metrics": None,
                "metric_details": ["val_mean_dice", "val_mean_iou"],
                "batch_transform": "$lambda x: [xx['image'].meta for xx in x]",
                "summary_ops": "*",
            },
        ],
        "report": {
            "_target_": "unet_monai.evaluate.evaluate_folders",
            "_mode_": "callable",
            "pred_dir": "@pred_dir",
            "label_dir": "$os.path.dirname(@split[1][0]['label'])",
            "output_dir": "@output_dir",
            "num_classes": "@num_classes",
            "class_names": "@class_names",
            "cases": "$[unet_monai.data.case_name(item['label']) for item in @split[1]]",
            "images": "${unet_monai.data.case_name(item['label']): item['image'] for item in @split[1]}",
            "log_dir": "$@bundle_root + '/runs'",
            "binary": plan.get("label_values") is not None and plan["num_classes"] == 2,
        },
        "initialize": [
            "$monai.utils.set_determinism(seed=@seed)",
            "$print('evaluating', os.path.abspath(@ckpt_path), 'on', len(@split[1]), "
            "'validation cases of fold', @fold)",
        ],
        "run": [
            "$@validate#evaluator.run()",
            "$@report()",
            "$print('per-case metrics, summary.json and figures in', @output_dir)",
        ],
    }


def metadata(
    plan: dict[str, Any], fingerprint: dict[str, Any], name: str, versions: dict[str, str]
) -> dict[str, Any]:
    """metadata.json in the model zoo's schema, from the plan and the fingerprint."""
    names = ["background", *plan["class_names"]]
    modality = ", ".join(str(channel.get("name") or "image") for channel in fingerprint["intensity"])
    spatial = ["*"] * len(plan["roi_size"])
    channel_def = {
        str(k): str(channel.get("name") or "image") for k, channel in enumerate(fingerprint["intensity"])
    }
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": BUNDLE_VERSION,
        "changelog": {
            BUNDLE_VERSION: f"planned by unet-monai {versions['unet-monai']} from "
            f"{fingerprint['num_cases']} cases"
        },
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {
            "unet-monai": versions["unet-monai"],
            "nibabel": versions["nibabel"],
            "pytorch-ignite": versions["pytorch-ignite"],
            "tensorboard": versions["tensorboard"],
        },
        "supported_apps": {},
        "name": name,
        "task": f"Segmentation of {', '.join(plan['class_names'])} "
        f"({plan['configuration']} U-Net planned from the data)",
        "description": " ".join(f"{key}: {reason}." for key, reason in plan["reasons"].items()),
        "authors": "generated by unet-monai plan",
        "copyright": "Copyright (c) the dataset's and the bundle's authors",
        "data_source": fingerprint["source"],
        "data_type": "nifti",
        "image_classes": f"{plan['channels']} channel(s): {modality}",
        "label_classes": ", ".join(f"{value} {label}" for value, label in enumerate(names)),
        "pred_classes": ", ".join(f"{value} {label}" for value, label in enumerate(names)),
        "eval_metrics": plan.get("results", {}).get("metrics", {}),
        "intended_use": "Research only; not for clinical diagnosis.",
        "references": [
            "Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image "
            "Segmentation. MICCAI 2015.",
            "Isensee F, et al. nnU-Net: a self-configuring method for deep learning-based biomedical image "
            "segmentation. Nature Methods 18, 203-211 (2021).",
        ],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": modality,
                    "num_channels": plan["channels"],
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": plan["num_classes"],
                    "spatial_shape": spatial,
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {str(value): label for value, label in enumerate(names)},
                }
            },
        },
    }


def package_versions() -> dict[str, str]:
    """Installed versions of the packages metadata.json names."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("unet-monai", "monai", "torch", "numpy", "nibabel", "pytorch-ignite", "tensorboard"):
        try:
            found[package] = version(package).split("+")[0]
        except PackageNotFoundError:
            found[package] = ""
    return found


def readme(plan: dict[str, Any], fingerprint: dict[str, Any], name: str, command: str) -> str:
    """docs/README.md under the model zoo's template sections, explaining the plan in words."""
    geometry = fingerprint["geometry"]
    network = plan["network"]
    reasons = "\n".join(f"- **{key}**: {reason}" for key, reason in plan["reasons"].items())
    if "max_epochs" in plan:
        training = (
            f"{plan['max_epochs']} epochs of {plan['iterations_per_epoch']} steps, validation every "
            f"{plan['val_interval']} epoch(s), planned to fit {plan['budget_minutes']} minutes on the "
            f"planning machine ({plan['step_seconds']} s measured per training step, "
            f"{plan['cache_seconds_per_case']} s per case to cache, predicted {plan['predicted_minutes']} "
            f"minutes). Training also stops at "
            f"`time_limit_minutes` and then validates and saves once more."
        )
    else:
        training = "the epochs were not fitted to a budget (no `--budget`): `max_epochs` is the default."
    measured = ""
    if "results" in plan:
        results = plan["results"]
        folds = results["folds"]
        scope = (
            "fold 0's validation cases" if folds == 1 else f"{folds}-fold cross-validation (each case once)"
        )
        figures = ", ".join(f"{key} {value}" for key, value in results["metrics"].items())
        seconds = ", ".join(
            f"{entry['train_seconds']:.0f} s ({entry['epochs']} epochs)" for entry in results["per_fold"]
        )
        measured = (
            f"\n\nMeasured by `unet-monai fit` on this machine, {scope}, mirror TTA: {figures}. "
            f"Training: {seconds}."
        )
    return f"""# {name}

A bundle planned by `unet-monai plan` from the data alone: nobody edited its configs. It follows the
bundle contract of unet-monai (`bundles/CONTRACT.md`) and the MONAI model zoo's conventions.

Made by:

```
{command}
```

## Authors

Generated by unet-monai; the data's authors are named in `docs/data_license.txt`.

## Tags

segmentation, {plan["configuration"]}, U-Net, planned

## Model Description

A Ronneberger U-Net ({network["spatial_dims"]}D, depth {network["depth"]}, {network["features"]} base
features, batch-norm) on {plan["channels"]} input channel(s) and {plan["num_classes"]} output classes
(background, {", ".join(plan["class_names"])}), trained with Dice + cross-entropy and AdamW (learning rate
{plan["learning_rate"]}, polynomial decay). Configuration **{plan["configuration"]}**,
patch {plan["roi_size"]}, {plan["batch_size"]} x {plan["num_samples"]} patches per step.

Why each choice (`plan.json` holds them all):

{reasons}

## Data

{fingerprint["num_cases"]} labelled cases from `{fingerprint["source"]}`: median spacing
{geometry["spacing"]["median"]} (axes {geometry["axes"]}), median shape {geometry["shape"]["median"]},
anisotropy {geometry["anisotropy"]}. The whole fingerprint is in `fingerprint.json`. Training uses fold
`fold` of `num_folds` ({plan.get("num_folds", 5)} here; the folds are a seeded partition of the cases).

## Performance

Training: {training}{measured}

Validation Dice is written by training (TensorBoard under `runs/`) and by the bundle's evaluate.json
(`unet-monai fit` runs it; or `python -m monai.bundle run --config_file
"['configs/train.json','configs/evaluate.json']" ...`): metrics.csv, summary.json and overlays under `eval/`.

## System Configuration

Planned for device `{plan["device"]}`. Train: `unet-monai train --bundle THIS_FOLDER`, or from this folder
`python -m monai.bundle run --bundle_root . --meta_file configs/metadata.json --config_file
configs/train.json --logging_file configs/logging.conf`. Infer: `unet-monai infer --bundle THIS_FOLDER
--input IMAGES --output MASKS`; masks are written on each input's own grid (the resampling is inverted).
"""


def data_license(fingerprint: dict[str, Any], description: dict[str, Any]) -> str:
    """docs/data_license.txt: what the dataset says about its licence."""
    licence = description.get("licence") or description.get("license")
    reference = description.get("reference") or description.get("name") or fingerprint["source"]
    if licence:
        return (
            f"The training data ({reference}) is licensed {licence}; weights trained on it derive from it.\n"
        )
    return (
        f"The training data ({reference}) states no licence here: weights trained on it derive from it; "
        "check its terms before sharing them.\n"
    )


LICENSE_TEXT = (
    "Code and configuration of this bundle: Apache License, Version 2.0\n"
    "(https://www.apache.org/licenses/LICENSE-2.0), generated by unet-monai.\n"
    "Weights trained with it derive from the training data: see docs/data_license.txt.\n"
)
LARGE_FILES = (
    "# Large files of this bundle in the MONAI model zoo's format. A planned bundle ships no weights:\n"
    "# models/model.pt is written by training it (unet-monai train / fit).\n"
    "large_files: []\n"
)


def write_bundle(
    output: str | Path,
    plan: dict[str, Any],
    fingerprint: dict[str, Any],
    dataset_dir: str | Path,
    labels_dir: str | Path | None = None,
    name: str | None = None,
    command: str = "unet-monai plan",
) -> Path:
    """Write the bundle folder ``output`` (configs, plan.json, fingerprint.json, docs, LICENSE); returns it.

    Args:
        dataset_dir: an MSD folder (with dataset.json), or the images folder when ``labels_dir`` is given.
    """
    output = Path(output)
    name = name or output.resolve().name
    data_kind = "folders" if labels_dir is not None else "msd"
    dataset_dir = str(Path(dataset_dir).resolve())
    labels = str(Path(labels_dir).resolve()) if labels_dir is not None else None
    description: dict[str, Any] = {}
    if data_kind == "msd" and (Path(dataset_dir) / "dataset.json").is_file():
        description = json.loads((Path(dataset_dir) / "dataset.json").read_text(encoding="utf-8"))
    configs = {
        "train.json": train_config(plan, dataset_dir, data_kind, labels),
        "inference.json": inference_config(
            plan, dataset_dir if data_kind == "folders" else dataset_dir + "/imagesTs"
        ),
        "evaluate.json": evaluate_config(plan),
        "metadata.json": metadata(plan, fingerprint, name, package_versions()),
    }
    for folder in ("configs", "docs", "models"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    for file, content in configs.items():
        write_text(output / "configs" / file, zoo_json(json.dumps(content)))
    for shared in ("logging.conf", "multi_gpu_train.json"):
        write_text(output / "configs" / shared, (SHARED / shared).read_text(encoding="utf-8"))
    write_text(output / "plan.json", zoo_json(json.dumps(plan)))
    write_text(output / "fingerprint.json", zoo_json(json.dumps(fingerprint)))
    write_text(output / "docs" / "README.md", readme(plan, fingerprint, name, command))
    write_text(output / "docs" / "data_license.txt", data_license(fingerprint, description))
    write_text(output / "LICENSE", LICENSE_TEXT)
    write_text(output / "large_files.yml", LARGE_FILES)
    return output
