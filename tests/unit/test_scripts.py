"""Benchmark scripts run at a tiny size (they print figures; nothing here asserts a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quality_prints_its_table_and_writes_json(tmp_path: Path):
    out = tmp_path / "quality.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_quality.py"), "--visitors", "2000", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "batch KMeans n_init=10" in result.stdout and "river KMeans" in result.stdout
    (report,) = json.loads(out.read_text())
    assert report["visitors"] > 1000 and set(report["methods"]) >= {"online", "seed: MiniBatchKMeans, unscaled"}
    assert sum(report["sizes"]) == report["visitors"]


def test_bench_drift_prints_delays_and_false_alarms_of_its_grid_and_writes_json(tmp_path: Path):
    out = tmp_path / "drift.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench_drift.py"), "--purchases", "2", "--seeds", "1"]
    result = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "flagged (median, slowest)" in result.stdout and "per source-year" in result.stdout
    reports = json.loads(out.read_text())
    assert {r["background"] for r in reports} == {"steady", "growth x10", "weekends 1/2", "one day x5", "shop"}
    assert all(r["purchases"] == 2.0 and r["seed"] == 1 for r in reports)
    drops = [r for r in reports if r["drop"]]
    assert len(drops) == 8 and all(r["delay"] is None or 0 < r["delay"] <= r["drop"][1] for r in drops)
