"""What one person across login costs: identifies merging anonymous journeys into users.

On the embedded stack, through the collector (``POST /v1/batch``, 500 calls a request, as
fast as the worker answers), two runs of the same ``--visitors`` anonymous visitors with
``--views`` product views each:

- ``plain``: only their views;
- ``with identifies``: their views, then for each an ``identify`` linking it to a user,
  so that every anonymous journey moves into a user's (a merge) -- one call in
  ``views + 1`` is an identify.

Each run is timed from its first request to ``/stats`` reflecting it (lag 0 and the
visitors it should count). Printed: events per second of each run, and merges per second
of the identifies alone (sent after the views are reflected). Run:

    .venv/bin/python scripts/bench_merges.py [--visitors 20000] [--views 3] [--active-days D]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ampelios.config import Settings
from ampelios.services.processes import free_port
from ampelios.services.stack import Stack, http_json

WRITE_KEY = "bench-key"
CALLS_PER_REQUEST = 500
START = datetime(2015, 6, 1, tzinfo=UTC)


def send(base: str, calls: list[dict[str, Any]]) -> None:
    for i in range(0, len(calls), CALLS_PER_REQUEST):
        body = {"batch": calls[i : i + CALLS_PER_REQUEST], "writeKey": WRITE_KEY}
        code, answer = http_json("POST", f"{base}/v1/batch", body)
        assert code == 200 and not answer["rejected"], answer


def reflected(base: str, source_id: int, visitors: int, timeout: float = 600) -> dict[str, Any]:
    """``/stats`` once nothing is left to process and it counts ``visitors``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, stats = http_json("GET", f"{base}/stats?source_id={source_id}")
        if code == 200 and stats["lag"] == 0 and stats["visitors"] == visitors:
            return stats
        time.sleep(0.1)
    raise TimeoutError(f"source {source_id} not reflected: {stats}")


def views(prefix: str, visitors: int, per_visitor: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "anonymousId": f"{prefix}-{v}",
            "event": "Product Viewed",
            "properties": {"product_id": str(i)},
            "timestamp": (START + timedelta(seconds=v, minutes=i)).isoformat(),
        }
        for v in range(visitors)
        for i in range(per_visitor)
    ]


def identifies(prefix: str, visitors: int) -> list[dict[str, Any]]:
    return [
        {"type": "identify", "anonymousId": f"{prefix}-{v}", "userId": f"{prefix}-user-{v}"} for v in range(visitors)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=20_000)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--active-days", type=float, default=None, help="AMPELIOS_ACTIVE_DAYS (names then expire)")
    args = parser.parse_args()
    n, k = args.visitors, args.views
    with tempfile.TemporaryDirectory(prefix="ampelios-bench-merges-") as root:
        settings = Settings(
            state_dir=Path(root) / "state",
            data_dir=Path(root) / "data",
            web_port=free_port(),
            write_keys={WRITE_KEY: 1},
            active_days=args.active_days,
        )
        figures: dict[str, Any] = {"visitors": n, "views": k}
        with Stack(settings) as stack:
            assert stack.worker is not None
            base = stack.worker.base_url.rstrip("/")
            # plain: views only
            started = time.monotonic()
            send(base, views("p", n, k))
            reflected(base, 1, n)
            figures["plain_events_per_s"] = round(n * k / (time.monotonic() - started))
            # with identifies: views, then each visitor identifies (a merge each)
            started = time.monotonic()
            send(base, views("m", n, k))
            reflected(base, 1, 2 * n)
            after_views = time.monotonic()
            send(base, identifies("m", n))
            reflected(base, 1, 2 * n)  # lag 0 again: each anonymous visitor gave way to its user
            done = time.monotonic()
            figures["with_identifies_events_per_s"] = round(n * k / (done - started))
            figures["merges_per_s"] = round(n / (done - after_views))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
