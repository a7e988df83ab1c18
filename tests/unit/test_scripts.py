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
