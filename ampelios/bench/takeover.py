"""The ``takeover`` phase: the worker SIGKILLed after a replay, and a new one on the same state."""

from __future__ import annotations

import time

from ampelios.bench.harness import Bench, Row, wait_for_reflection
from ampelios.bench.replay import replay_file, replay_stack
from ampelios.services.stack import (
    WorkerProcess,
    changelog_records_recovered,
)


def phase_takeover(bench: Bench) -> list[Row]:
    """After the replay, the worker is SIGKILLed and a new one started on its state
    directory: the seconds from that start until ``/health`` answers ok, and until
    ``/stats`` counts every event again with lag 0 (the row's time)."""
    w = bench.workload
    with replay_stack(bench, "takeover") as stack:
        replayed, _, _ = replay_file(bench, stack)
        if replayed.reflected is None:
            row = Row("takeover", "Ampelios: takeover after SIGKILL", 0, 0, None)
            row.error = f"the replay before the kill: {replayed.problem(w.distinct, bench.options.timeout)}"
            return [row]
        assert stack.worker is not None
        stack.worker.kill()
        started = time.monotonic()
        stack.worker = WorkerProcess(stack.settings, stack.worker_output).start(bench.options.timeout)
        healthy = time.monotonic() - started
        seen = wait_for_reflection(stack.worker.base_url, w.distinct, started, bench.options.timeout)
        seconds = seen.reflected or time.monotonic() - started
        recovered = changelog_records_recovered(stack.worker.base_url)
    figures = {
        "healthy_seconds": healthy,
        "reflected_events": seen.stats["events"],
        "changelog_records_recovered": recovered,
        "stats_at_end": seen.stats,
    }
    read_back = ", ".join(f"{table} {n:.0f}" for table, n in sorted(recovered.items()))
    notes = (
        f"SIGKILL after the replay, new worker: start -> /health ok {healthy:.2f}s -> every event "
        f"counted, lag 0; changelog records read back: {read_back}"
    )
    row = Row("takeover", "Ampelios: takeover after SIGKILL", 0, 0, seconds, notes, figures=figures)
    row.error = seen.problem(w.distinct, seconds)
    return [row]
