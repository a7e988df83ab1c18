"""The ``replay`` phase: ``POST /trigger`` of the CSV until ``/stats`` counts every event with lag 0."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from ampelios.bench.harness import (
    DATA_FILE,
    SOURCE_ID,
    Bench,
    Reflection,
    Row,
    base_url,
    fresh_stack,
    stack_settings,
    wait_for_reflection,
    worker_figures,
)
from ampelios.bench.report import _number
from ampelios.core.events import write_csv
from ampelios.services.stack import (
    Stack,
    http_json,
    wait_for_job,
)


def replay_file(bench: Bench, stack: Stack) -> tuple[Reflection, dict[str, Any], float]:
    """``POST /trigger`` of the bench's CSV to the stack's worker; wait until ``/stats``
    counts every distinct event with lag 0: (what was seen, the job, seconds)."""
    base = base_url(stack)
    started = time.monotonic()
    code, answer = http_json("POST", f"{base}/trigger", {"source_id": SOURCE_ID, "events_path": DATA_FILE})
    if code != 202:
        raise RuntimeError(f"/trigger answered {code}: {answer}")
    seen = wait_for_reflection(base, bench.workload.distinct, started, bench.options.timeout)
    seconds = seen.reflected or time.monotonic() - started
    job = wait_for_job(base, answer["job"], bench.options.timeout) if seen.reflected is not None else {}
    return seen, job, seconds


def replay_stack(bench: Bench, phase: str) -> contextlib.AbstractContextManager[Stack]:
    """A fresh stack for ``phase`` with the bench's events written as its CSV."""
    workdir = bench.workdir(phase)
    settings = stack_settings(bench, workdir)
    with (settings.data_dir / DATA_FILE).open("wb") as f:
        write_csv(bench.workload.events, f)
    return fresh_stack(settings, workdir, bench.profile(phase))


def phase_replay(bench: Bench) -> list[Row]:
    """Ampelios end to end: the CSV through ``POST /trigger`` until ``/stats`` counts every
    distinct event and has nothing left to reflect (lag 0)."""
    w = bench.workload
    with replay_stack(bench, "replay") as stack:
        seen, job, seconds = replay_file(bench, stack)
        figures = {
            "reflected_events": seen.stats["events"],
            "expected_events": w.distinct,
            "counted_seconds": seen.counted,
            "visitors": seen.stats.get("visitors"),
            "job_state": job.get("state"),
            "rows_rejected": job.get("rows_rejected"),
            **worker_figures(stack),
            "stats_at_end": seen.stats,
        }
    rss, rocksdb = figures["peak_rss_mib"] or 0, figures["rocksdb_bytes"]
    notes = (
        f"trigger -> /stats lag 0 (all counted at {_number(seen.counted, 2)}s); "
        f"peak RSS {rss:.0f} MiB; RocksDB {rocksdb / 2**20:.1f} MiB"
    )
    row = Row(
        "replay", "Ampelios: replay end to end", len(w.batched), seen.stats["events"], seconds, notes, figures=figures
    )
    row.error = seen.problem(w.distinct, seconds)
    if row.error is None and job["state"] != "done":
        row.error = f"the replay job is {job['state']}: {job.get('error')}"
    return [row]
