"""``ampelios demo``: the main job, end to end, as a user would run it by hand.

Generate data if ``events.csv`` is missing, start the stack, ``POST /trigger``, follow
``/trigger/{job}`` and ``/stats`` until every event is reflected (lag 0), print the
segments of ``/view`` and the URLs, stop everything.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import click

from ampelios.config import Settings
from ampelios.core.events import write_csv
from ampelios.core.generate import generate_events
from ampelios.services.report import alerts_report, segment_report
from ampelios.services.stack import (
    Stack,
    StopRequested,
    WorkerProcess,
    http_json,
    stop_on_signals,
    wait_for_job,
    wait_until_reflected,
)

SOURCE_ID = 1
DATA_FILE = "events.csv"


def run_demo(settings: Settings, n_events: int, keep_running: bool) -> int:
    data = settings.data_dir / DATA_FILE
    if not data.exists():
        click.echo(f"{data} is absent: generating {n_events} look-alike events ...")
        data.parent.mkdir(parents=True, exist_ok=True)
        with data.open("wb") as f:
            write_csv(generate_events(n_events, seed=0), f)
    started = time.monotonic()
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    click.echo(f"Starting broker, Postgres and worker (logs in {logs}) ...")
    try:
        with (
            stop_on_signals(),
            (logs / "worker.log").open("ab") as worker_log,
            Stack(settings, worker_output=worker_log) as stack,
        ):
            assert stack.worker is not None
            click.echo(f"Ready after {time.monotonic() - started:.1f}s.")
            replay_and_report(stack.worker, data, started)
            if keep_running:
                click.echo("Running until Ctrl-C ...")
                with contextlib.suppress(StopRequested):
                    signal.pause()
            click.echo("Shutting down ...")
    except StopRequested:
        click.echo("Interrupted: broker, Postgres and worker are stopped.")
        return 130
    click.echo(f"Done in {time.monotonic() - started:.1f}s.")
    return 0


def replay_and_report(worker: WorkerProcess, data: Path, started: float) -> None:
    """POST /trigger, follow the job until every event is reflected, print the segments.

    A state directory that already has the site's events (an earlier demo or ``up``: the
    local broker and the worker keep them) is shown as it is, not replayed again."""
    base = worker.base_url
    code, stats = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
    if code == 200 and stats["events"]:
        click.echo(f"Site {SOURCE_ID} already has {stats['events']:,} events in this state directory: showing them")
        click.echo("(remove the state directory, AMPELIOS_STATE_DIR, to replay from scratch).")
        report(worker, stats, None, started)
        return
    click.echo(f"Replaying {data} ...")
    status, answer = http_json("POST", f"{base}/trigger", {"source_id": SOURCE_ID, "events_path": data.name})
    if status != 202:
        raise click.ClickException(f"/trigger answered {status}: {answer}")
    with click.progressbar(length=1, label="Replaying", show_pos=True) as bar:

        def show(status: dict[str, Any]) -> None:
            bar.length = max(1, status["events"])
            bar.update(status["rows_sent"] - bar.pos)

        job = wait_for_job(base, answer["job"], on_status=show)
    if job["state"] == "failed":
        raise click.ClickException(f"the replay failed: {job['error']}")
    report(worker, wait_until_reflected(base, SOURCE_ID, stored=True), job["rows_rejected"], started)


def report(worker: WorkerProcess, stats: dict[str, Any], rejected: int | None, started: float) -> None:
    """Print the counts, the segments of ``/view`` and the URLs to read them at."""
    base = worker.base_url
    _, segments = http_json("GET", f"{base}/view?source_id={SOURCE_ID}")
    _, sample = http_json("GET", f"{base}/view?source_id={SOURCE_ID}&verbose=true&limit=1")
    visitor = next((s["users"][0] for s in sample or [] if s["users"]), "{visitorid}")
    replayed = f" ({rejected} rows rejected)" if rejected is not None else ""
    click.echo(
        f"\nReflected {stats['events']} events of {stats['visitors']} visitors{replayed} in "
        f"{time.monotonic() - started:.1f}s since start; worker peak memory {worker.peak_memory_mb() or 0:.0f} MiB.\n"
    )
    click.echo(segment_report(segments))
    code, alerts = http_json("GET", f"{base}/alerts?source_id={SOURCE_ID}")
    if code == 200:
        click.echo("\n" + alerts_report(alerts["alerts"]))
    click.echo("\nServed at:")
    for path in (
        "/  (the dashboard)",
        "/view?source_id=1",
        "/segments/0/members?source_id=1&format=csv",
        f"/visitors/{visitor}?source_id=1",
        "/history?source_id=1",
        "/alerts?source_id=1",
        "/stats?source_id=1",
    ):
        click.echo(f"  {base}{path}")
