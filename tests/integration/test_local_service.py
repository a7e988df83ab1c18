"""``ampelios up`` as a service: found by ``replay`` and ``status``, refused a second time in
one line, leaving nothing behind when it is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ampelios.core.generate import generate_events
from ampelios.services.processes import free_port
from ampelios.services.stack import RUNNING_FILE, RunningStack, wait_until_reflected
from tests.integration.conftest import write_events

pytestmark = pytest.mark.integration


def clean_env(**env: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")}, **env}


def ampelios(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ampelios", *args], env=env, capture_output=True, text=True)


def children_of(pid: int) -> list[int]:
    """Every process whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    """``ampelios up`` on a fresh state directory, running (killed at teardown if need be)."""
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    env = clean_env(AMPELIOS_STATE_DIR=str(state), AMPELIOS_DATA_DIR=str(data), AMPELIOS_WEB_PORT=str(free_port()))
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "ampelios", "up"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while RunningStack.find(state) is None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield process, env, tmp_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(60)


def test_replay_and_status_find_the_running_stack_and_a_second_up_is_refused_in_one_line(up):
    process, env, tmp_path = up
    running = RunningStack.find(Path(env["AMPELIOS_STATE_DIR"]))
    assert running is not None and running.pid == process.pid and running.broker.startswith("tansu://")

    events = write_events(tmp_path / "events.csv", generate_events(3_000, seed=12))
    replayed = ampelios("replay", str(events), env=env)  # no AMPELIOS_BROKER: the stack's
    assert replayed.returncode == 0, replayed.stderr
    assert wait_until_reflected(running.web_url, 1, timeout=120)["events"] == 3_000
    shown = ampelios("status", env=env)  # no --url: the stack's
    assert shown.returncode == 0 and shown.stdout.startswith("Site 1: 3,000 events"), shown.stderr

    again = ampelios("up", env=env)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"Error: Ampelios is already running on {env['AMPELIOS_STATE_DIR']}: "
        f"pid {process.pid}, web at {running.web_url}"
    )
    elsewhere = clean_env(AMPELIOS_STATE_DIR=str(tmp_path / "other"), AMPELIOS_WEB_PORT=env["AMPELIOS_WEB_PORT"])
    taken = ampelios("up", env=elsewhere)
    assert taken.returncode == 1 and len(taken.stderr.strip().splitlines()) == 1
    assert f"the web port {env['AMPELIOS_WEB_PORT']} on 127.0.0.1 is in use" in taken.stderr
    nothing = ampelios("replay", str(events), env=clean_env(AMPELIOS_STATE_DIR=str(tmp_path / "other")))
    assert nothing.returncode == 1 and "no Ampelios stack runs on" in nothing.stderr


def test_a_sigkilled_up_leaves_no_process_behind_and_the_next_up_starts(up):
    process, env, tmp_path = up
    children = children_of(process.pid)
    assert len(children) == 3  # broker, Postgres, worker
    process.kill()
    process.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]
    state = Path(env["AMPELIOS_STATE_DIR"])
    assert RunningStack.find(state) is None and not (state / RUNNING_FILE).exists()  # the stale record went

    log = tmp_path / "up-again.log"
    with log.open("wb") as out:
        again = subprocess.Popen([sys.executable, "-m", "ampelios", "up"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while b"Running." not in log.read_bytes():
            assert again.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(60) == 0, log.read_text()


@pytest.mark.parametrize("port", ["0", "70000"])
def test_a_web_port_out_of_range_is_refused_before_anything_starts(tmp_path: Path, port: str):
    result = ampelios("up", env=clean_env(AMPELIOS_STATE_DIR=str(tmp_path / "s"), AMPELIOS_WEB_PORT=port))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "AMPELIOS_WEB_PORT must be" in result.stderr
    assert not (tmp_path / "s").exists()
