"""The HTTP API as an attacker or a careless client meets it: a bearer token on writes,
bounded bodies and parameters, JSON errors only, and the OpenAPI document as a contract
that schemathesis checks against a live worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ampelios.config import Settings
from ampelios.core.generate import generate_events
from ampelios.services.stack import WorkerProcess, http_json, wait_for_job
from tests.integration.conftest import Workers, write_events

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


@pytest.fixture
def guarded(workers: Workers, settings: Settings) -> WorkerProcess:
    write_events(settings.data_dir / "events.csv", generate_events(3_000, seed=3))
    return workers.start(settings.with_(api_token=TOKEN))


def test_writes_need_the_token_reads_do_not(guarded: WorkerProcess):
    base, body = guarded.base_url, {"source_id": 1, "events_path": "events.csv"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        code, answer = http_json("POST", f"{base}/trigger", body, headers=headers)
        assert code == 401 and "Authorization: Bearer" in answer["error"]
    code, answer = http_json("POST", f"{base}/trigger", body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert code == 202, answer
    assert http_json("GET", f"{base}/health") == (200, {"status": "ok"})
    assert http_json("GET", f"{base}/trigger/{answer['job']}")[0] == 200


def test_bodies_are_bounded_and_every_error_is_json(guarded: WorkerProcess):
    base, auth = guarded.base_url, {"Authorization": f"Bearer {TOKEN}"}
    huge = b'{"source_id": 1, "events_path": "' + b"x" * 100_000 + b'"}'
    code, answer = http_json("POST", f"{base}/trigger", huge, headers=auth)
    assert code == 413 and "at most 65536 bytes" in answer["error"]
    for body, words in [(b"{not json", "must be JSON"), (b"[1]", "JSON object"), (b"", "must be JSON")]:
        code, answer = http_json("POST", f"{base}/trigger", body, headers=auth)
        assert (code, words in answer["error"]) == (400, True), (body, answer)
    code, answer = http_json("DELETE", f"{base}/view?source_id=1")
    assert code == 405 and "error" in answer
    code, answer = http_json("GET", f"{base}/../../etc/passwd")
    assert code == 404 and "error" in answer


def test_the_api_keeps_its_openapi_contract(workers: Workers, settings: Settings, tmp_path: Path):
    """schemathesis generates requests from /openapi.json for every operation: no answer
    may be a 5xx, and every answer must match the documented status, type and schema."""
    events = generate_events(3_000, seed=5)
    write_events(settings.data_dir / "events.csv", events)
    worker = workers.start(settings.with_(api_token=TOKEN))
    code, answer = http_json(
        "POST",
        f"{worker.base_url}/trigger",
        {"source_id": 1, "events_path": "events.csv"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert code == 202 and wait_for_job(worker.base_url, answer["job"], timeout=300)["state"] == "done"
    document = http_json("GET", f"{worker.base_url}/openapi.json")[1]
    assert set(document["paths"]) >= {"/trigger", "/view", "/visitors/{visitorid}", "/history", "/stats"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{worker.base_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--header",
            f"Authorization: Bearer {TOKEN}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
