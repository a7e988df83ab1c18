"""The ``ampelios`` command: help everywhere, generate, replay, and ``up`` twice in a row."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.services.processes import free_port
from ampelios.services.stack import http_json, wait_for_job, wait_until_reflected
from tests.integration.conftest import Workers, write_events

pytestmark = pytest.mark.integration

COMMANDS = ["up", "worker", "replay", "generate", "demo", "status"]


def ampelios(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")}
    command = [sys.executable, "-m", "ampelios", *args]
    return subprocess.run(command, env={**clean, **(env or {})}, capture_output=True, text=True)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command):
    result = ampelios(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    if command is None:
        assert all(c in result.stdout for c in COMMANDS)


def test_generate_is_deterministic_for_a_seed(tmp_path: Path):
    for name in ("a.csv", "b.csv"):
        assert ampelios("generate", str(tmp_path / name), "--events", "5000", "--seed", "4").returncode == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.csv").read_bytes().count(b"\n") == 5001
    assert ampelios("generate", str(tmp_path / "c.csv"), "--events", "5000", "--seed", "5").returncode == 0
    assert (tmp_path / "c.csv").read_bytes() != (tmp_path / "a.csv").read_bytes()


def test_replay_streams_a_file_into_a_running_worker_with_k_per_source(
    settings: Settings, workers: Workers, tmp_path: Path
):
    worker = workers.start(settings.with_(k_by_source={2: 3}))
    events = generate_events(4_000, seed=9, source_id=2)
    path = write_events(tmp_path / "site2.csv", events)
    result = ampelios("replay", str(path), "--source-id", "2", env=settings.to_env())
    assert result.returncode == 0, result.stderr
    assert "Sent 4000 events" in result.stdout
    stats = wait_until_reflected(worker.base_url, 2, timeout=120)
    assert stats["events"] == 4_000
    assert http_json("GET", f"{worker.base_url}/view?source_id=1")[0] == 404  # sources stay apart
    code, segments = http_json("GET", f"{worker.base_url}/view?source_id=2")
    assert code == 200 and len(segments) == 3 and sum(s["users"] for s in segments) == stats["visitors"]

    shown = ampelios("status", "--source-id", "2", env=settings.to_env())
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Site 2: 4,000 events from {stats['visitors']:,} visitors")
    assert all(s["label"] in shown.stdout and s["advice"] in shown.stdout for s in segments)
    missing = ampelios("status", "--source-id", "7", env=settings.to_env())
    assert missing.returncode == 1 and "site 7 has no segments yet" in missing.stderr
    nobody = ampelios("status", "--url", "http://127.0.0.1:9")
    assert nobody.returncode == 1 and "no Ampelios worker answers" in nobody.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run_up(state: Path, data: Path, web_port: int, stop: signal.Signals) -> tuple[str, list[int]]:
    """``ampelios up`` until /health answers, replay one file, send ``stop``; its output and ports."""
    env = {"AMPELIOS_STATE_DIR": str(state), "AMPELIOS_DATA_DIR": str(data), "AMPELIOS_WEB_PORT": str(web_port)}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")}
    log = state.parent / f"up-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        up = subprocess.Popen([sys.executable, "-m", "ampelios", "up"], env={**clean, **env}, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and "Running." not in log.read_text():
                assert up.poll() is None, log.read_text()
                time.sleep(0.2)
            base = f"http://127.0.0.1:{web_port}"
            assert http_json("GET", f"{base}/health") == (200, {"status": "ok"})
            code, answer = http_json("POST", f"{base}/trigger", {"source_id": 1, "events_path": "events.csv"})
            assert code == 202, answer
            assert wait_for_job(base, answer["job"], timeout=120)["state"] == "done"
            stats = wait_until_reflected(base, 1, timeout=120)
            up.send_signal(stop)
            assert up.wait(120) == 0, log.read_text()
        finally:
            if up.poll() is None:
                up.kill()
    text = log.read_text()
    ports = [int(p) for p in re.findall(r"(?:Broker|Database): +\S+://\S*?:(\d+)", text)]
    assert len(ports) == 2, text
    return text + f"\nSTATS {stats}", [web_port, *ports]


def test_up_runs_everything_stops_everything_and_starts_clean_the_second_time(tmp_path: Path):
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    write_events(data / "events.csv", generate_events(2_000, seed=3))
    for attempt, stop in ((1, signal.SIGINT), (2, signal.SIGTERM)):
        text, ports = _run_up(state, data, free_port(), stop)
        assert "STATS {'events': 2000" in text, text
        assert ("Starting clean" in text) == (attempt == 2), text
        assert "Stopped worker, broker and database." in text
        for port in ports:  # web server, broker and Postgres are gone
            assert not _listening(port), (port, text)
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert str(state) not in ps
        assert not any(f":{p} " in line or line.endswith(f":{p}") for line in ps.splitlines() for p in ports)
