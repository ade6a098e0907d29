"""Run every benchmark (inference, training, memory, arithmetic) and gather the figures in one JSON.

Each script runs in its own subprocess (so memory figures are its own) and writes its JSON next to
``bench/results/latest.json``, which holds the key ratios, every script's full result and the machine.

    python bench/run_all.py --quick          # what `make bench` runs
    python bench/run_all.py                  # the scripts' full defaults (hours on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import machine_info

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SCRIPTS = ["inference", "training", "memory", "arithmetic"]
KEYS = {
    "inference": ["e2e_over_floor", "speedup_vs_naive", "speedup_vs_monai_default"],
    "training": ["step_over_floor", "data_fraction_of_step", "speedup_vs_naive", "slices_per_s"],
    "memory": ["peak_rss_over_volume", "peak_rss_above_import_over_volume", "rss_growth_200"],
}
TARGETS = {
    "inference.e2e_over_floor": ("<=", 1.15),
    "inference.speedup_vs_naive": (">=", 5.0),
    "training.step_over_floor": ("<=", 1.05),
    "memory.peak_rss_over_volume": ("<", 4.0),
    "memory.rss_growth_200": ("<", 0.05),
}


def run_script(name: str, mode: str | None, threads: int | None) -> tuple[dict[str, Any], float]:
    """Run ``bench_<name>.py`` (``--quick`` / ``--smoke``, ``threads`` torch threads): JSON, seconds."""
    output = RESULTS / f"{name}.json"
    command = [sys.executable, str(BENCH / f"bench_{name}.py"), "--output", str(output)]
    if mode:
        command.append(f"--{mode}")
    print(f"== {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, stdout=subprocess.DEVNULL, check=False, cwd=BENCH.parent, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_{name}.py failed with exit status {done.returncode}")
    return json.loads(output.read_text()), seconds


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The key ratios per script, and each issue target with its measured value and whether it is met."""
    out: dict[str, Any] = {name: {key: results[name].get(key) for key in keys} for name, keys in KEYS.items()}
    arithmetic = results["arithmetic"]
    out["arithmetic"] = {
        "sgemm_gflops": arithmetic["sgemm_gflops"],
        "ronneberger_unet_gflops": arithmetic["networks"]["ronneberger_unet"].get("gflops"),
        "ronneberger_unet_gflop_per_slice": arithmetic["networks"]["ronneberger_unet"].get("gflop_per_slice"),
    }
    targets = {}
    for path, (op, bound) in TARGETS.items():
        section, key = path.split(".")
        value = out[section][key]
        met = value is not None and (
            value <= bound if op == "<=" else value >= bound if op == ">=" else value < bound
        )
        targets[path] = {"value": value, "target": f"{op} {bound}", "met": bool(met)}
    out["targets"] = targets
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's --quick (make bench)")
    parser.add_argument("--smoke", action="store_true", help="each script's --smoke (seconds; tests only)")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS, help="scripts to run")
    parser.add_argument("--output", default=str(RESULTS / "latest.json"), help="the combined JSON")
    parser.add_argument(
        "--threads", type=int, help="torch threads of the scripts (OMP_NUM_THREADS; default: torch's own)"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in args.only:
        results[name], seconds[name] = run_script(name, mode, args.threads)
    combined: dict[str, Any] = {}
    if set(args.only) == set(SCRIPTS):
        combined = summary(results)
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    combined |= {
        "machine": machine,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": mode or "full",
        "wall_seconds": {name: round(s, 1) for name, s in seconds.items()}
        | {"total": round(time.perf_counter() - start, 1)},
        "details": results,
    }
    Path(args.output).write_text(json.dumps(combined, indent=2) + "\n")
    brief = {k: v for k, v in combined.items() if k != "details"}
    print(json.dumps(brief, indent=2))
    print(f"written: {args.output}", file=sys.stderr)
    return combined


if __name__ == "__main__":
    main()
