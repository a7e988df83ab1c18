"""``ampelios up`` as a service: its state survives every way it can end, it is found by
``replay`` and ``status``, refused a second time in one line, and leaves nothing behind
when it is SIGKILLed."""

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
from ampelios.services.broker import bootstrap_servers
from ampelios.services.processes import free_port, reachable
from ampelios.services.stack import RUNNING_FILE, RunningStack, http_json, wait_until_reflected
from tests.integration.conftest import replay, write_events

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


def leftovers(pids: list[int], addresses: list[str]) -> list[object]:
    """The processes still alive and the ``host:port`` addresses still listening (a
    killed process's threads may hold its sockets a moment after it is a zombie)."""
    listening = [a for a in addresses if reachable(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1]), timeout=1.0)]
    return [pid for pid in pids if alive(pid)] + listening


def start_up(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], RunningStack]:
    """``ampelios up`` in the background, once it says it runs; and its record."""
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "ampelios", "up"], env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 120
    while b"Running." not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(log.read_text())
        time.sleep(0.2)
    running = RunningStack.find(Path(env["AMPELIOS_STATE_DIR"]))
    assert running is not None and running.pid == process.pid
    return process, running


def answers(base: str, visitor: int) -> dict[str, object]:
    """What a user reads of the stack: counts, segments, one visitor, the history."""
    paths = ["/stats?source_id=1", "/view?source_id=1", f"/visitors/{visitor}?source_id=1", "/history?source_id=1"]
    return {path: http_json("GET", base + path) for path in paths}


def test_state_survives_every_way_up_ends_and_goes_on_exactly_once(tmp_path: Path):
    """Ctrl-C, SIGTERM, a SIGKILL of the whole process tree: each time the next ``up`` on
    the same state directory answers as the last one did, without a replay, and counts
    the next file's events once."""
    state, data = tmp_path / "state", tmp_path / "data"
    data.mkdir()
    files = [write_events(data / f"events-{n}.csv", generate_events(n, seed=n)) for n in (2_000, 1_000, 500, 300)]
    visitor = int(generate_events(2_000, seed=2_000).visitorid[0])
    env = clean_env(AMPELIOS_STATE_DIR=str(state), AMPELIOS_DATA_DIR=str(data), AMPELIOS_WEB_PORT=str(free_port()))
    before: dict[str, object] | None = None
    total = 0
    for i, (ending, file) in enumerate(zip(["SIGINT", "SIGTERM", "SIGKILL", "SIGINT"], files, strict=True)):
        process, running = start_up(env, tmp_path / f"up-{i}.log")
        children = children_of(process.pid)
        try:
            assert running.broker.startswith("kafka://")  # the local broker keeps its log on disk
            if before is not None:  # once what a kill left unconfirmed is sent again (and ignored)
                wait_until_reflected(running.web_url, 1, stored=True)
                after = answers(running.web_url, visitor)
                assert after == before, [
                    (path, before[path], answer) for path, answer in after.items() if answer != before[path]
                ]
            replay(running.web_url, file.name)
            total += int(file.name.split("-")[1].split(".")[0])
            assert wait_until_reflected(running.web_url, 1, stored=True)["events"] == total
            before = answers(running.web_url, visitor)
            assert before[f"/visitors/{visitor}?source_id=1"][0] == 200
        finally:
            if ending == "SIGKILL":
                for pid in [process.pid, *children]:
                    os.kill(pid, signal.SIGKILL)
                process.wait()
            else:
                process.send_signal(getattr(signal, ending))
                assert process.wait(60) == 0, (tmp_path / f"up-{i}.log").read_text()
        broker = bootstrap_servers(running.broker)
        database = running.database_url.rsplit("@", 1)[1].split("/")[0] if running.database_url else ""
        addresses = [running.web_url.split("//")[1], broker, database]
        deadline = time.monotonic() + 30
        while leftovers(children, addresses) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not leftovers(children, addresses), (ending, running)
    # Nothing that looks like an error and is not: no probe of a starting server, no unknown
    # role. (What a stop or a kill ends is logged, truly, and not looked for here.)
    log = (state / "logs" / "postgres.log").read_text()
    assert "does not exist" not in log and "starting up" not in log and "not yet accepting" not in log


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
    assert running is not None and running.pid == process.pid and running.broker.startswith("kafka://")

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


def test_the_local_stack_script_prints_its_figures_at_a_tiny_size():
    script = Path(__file__).resolve().parents[2] / "scripts" / "local_stack.py"
    args = ["--events", "2000", "--replays", "1", "--local-broker", "tansu"]
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    starts = ["first start", "replay 1 of 2,000 events", "Ctrl-C: stopped", "start after Ctrl-C", "start after SIGKILL"]
    assert len(lines) == len(starts) and all(map(str.startswith, lines, starts)), lines
    assert "same /stats: False" in lines[-1]  # Tansu forgets; the default local broker does not
