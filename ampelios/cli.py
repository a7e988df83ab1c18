"""The ``ampelios`` command. Settings come from ``AMPELIOS_*`` variables (see the README)."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ampelios.config import Settings, load_settings
from ampelios.core.events import CsvError, write_csv
from ampelios.core.generate import DAY_MS, WINDOW_DAYS, WINDOW_START_MS, Drop, Scenario, generate_events


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Ampelios: behaviour-based customer segments from browser events, continuously."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
def worker() -> None:
    """Run the Faust worker alone against the configured broker (AMPELIOS_BROKER) and
    database (AMPELIOS_DATABASE_URL). The same as ``faust -A ampelios.app worker``."""
    from faust.worker import Worker

    from ampelios.services import event_loop
    from ampelios.worker.app import create_pipeline

    event_loop.install()
    settings = load_settings()
    pipeline = create_pipeline(settings)
    Worker(pipeline.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


@main.command()
def up() -> None:
    """Start everything in the foreground: an embedded broker unless AMPELIOS_BROKER is
    set, an embedded Postgres unless AMPELIOS_DATABASE_URL is set, and a worker with its
    web server on AMPELIOS_WEB_PORT. Ctrl-C stops all of it."""
    from ampelios.services.stack import Stack, StackError, StopRequested, stop_on_signals

    settings = load_settings()
    try:
        with stop_on_signals(), Stack(settings) as stack:
            assert stack.worker is not None and stack.worker.process is not None
            _print_urls(stack.settings, stack.worker.base_url)
            click.echo("Running. Press Ctrl-C to stop.")
            code = stack.worker.process.wait()
            raise click.ClickException(f"the worker exited with code {code}; see its log above")
    except StopRequested:
        click.echo("Stopped worker, broker and database.")
    except (StackError, RuntimeError, TimeoutError) as exc:  # said in one line; the logs have the rest
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--source-id", default=1, show_default=True, type=click.IntRange(0, 2**31 - 1), help="Site the events belong to."
)
@click.option("--file-order", is_flag=True, help="Send rows in file order instead of event-time order.")
def replay(file: Path, source_id: int, file_order: bool) -> None:
    """Stream a CSV (Retailrocket schema) into the events topic of AMPELIOS_BROKER, or of
    the stack ``ampelios up`` runs on AMPELIOS_STATE_DIR."""
    from aiokafka.errors import KafkaError

    from ampelios.core.events import event_codes, read_csv
    from ampelios.ingest.replay import ReplayProgress, replay_parsed
    from ampelios.services.stack import RunningStack
    from ampelios.topology import Topology

    settings = load_settings()
    if settings.broker is None:
        running = RunningStack.find(settings.state_dir)
        if running is None:
            raise click.ClickException(
                f"no broker to replay to: no Ampelios stack runs on {settings.state_dir} "
                "(start `ampelios up`, or set AMPELIOS_BROKER)"
            )
        settings = settings.with_(broker=running.broker)
    click.echo(f"Reading {file} ...")
    try:
        parsed = read_csv(file, source_id, event_codes(settings.event_map))
    except CsvError as exc:
        raise click.ClickException(str(exc)) from None
    with click.progressbar(length=len(parsed.events), label="Replaying", show_pos=True) as bar:

        def on_progress(progress: ReplayProgress) -> None:
            bar.update(progress.sent - bar.pos)

        try:
            result = asyncio.run(
                replay_parsed(
                    settings.broker_url,
                    Topology.of(settings),
                    parsed,
                    source_id,
                    batch_events=settings.replay_batch_events,
                    in_time_order=not file_order,
                    on_progress=on_progress,
                )
            )
        except KafkaError as exc:
            raise click.ClickException(f"the broker at {settings.broker_url} cannot be used: {exc}") from None
    click.echo(
        f"Sent {result.sent} events in {result.messages} messages; rejected {result.rejected} "
        f"and ignored {result.ignored} of {result.rows} rows."
    )
    for reason in result.reasons.report(limit=5):
        example = reason["examples"][0]
        click.echo(f"  {reason['count']:,} x {reason['reason']} (e.g. {example['position']}: {example['raw'][:60]!r})")
    failure = result.all_rejected()
    if failure is not None:
        raise click.ClickException(failure)


@main.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--events", "n_events", default=100_000, show_default=True, type=click.IntRange(1), help="Number of events."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: the same seed gives the same file.")
@click.option(
    "--purchase-drop",
    metavar="START:END",
    help="Dates (YYYY-MM-DD, UTC) between which visitors buy less often, e.g. 2015-07-01:2015-08-01.",
)
@click.option(
    "--drop-factor",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0.0),
    help="How often they buy then, against before (0.1: a tenth as often).",
)
@click.option(
    "--growth",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help="Visitors on the last day / on the first.",
)
@click.option(
    "--weekend",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help="Visitors on a Saturday or Sunday / on a weekday.",
)
@click.option("--spike", "spikes", multiple=True, metavar="DATE:FACTOR", help="A day with FACTOR times the visitors.")
def generate(
    out: Path,
    n_events: int,
    seed: int,
    purchase_drop: str | None,
    drop_factor: float,
    growth: float,
    weekend: float,
    spikes: tuple[str, ...],
) -> None:
    """Write look-alike Retailrocket events (schema and marginals of the real data set),
    steady unless told how the site's traffic and buying move."""
    drops: tuple[Drop, ...] = ()
    if purchase_drop:
        try:
            start, end = (_utc_ms(d) for d in purchase_drop.split(":"))
        except ValueError:
            raise click.BadParameter("expected START:END dates, e.g. 2015-07-01:2015-08-01") from None
        drops = (Drop(start, end, drop_factor),)
    days: list[tuple[int, float]] = []
    for spike in spikes:
        try:
            date, factor = spike.split(":")
            days.append(((_utc_ms(date) - WINDOW_START_MS) // DAY_MS, float(factor)))
        except ValueError:
            raise click.BadParameter(f"--spike {spike}: expected DATE:FACTOR, e.g. 2015-06-10:5") from None
        if not 0 <= days[-1][0] < WINDOW_DAYS or days[-1][1] <= 0:
            raise click.BadParameter(f"--spike {spike}: a day of the window and a positive factor")
    scenario = Scenario(growth=growth, weekend=weekend, spikes=tuple(days), drops=drops)
    events = generate_events(n_events, seed=seed, scenario=scenario)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        write_csv(events, f)
    click.echo(f"Wrote {len(events)} events to {out}")


@main.command()
@click.option(
    "--events",
    "n_events",
    default=100_000,
    show_default=True,
    type=click.IntRange(1),
    help="Events to generate when the data file is absent.",
)
@click.option("--keep-running", is_flag=True, help="Keep the stack running after the replay until Ctrl-C.")
def demo(n_events: int, keep_running: bool) -> None:
    """The main job: generate look-alike data if AMPELIOS_DATA_DIR/events.csv is absent,
    start the stack, replay the file, wait until every event is reflected, print the
    segments and the HTTP URLs, and shut everything down."""
    from ampelios.services.demo import run_demo

    sys.exit(run_demo(load_settings(), n_events, keep_running))


@main.command()
@click.option("--source-id", default=1, show_default=True, type=click.IntRange(0, 2**31 - 1), help="The site.")
@click.option(
    "--url",
    help="The worker's web server [default: that of the stack `ampelios up` runs on AMPELIOS_STATE_DIR, "
    "else http://AMPELIOS_WEB_HOST:AMPELIOS_WEB_PORT].",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="Also print how well k = 2..10 segment the visitors now, and the k AMPELIOS_K=auto chooses.",
)
def status(source_id: int, url: str | None, evaluate: bool) -> None:
    """Print the segments of a running worker: labels, sizes, shares, what their members
    do and what to do about them."""
    from ampelios.services.report import k_report, segment_report, stats_line
    from ampelios.services.stack import RunningStack, http_json

    if url is None:
        settings = load_settings()
        running = RunningStack.find(settings.state_dir)
        url = running.web_url if running is not None else settings.web_url
    base = url.rstrip("/")

    def get(path: str) -> Any:
        try:
            code, answer = http_json("GET", base + path)
        except OSError as exc:
            raise click.ClickException(f"no Ampelios worker answers at {base} ({exc}); is it running?") from None
        if code == 404 and path.startswith(("/view", "/segments")):
            raise click.ClickException(f"site {source_id} has no segments yet: no event of it has been processed")
        if code != 200:
            raise click.ClickException(f"{base}{path} answered {code}: {answer.get('error')}")
        return answer

    stats = get(f"/stats?source_id={source_id}")
    segments = get(f"/view?source_id={source_id}")
    click.echo(stats_line(source_id, stats) + "\n")
    click.echo(segment_report(segments))
    if evaluate:
        click.echo("\n" + k_report(get(f"/segments/quality?source_id={source_id}")))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Measure each layer's throughput and the steady-state latency, side by side (see
    ``ampelios bench --help``)."""
    from ampelios.bench.run import main as bench_main

    bench_main.main(ctx.args, prog_name=ctx.command_path)


def _utc_ms(date: str) -> int:
    """A date (YYYY-MM-DD, UTC) in Unix ms; ValueError when it is none."""
    return round(datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp() * 1000)


def _print_urls(settings: Settings, base: str) -> None:
    click.echo(f"Broker:   {settings.broker_url}")
    click.echo(f"Database: {settings.database_url or '(none: history off)'}")
    paths = ("/", "/view?source_id=1", "/segments/{id}/members?source_id=1", "/visitors/{visitorid}?source_id=1")
    for path in (*paths, "/stats?source_id=1", "/trigger", "/health"):
        click.echo(f"HTTP:     {base}{path}")
