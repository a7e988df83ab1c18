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


def test_bench_drift_prints_delays_and_false_alarms_and_writes_json(tmp_path: Path):
    out = tmp_path / "drift.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench_drift.py"), "--events", "30000", "--seeds", "1"]
    result = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "drop flagged" in result.stdout and "steady files with any alert" in result.stdout
    reports = json.loads(out.read_text())
    assert [r["active_days"] for r in reports] == [None, 14.0]
    assert all(r["events"] == 30_000 and r["steady_files"] == 1 for r in reports)
