"""The framework's ceiling for ``ampelios bench``: a bare Faust app that only counts.

One agent reads a raw-bytes topic that already holds the messages (from the earliest
offset, in a consumer group of its own) and counts them, with the consumer settings
Ampelios's own app uses. When it has counted ``--expected`` messages it writes a JSON
report ``{"count": n, "first": t0, "last": t1}`` (``time.time()`` of its first and last
message) to ``--report``, atomically, and goes on running until it is stopped::

    python -m ampelios.bench.bare_faust --broker tansu://127.0.0.1:9092 --topic events \\
        --partitions 8 --datadir /tmp/bare --expected 552 --report /tmp/bare/report.json
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import faust
import orjson
from faust.worker import Worker

import ampelios.services.broker  # noqa: F401  (registers the tansu:// transport)
from ampelios.services import event_loop
from ampelios.services.broker import MAX_MESSAGE_BYTES, session_timeout_seconds

APP_ID = "ampelios-bench-bare"


def create_app(broker: str, topic: str, partitions: int, datadir: Path, expected: int, report: Path) -> faust.App:
    """The counting app; it writes ``report`` once it has seen ``expected`` messages."""
    app = faust.App(
        APP_ID,
        broker=broker,
        datadir=str(datadir),
        topic_partitions=partitions,
        topic_replication_factor=1,
        web_enabled=False,
        # As Ampelios's app (ampelios/worker/app.py), so that only the agent's work differs.
        broker_rebalance_timeout=10,
        broker_session_timeout=session_timeout_seconds(broker),
        broker_heartbeat_interval=1,
        broker_commit_interval=1.0,
        consumer_max_fetch_size=MAX_MESSAGE_BYTES,
        processing_guarantee="at_least_once",
        logging_config=None,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def count(stream: Any) -> None:
        n, first = 0, 0.0
        async for _ in stream.events():
            n += 1
            if n == 1:
                first = time.time()
            if n == expected:
                partial = report.with_suffix(".partial")
                partial.write_bytes(orjson.dumps({"count": n, "first": first, "last": time.time()}))
                partial.replace(report)

    return app


@click.command()
@click.option("--broker", required=True, help="Broker URL (kafka:// or tansu://).")
@click.option("--topic", required=True, help="Topic to count (it must exist).")
@click.option("--partitions", required=True, type=click.IntRange(1), help="Partitions of the topic.")
@click.option("--datadir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Faust's data dir.")
@click.option("--expected", required=True, type=click.IntRange(1), help="Messages to count before reporting.")
@click.option("--report", required=True, type=click.Path(dir_okay=False, path_type=Path), help="JSON report to write.")
def main(broker: str, topic: str, partitions: int, datadir: Path, expected: int, report: Path) -> None:
    """Count the messages of TOPIC with a bare Faust agent; report when EXPECTED are counted."""
    event_loop.install()  # the loop Ampelios's worker runs on
    app = create_app(broker, topic, partitions, datadir, expected, report)
    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
