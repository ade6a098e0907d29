"""The torchrun set-up a bundle's ``multi_gpu_train.json`` needs, and the checks ranks agree on.

``distributed_device`` joins the process group (NCCL on CUDA, Gloo on CPU) and gives this rank's
device from ``LOCAL_RANK``; ``rank_handlers`` keeps the logging / saving handlers on rank 0 only;
``rank_from_environment`` reads and checks torchrun's variables (also for batch inference shards);
``found_on_every_rank`` makes ranks agree on whether a resume checkpoint exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine
from ignite.handlers import ProgressBar
from monai.handlers import (
    CheckpointSaver,
    MetricsSaver,
    StatsHandler,
    TensorBoardImageHandler,
    TensorBoardStatsHandler,
)

# Handlers that only log or write files: multi-GPU runs keep them on rank 0 only.
RANK_ZERO_HANDLERS = (
    StatsHandler,
    TensorBoardStatsHandler,
    TensorBoardImageHandler,
    CheckpointSaver,
    MetricsSaver,
    ProgressBar,
)


def found_on_every_rank(path: Path) -> bool:
    """Whether ``path`` is a file, agreed by every rank of a distributed run: ranks that resumed and ranks
    that started afresh would train different models, so a file only some ranks see stops the run."""
    found = path.is_file()
    if not dist.is_initialized():
        return found
    everywhere: list[bool | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everywhere, found)
    if any(everywhere) and not all(everywhere):
        ranks = [rank for rank, seen in enumerate(everywhere) if seen]
        raise RuntimeError(
            f"{path}: the resume checkpoint is visible to ranks {ranks} only; "
            "every rank needs the same ckpt_dir"
        )
    return found


def _environment_int(environ: Mapping[str, str], name: str, minimum: int) -> int | None:
    """An integer torchrun variable (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` ...), None when unset."""
    text = environ.get(name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{name}={text!r}: not an integer (torchrun sets it; unset it or fix it)") from None
    if value < minimum:
        raise ValueError(f"{name}={value}: must be at least {minimum}")
    return value


def rank_from_environment(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int | None]:
    """``(rank, world_size, local_rank)`` from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (defaults 0, 1, None), checked: integers, ``0 <= RANK < WORLD_SIZE``, ``0 <= LOCAL_RANK`` (and below
    ``LOCAL_WORLD_SIZE`` when set). A rank outside the world would overlap another rank's share: a
    ``ValueError`` naming the variable."""
    world_size = _environment_int(environ, "WORLD_SIZE", 1)
    world_size = 1 if world_size is None else world_size
    rank = _environment_int(environ, "RANK", 0)
    rank = 0 if rank is None else rank
    if rank >= world_size:
        raise ValueError(
            f"RANK={rank}: outside 0 .. {world_size - 1} (WORLD_SIZE={world_size}); it would repeat another "
            "rank's share"
        )
    local_rank = _environment_int(environ, "LOCAL_RANK", 0)
    local_world = _environment_int(environ, "LOCAL_WORLD_SIZE", 1)
    if local_rank is not None and local_world is not None and local_rank >= local_world:
        raise ValueError(
            f"LOCAL_RANK={local_rank}: outside 0 .. {local_world - 1} (LOCAL_WORLD_SIZE={local_world})"
        )
    return rank, world_size, local_rank


def distributed_device() -> torch.device:
    """Join the ``torchrun`` process group (NCCL with CUDA, else Gloo) once; this rank's device.

    The device is ``cuda:LOCAL_RANK`` (made current) with CUDA, else the CPU. Outside ``torchrun`` (no
    ``LOCAL_RANK``) it stops with one line saying how to launch; ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    that are not integers, or out of range, stop with one line naming the variable
    (``rank_from_environment``).
    """
    if "LOCAL_RANK" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json runs under torchrun (LOCAL_RANK is not set): torchrun --nproc_per_node=N "
            "-m monai.bundle run --config_file \"['configs/train.json','configs/multi_gpu_train.json']\""
        )
    local_rank = rank_from_environment()[2] or 0  # set: checked above
    cuda = torch.cuda.is_available()
    if cuda and local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def rank_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; on other ranks, all but those that only log or
    write files (statistics, TensorBoard, checkpoints, metric reports, progress bars)."""
    handlers = list(handlers or [])
    if not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    return [h for h in handlers if not isinstance(h, RANK_ZERO_HANDLERS)]


def quiet_other_ranks(*engines: Engine) -> None:
    """Leave the engines' INFO logs to rank 0 (other ranks still log warnings), as MONAI's model zoo does."""
    if dist.is_initialized() and dist.get_rank() > 0:
        for engine in engines:
            engine.logger.setLevel(logging.WARNING)
