"""The ``ceiling`` phase: a bare Faust agent that only counts the same messages (:mod:`ampelios.bench.bare_faust`)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ampelios.bench.harness import SHAPES, Bench, Row, fresh_broker, produce, shapes
from ampelios.services.processes import die_with_parent, stop_process


def phase_ceiling(bench: Bench) -> list[Row]:
    """A bare Faust agent that only counts: what the framework can deliver."""
    rows = []
    for shape, messages, n_events in shapes(bench):
        workdir = bench.workdir(f"ceiling-{shape}")
        with fresh_broker(workdir) as url:
            partitions = bench.settings.partitions
            produced = asyncio.run(produce(url, bench.topic, partitions, messages))
            report = run_bare_faust(url, bench.topic, partitions, len(messages), workdir, bench.options.timeout)
        label = f"ceiling: bare Faust, {SHAPES[shape]}"
        if "error" in report:
            rows.append(Row(f"ceiling.{shape}", label, len(messages), n_events, None, error=report["error"]))
            continue
        seconds = report["last"] - report["first"]
        wall = report["last"] - report["started"]
        rows.append(
            Row(
                f"ceiling.{shape}",
                label,
                len(messages),
                n_events,
                seconds,
                notes=f"first -> last message; {wall:.1f}s from process start",
                figures={"counted": report["count"], "wall_seconds": wall, "produce_seconds": produced},
            )
        )
    return rows


def run_bare_faust(
    url: str, topic: str, partitions: int, expected: int, workdir: Path, timeout: float
) -> dict[str, Any]:
    """Run :mod:`ampelios.bench.bare_faust` until it reports ``expected`` messages
    counted (or ``timeout`` passes, or it dies); its report plus ``started`` (wall clock
    at its start), or ``{"error": ...}``. The process is stopped by its PID."""
    report = workdir / "report.json"
    log_path = workdir / "bare-faust.log"
    command = [
        *(sys.executable, "-m", "ampelios.bench.bare_faust", "--broker", url, "--topic", topic),
        *("--partitions", str(partitions), "--datadir", str(workdir / "faust")),
        *("--expected", str(expected), "--report", str(report)),
    ]
    with log_path.open("ab") as log:
        started = time.time()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        try:
            while not report.exists():
                if process.poll() is not None:
                    return {"error": f"bare Faust exited with code {process.returncode}; see {log_path}"}
                if time.time() - started > timeout:
                    return {"error": f"bare Faust did not count {expected} messages within {timeout:.0f}s"}
                time.sleep(0.1)
        finally:
            stop_process(process, signal.SIGTERM, 30.0)
    return {**json.loads(report.read_bytes()), "started": started}
