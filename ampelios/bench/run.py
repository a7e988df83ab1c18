"""``ampelios bench``: the command, which runs the chosen phases in order and reports them."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from ampelios.bench.ceiling import phase_ceiling
from ampelios.bench.collector import phase_collector
from ampelios.bench.harness import DEFAULT_EVENTS, DEFAULT_PHASES, PHASES, Bench, BenchOptions, Row, Workload
from ampelios.bench.limit import phase_limit
from ampelios.bench.replay import phase_replay
from ampelios.bench.report import format_table, relate, report_json
from ampelios.bench.single import phase_single
from ampelios.bench.soak import phase_soak
from ampelios.bench.steady import phase_steady
from ampelios.bench.takeover import phase_takeover
from ampelios.bench.webhooks import phase_webhooks
from ampelios.bench.year import RUNS as YEAR_RUNS
from ampelios.bench.year import phase_year
from ampelios.config import Settings, load_settings
from ampelios.services.stack import (
    StopRequested,
    stop_on_signals,
)

PHASE_RUNNERS: dict[str, Callable[[Bench], list[Row]]] = {
    "limit": phase_limit,
    "ceiling": phase_ceiling,
    "replay": phase_replay,
    "takeover": phase_takeover,
    "single": phase_single,
    "steady": phase_steady,
    "collector": phase_collector,
    "webhooks": phase_webhooks,
    "soak": phase_soak,
    "year": phase_year,
}


def run_bench(settings: Settings, options: BenchOptions) -> int:
    """Run the chosen phases in order, print the table and write the JSON report; 0 when
    every measurement finished, 1 when one did not, 130 when interrupted (everything
    started is stopped either way)."""
    rows: list[Row] = []
    workload: Workload | None = None
    code = 0
    try:
        with stop_on_signals():
            click.echo(f"Generating {options.events:,} events (seed {options.seed}) ...", err=True)
            workload = Workload.generate(
                options.events,
                min(options.single_events, options.events),
                options.seed,
                settings.partitions,
                settings.replay_batch_events,
            )
            with tempfile.TemporaryDirectory(prefix="ampelios-bench-") as root:
                bench = Bench(settings, options, workload, Path(root))
                for phase in options.phases:
                    click.echo(f"[{phase}] ...", err=True)
                    try:
                        measured = PHASE_RUNNERS[phase](bench)
                    except Exception as exc:  # one broken phase must not cost the others
                        measured = [Row(phase, phase, 0, 0, None, error=repr(exc))]
                    rows += measured
                    click.echo("\n".join(format_table(measured).splitlines()[2:]), err=True)
    except StopRequested:
        click.echo("Interrupted: every broker, Postgres and worker started is stopped.", err=True)
        code = 130
    if workload is None:
        return code
    relate(rows)
    click.echo(
        f"\n{len(workload.events):,} events of {workload.visitors:,} visitors, {settings.partitions} partitions, "
        f"{len(workload.batched):,} replay messages of up to {settings.replay_batch_events:,} events; "
        f"{len(os.sched_getaffinity(0))} CPUs\n"
    )
    click.echo(format_table(rows))
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report_json(settings, options, workload, rows), indent=2) + "\n")
    return code or (1 if any(r.error for r in rows) else 0)


def _among(known: Sequence[str]) -> Callable[[click.Context, click.Parameter, str], tuple[str, ...]]:
    """A callback reading comma-separated names of ``known``, in their order."""

    def read(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
        names = {p.strip() for p in value.split(",") if p.strip()}
        unknown = sorted(names - set(known))
        if unknown or not names:
            raise click.BadParameter(f"choose among {', '.join(known)}; got {value!r}")
        return tuple(p for p in known if p in names)

    return read


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--events", "n_events", default=DEFAULT_EVENTS, show_default=True, type=click.IntRange(1), help="Events (N)."
)
@click.option(
    "--single-events",
    default=200_000,
    show_default=True,
    type=click.IntRange(1),
    help="The first M events are also sent one per message (limit, ceiling, single).",
)
@click.option(
    "--rate",
    default=5000.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Steady and collector phases: events per second.",
)
@click.option(
    "--steady-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Steady and collector phases: seconds of sending.",
)
@click.option(
    "--soak-seconds",
    default=3600.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Soak phase: seconds of producing.",
)
@click.option("--months", default=12, show_default=True, type=click.IntRange(1), help="Year phase: months of traffic.")
@click.option(
    "--month-events",
    default=37_000,
    show_default=True,
    type=click.IntRange(100),
    help="Year phase: events per month (one per message).",
)
@click.option(
    "--year-runs",
    default=",".join(YEAR_RUNS),
    show_default=True,
    callback=_among(list(YEAR_RUNS)),
    help="Year phase: comma-separated runs (what the state keeps).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated events.")
@click.option(
    "--phases",
    default=",".join(DEFAULT_PHASES),
    show_default=True,
    callback=_among(PHASES),
    help=f"Comma-separated phases to run (always in this order; {' and '.join(PHASES[-2:])} only when named).",
)
@click.option(
    "--timeout",
    default=900.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a measurement waits for its messages to be consumed or its events reflected.",
)
@click.option(
    "--probe-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Steady phase: seconds to wait for probes after producing stops.",
)
@click.option(
    "--receiver-down-seconds",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Webhooks phase: seconds the receiver answers 503 from the start of sending.",
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write every figure here."
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Record the worker with py-spy in each Ampelios phase; speedscope profiles go here.",
)
def main(
    n_events: int,
    single_events: int,
    rate: float,
    steady_seconds: float,
    soak_seconds: float,
    months: int,
    month_events: int,
    year_runs: tuple[str, ...],
    seed: int,
    phases: tuple[str, ...],
    timeout: float,
    probe_timeout: float,
    receiver_down_seconds: float,
    json_path: Path | None,
    profile_dir: Path | None,
) -> None:
    """Measure, side by side on this machine, raw aiokafka consumption, a bare Faust agent
    and Ampelios (replay end to end, one event per message, and latency at a steady rate),
    each on a freshly started embedded broker; print a table (and JSON with --json)."""
    options = BenchOptions(
        events=n_events,
        single_events=single_events,
        rate=rate,
        steady_seconds=steady_seconds,
        soak_seconds=soak_seconds,
        months=months,
        month_events=month_events,
        year_runs=year_runs,
        seed=seed,
        phases=phases,
        timeout=timeout,
        probe_timeout=probe_timeout,
        receiver_down_seconds=receiver_down_seconds,
        json_path=json_path,
        profile_dir=profile_dir,
    )
    sys.exit(run_bench(load_settings(), options))
