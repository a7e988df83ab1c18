"""Benchmark scripts run at a tiny size (figures are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_model_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_model.py"), "--events", "3000", "--batch", "200"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "numpy SegmentModel" in result.stdout and "river KMeans" in result.stdout
