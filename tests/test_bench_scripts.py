"""The benchmark scripts run and write the JSON keys `make bench` promises (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "bench"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402


def test_summary_has_the_promised_keys_and_judges_targets() -> None:
    results = {
        "inference": {"e2e_over_floor": 1.1, "speedup_vs_naive": 4.0, "speedup_vs_monai_default": 3.0},
        "training": {"step_over_floor": 1.2, "data_fraction_of_step": 0.1, "speedup_vs_naive": 2.0},
        "memory": {"peak_rss_over_volume": 3.0, "rss_growth_200": 0.01},
        "arithmetic": {"sgemm_gflops": 50.0, "networks": {"ronneberger_unet": {"gflops": 5.0}}},
    }
    summary = run_all.summary(results)
    assert set(summary["inference"]) >= {"e2e_over_floor", "speedup_vs_naive", "speedup_vs_monai_default"}
    assert "step_over_floor" in summary["training"]
    assert set(summary["memory"]) >= {"peak_rss_over_volume", "rss_growth_200"}
    targets = summary["targets"]
    assert targets["inference.e2e_over_floor"]["met"] is True
    assert targets["inference.speedup_vs_naive"]["met"] is False
    assert targets["training.step_over_floor"]["met"] is False
    assert targets["memory.peak_rss_over_volume"]["met"] is True
    assert targets["memory.rss_growth_200"]["met"] is True


def test_arithmetic_smoke_writes_json(tmp_path: Path) -> None:
    output = tmp_path / "arithmetic.json"
    command = [sys.executable, str(BENCH / "bench_arithmetic.py"), "--smoke", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True, cwd=REPO_ROOT)
    result = json.loads(output.read_text())
    assert {"machine", "sgemm_gflops", "networks", "ronneberger_slices_per_s_by_batch"} <= set(result)
    assert result["networks"]["ronneberger_unet"]["gflop_per_slice"] > 0
    assert "load_average_at_start" in result["machine"]
