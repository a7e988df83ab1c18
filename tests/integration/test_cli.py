"""The ``ampelios`` command: help everywhere, generate, replay and status (``up``: test_local_service)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.services.stack import http_json, wait_until_reflected
from tests.integration.conftest import Workers, replay, write_events

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


def history(base: str, source_id: int) -> list[dict]:
    return http_json("GET", f"{base}/history?source_id={source_id}&clock=wall")[1].get("snapshots", [])


def test_replay_streams_a_file_into_a_running_worker_with_k_per_source(
    settings: Settings, workers: Workers, tmp_path: Path
):
    worker = workers.start(settings.with_(k_by_source={2: 3, 3: None}))
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

    # source 3 has AMPELIOS_K=auto: the replay's last settle chose k by the documented rule
    write_events(settings.data_dir / "site3.csv", generate_events(30_000, seed=3, source_id=3))
    replay(worker.base_url, "site3.csv", source_id=3)
    deadline = time.monotonic() + 120
    while not any(s["reason"].startswith("replay") for s in history(worker.base_url, 3)):
        assert time.monotonic() < deadline, "no snapshot at the end of the replay"
        time.sleep(0.2)
    code, quality = http_json("GET", f"{worker.base_url}/segments/quality?source_id=3")
    visitors = http_json("GET", f"{worker.base_url}/stats?source_id=3")[1]["visitors"]
    assert code == 200 and quality["setting"] == "auto" and quality["visitors"] == visitors
    chosen = quality["chosen"]
    assert [q["k"] for q in quality["qualities"]] == list(range(2, 11))
    assert all(q["actionable"] for q in quality["qualities"] if q["k"] == chosen)
    assert not any(q["actionable"] for q in quality["qualities"] if q["k"] > chosen)
    segments = http_json("GET", f"{worker.base_url}/view?source_id=3")[1]
    assert len(segments) == quality["k"] == chosen
    evaluated = ampelios("status", "--source-id", "3", "--evaluate", env=settings.to_env())
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"AMPELIOS_K=auto chooses k = {chosen}" in evaluated.stdout and f"{chosen} *" in evaluated.stdout
