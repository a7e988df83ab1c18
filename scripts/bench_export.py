"""Whole segments out: how fast and in how much memory a worker streams a segment's members.

Starts the local stack (embedded Tansu broker, Postgres, one worker) in a temporary
directory, replays ``--events`` generated events (the Retailrocket size by default, about
1.4M visitors), then downloads the largest segment from ``GET
/segments/{id}/members`` as CSV, as NDJSON and page by page (JSON, ``limit`` 10,000),
sampling the worker's resident memory every 0.1 s. Prints one line per format: members,
seconds, members per second, MiB sent, and the worker's RSS before and at its peak.

    .venv/bin/python scripts/bench_export.py [--events 2756101] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from ampelios.config import Settings
from ampelios.core.events import write_csv
from ampelios.core.generate import generate_events
from ampelios.services.processes import free_port
from ampelios.services.stack import Stack, http_json, wait_for_job, wait_until_reflected


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


class PeakMemory:
    """The highest RSS of a process while the block runs, sampled every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.before = self.peak = rss_mib(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.every):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


def stream(url: str) -> tuple[int, int]:
    """Lines and bytes of the answer at ``url``, read as they arrive."""
    lines = size = 0
    with urllib.request.urlopen(url, timeout=600) as response:
        while piece := response.read(2**16):
            lines += piece.count(b"\n")
            size += len(piece)
    return lines, size


def pages(url: str) -> tuple[int, int]:
    """Members and bytes of every page of the listing at ``url``."""
    members = size = 0
    after = ""
    while True:
        with urllib.request.urlopen(url + (f"&after={after}" if after else ""), timeout=600) as response:
            body = response.read()
        page = json.loads(body)
        members, size = members + len(page["members"]), size + len(body)
        after = page["next"]
        if after is None:
            return members, size


def measure(base: str, pid: int, segment: dict[str, Any]) -> list[dict[str, Any]]:
    path = f"{base}/segments/{segment['id']}/members?source_id=1"
    rows = []
    for name, read, url in (
        ("csv", stream, f"{path}&format=csv"),
        ("ndjson", stream, f"{path}&format=ndjson"),
        ("json pages of 10,000", pages, f"{path}&limit=10000"),
    ):
        with PeakMemory(pid) as memory:
            started = time.perf_counter()
            lines, size = read(url)
            seconds = time.perf_counter() - started
        members = lines - 1 if name == "csv" else lines  # the CSV's header line
        rows.append(
            {
                "format": name,
                "members": members,
                "expected": segment["users"],
                "seconds": seconds,
                "members_per_s": members / seconds,
                "mib": size / 2**20,
                "worker_rss_mib_before": memory.before,
                "worker_rss_mib_peak": memory.peak,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_756_101)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ampelios-export-") as root:
        data = Path(root) / "data"
        data.mkdir()
        with (data / "events.csv").open("wb") as f:
            write_csv(generate_events(args.events, seed=args.seed), f)
        settings = Settings(state_dir=Path(root) / "state", data_dir=data, web_port=free_port(), local_broker="tansu")
        with Stack(settings) as stack:
            assert stack.worker is not None and stack.worker.process is not None
            base = stack.worker.base_url
            code, job = http_json("POST", f"{base}/trigger", {"source_id": 1, "events_path": "events.csv"})
            assert code == 202, job
            assert wait_for_job(base, job["job"], timeout=3600)["state"] == "done"
            stats = wait_until_reflected(base, 1, timeout=3600, stored=True)  # the sink done: the export alone
            segment = max(http_json("GET", f"{base}/view?source_id=1")[1], key=lambda s: s["users"])
            rows = measure(base, stack.worker.process.pid, segment)
    print(f"{stats['events']:,} events of {stats['visitors']:,} visitors; segment {segment['id']} ({segment['label']})")
    print(f"{'format':<22} {'members':>9} {'seconds':>8} {'members/s':>10} {'MiB':>7} {'worker RSS before/peak':>23}")
    for r in rows:
        memory = f"{r['worker_rss_mib_before']:.0f} / {r['worker_rss_mib_peak']:.0f} MiB"
        print(
            f"{r['format']:<22} {r['members']:>9,} {r['seconds']:>8.2f} {r['members_per_s']:>10,.0f} "
            f"{r['mib']:>7.1f} {memory:>23}"
        )
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "segment": segment, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["members"] == r["expected"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
