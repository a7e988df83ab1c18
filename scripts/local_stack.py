"""Measure ``ampelios up`` as a user runs it: start time, memory, restarts, repeated replays.

Runs ``ampelios up`` on a fresh state directory in a temporary directory, replays a
generated file through ``POST /trigger`` ``--replays`` times, then stops the stack with
Ctrl-C and starts it again, and SIGKILLs the whole process tree and starts it again,
checking each time that ``/stats`` answers as before. Prints one line per figure:
seconds until ``up`` says ``Running.``, and the resident memory (RSS) of each of its
processes idle and after each replay. Run:

    .venv/bin/python scripts/local_stack.py [--events 100000] [--replays 3] [--local-broker kafka]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ampelios.core.events import write_csv
from ampelios.core.generate import generate_events
from ampelios.services.processes import free_port
from ampelios.services.stack import RunningStack, http_json, wait_for_job, wait_until_reflected


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024


def processes(up: int) -> dict[str, int]:
    """The children of ``up`` by role: broker, postgres, worker."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != up:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        role = "worker" if b"worker" in cmdline else "postgres" if b"postgres" in cmdline else "broker"
        found[role] = int(stat.parent.name)
    return found


def memory(up: int) -> str:
    rss = {role: rss_mib(pid) for role, pid in sorted(processes(up).items())}
    return ", ".join(f"{role} {mib:.0f}" for role, mib in rss.items()) + f"; total {sum(rss.values()):.0f} MiB"


STARTED: list[subprocess.Popen[bytes]] = []  # every `ampelios up` started, stopped at the end whatever happens


def stop_leftovers() -> None:
    for up in STARTED:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(90)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()


def start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], RunningStack, float]:
    began = time.monotonic()
    with log.open("wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "ampelios", "up"], env=env, stdout=out, stderr=out)
    STARTED.append(up)
    while b"Running." not in log.read_bytes():
        if up.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.05)
    running = RunningStack.find(Path(env["AMPELIOS_STATE_DIR"]))
    assert running is not None
    return up, running, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--replays", type=int, default=3)
    parser.add_argument("--local-broker", choices=["kafka", "tansu"], default="kafka")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ampelios-local-") as tmp:
        try:
            data = Path(tmp, "data")
            data.mkdir()
            with (data / "events.csv").open("wb") as f:
                write_csv(generate_events(args.events, seed=0), f)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")}
            env |= {
                "AMPELIOS_STATE_DIR": str(Path(tmp, "state")),
                "AMPELIOS_DATA_DIR": str(data),
                "AMPELIOS_WEB_PORT": str(free_port()),
                "AMPELIOS_LOCAL_BROKER": args.local_broker,
            }
            up, running, seconds = start(env, Path(tmp, "up-1.log"))
            print(f"first start (fresh state directory): {seconds:.1f} s; RSS idle: {memory(up.pid)}")
            for n in range(1, args.replays + 1):
                replay = {"source_id": 1, "events_path": "events.csv"}
                code, answer = http_json("POST", f"{running.web_url}/trigger", replay)
                assert code == 202, answer
                began = time.monotonic()
                assert wait_for_job(running.web_url, answer["job"])["state"] == "done"
                stats = wait_until_reflected(running.web_url, 1, stored=True)
                print(
                    f"replay {n} of {args.events:,} events reflected and stored in {time.monotonic() - began:.1f} s "
                    f"({stats['events']:,} in all); RSS: {memory(up.pid)}"
                )
            before = http_json("GET", f"{running.web_url}/stats?source_id=1")
            up.send_signal(signal.SIGINT)
            began = time.monotonic()
            up.wait()
            print(f"Ctrl-C: stopped in {time.monotonic() - began:.1f} s")
            up, running, seconds = start(env, Path(tmp, "up-2.log"))
            same = http_json("GET", f"{running.web_url}/stats?source_id=1") == before
            print(f"start after Ctrl-C: {seconds:.1f} s, same /stats: {same}; RSS idle: {memory(up.pid)}")
            for pid in [up.pid, *processes(up.pid).values()]:
                os.kill(pid, signal.SIGKILL)
            up.wait()
            up, running, seconds = start(env, Path(tmp, "up-3.log"))
            same = http_json("GET", f"{running.web_url}/stats?source_id=1") == before
            idle = memory(up.pid)
            print(f"start after SIGKILL of every process: {seconds:.1f} s, same /stats: {same}; RSS idle: {idle}")
            up.send_signal(signal.SIGINT)
            up.wait()
        finally:  # before the directory goes
            stop_leftovers()


if __name__ == "__main__":
    main()
