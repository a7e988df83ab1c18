"""``ampelios bench --phases year`` at a tiny size: what the stack keeps after every month
(its own file, so that the suite runs it beside the other bench tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_bench import bench

pytestmark = pytest.mark.integration


def test_a_tiny_year_measures_what_the_stack_keeps_after_every_month(tmp_path: Path, scratch: Path):
    """The year phase runs only when named, on the local Apache Kafka (here two of its
    runs: a 30-day window, and a lateness without one); after each month every figure is
    there, and the window holds fewer events."""
    out = tmp_path / "year.json"
    args = ("--events", "200", "--single-events", "10", "--months", "3", "--month-events", "300", "--phases", "year")
    result = bench(*args, "--year-runs", "window,lateness", "--json", str(out), tmpdir=scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"year-window", "year-lateness"}
    window, lateness = rows["year-window"]["months"], rows["year-lateness"]["months"]
    assert [m["month"] for m in window] == [m["month"] for m in lateness] == [1, 2, 3]
    for month in window + lateness:
        assert month["events_held"] <= month["events_sent"]
        for figure in ("rocksdb_live_bytes", "rocksdb_file_bytes", "changelog_bytes", "postgres_bytes"):
            assert month[figure] > 0, (figure, month)
        assert month["worker_rss_mib"] > 0 and month["recovery_seconds"] > 0
        # the active segments (all of a month that rolled none) are never compacted
        assert 0 <= month["changelog_compacted_bytes"] < month["changelog_bytes"]
        assert sum(month["postgres_bytes_by_table"].values()) < month["postgres_bytes"]
    assert window[0]["events_held"] == lateness[0]["events_held"]
    assert window[-1]["events_held"] < lateness[-1]["events_held"]
    assert list(scratch.iterdir()) == []
