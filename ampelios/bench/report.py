"""The bench's report: the table printed and the JSON written."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

from ampelios.bench.harness import BenchOptions, Row, Workload
from ampelios.config import Settings


def relate(rows: list[Row]) -> None:
    """Set the one-event-per-message Ampelios rate as a percentage of the bare-Faust one
    (the issue's target: at least 85%), when both were measured."""
    by_id = {r.id: r for r in rows}
    single, ceiling = by_id.get("single"), by_id.get("ceiling.single")
    if single is None or ceiling is None or not single.events_per_s or not ceiling.events_per_s:
        return
    share = 100 * single.events_per_s / ceiling.events_per_s
    single.figures["percent_of_ceiling"] = share
    single.notes += f"; {share:.0f}% of bare Faust 1 event/msg (target >= 85%)"


def _number(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def format_table(rows: list[Row]) -> str:
    """The rows as an aligned text table; a failed row's notes start with its error."""
    header = ["phase", "messages", "events", "seconds", "events/s", "msgs/s", "notes"]
    lines = [
        [
            r.phase,
            _number(r.messages),
            _number(r.events),
            _number(r.seconds, 2),
            _number(r.events_per_s),
            _number(r.messages_per_s),
            f"FAILED: {r.error}; {r.notes}".rstrip("; ") if r.error else r.notes,
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
        for line in [header, *lines]
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def report_json(settings: Settings, options: BenchOptions, workload: Workload, rows: list[Row]) -> dict[str, Any]:
    """Every figure, with the machine and the workload it was measured on."""
    w, o = workload, options
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "nproc": len(os.sched_getaffinity(0)),
        "events": len(w.events),
        "distinct_events": w.distinct,
        "visitors": w.visitors,
        "partitions": settings.partitions,
        "replay_batch_events": settings.replay_batch_events,
        "replay_messages": len(w.batched),
        "single_events": len(w.singles),
        "rate": o.rate,
        "steady_seconds": o.steady_seconds,
        "soak_seconds": o.soak_seconds,
        "seed": o.seed,
        "phases": list(o.phases),
        "rows": {r.id: r.to_json() for r in rows},
    }
