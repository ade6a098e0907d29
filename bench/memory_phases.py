"""Where the peak memory of whole-volume inference comes from: RSS sampled through one run, by phase.

Runs the hippocampus bundle's ``inference.json`` (whole ensemble, mirror TTA, ``bench_memory.py``'s
stand-in network) on one synthetic 512 x 512 x DEPTH CT volume, samples this process's RSS every 20 ms
in a thread, and prints, for each phase (loading + preprocessing, inference, then each postprocessing
transform), the RSS at its end and its peak, as multiples of the volume's float32 size, as JSON.

    python bench/memory_phases.py --depth 100
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from bench_inference import synthetic_ct
from bench_memory import BUNDLE, STANDIN, rss_bytes
from ignite.engine import Events
from machine import emit_json, machine_info, rounded
from monai.engines import IterationEvents
from monai.transforms import Lambda

from unet_monai.bundle import load_workflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=100, help="slices of the 512 x 512 volume")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    volume_bytes = 512 * 512 * args.depth * 4
    samples: list[tuple[float, int]] = []
    marks: list[tuple[str, float, int]] = []  # name, time, RSS then
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(0.02)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        synthetic_ct(path, (512, 512, args.depth))
        imports = rss_bytes()
        workflow = load_workflow(
            BUNDLE, "inference", datalist=[str(path)], output_dir=tmp, handlers=[], network_def=STANDIN
        )
        workflow.initialize()
        evaluator = workflow.parser.get_parsed_content("evaluator")
        events = {"start": Events.GET_BATCH_STARTED, "loaded": Events.GET_BATCH_COMPLETED}
        events |= {"inferred": IterationEvents.FORWARD_COMPLETED, "end": Events.ITERATION_COMPLETED}
        for name, event in events.items():
            evaluator.add_event_handler(
                event, lambda engine, name=name: marks.append((name, time.perf_counter(), rss_bytes()))
            )
        postprocessing = workflow.parser.get_parsed_content("postprocessing")
        steps: list[Any] = []
        for transform in postprocessing.transforms:  # a mark before each postprocessing transform
            name = f"before {type(transform).__name__}"
            steps += [
                Lambda(lambda d, name=name: marks.append((name, time.perf_counter(), rss_bytes())) or d),
                transform,
            ]
        postprocessing.transforms = steps
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with torch.inference_mode():
            workflow.run()
        done.set()
        sampler.join()
    phases = []
    for (name, start, rss_start), (_, stop, rss_stop) in zip(marks, marks[1:], strict=False):
        inside = [rss for t, rss in samples if start <= t <= stop] + [rss_start, rss_stop]
        peak = (max(inside) - imports) / volume_bytes
        phases.append({"from": name, "peak_until_next_mark_over_volume": peak})
    result = {
        "machine": machine_info(),
        "shape": [512, 512, args.depth],
        "rss_after_imports_over_volume": imports / volume_bytes,
        "phases_above_imports": phases,
        "peak_above_imports_over_volume": (max(rss for _, rss in samples) - imports) / volume_bytes,
    }
    emit_json(rounded(result), args.output)


if __name__ == "__main__":
    main()
