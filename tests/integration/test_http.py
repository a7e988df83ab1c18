"""The HTTP API as an attacker or a careless client meets it: a bearer token on writes
(and on visitors when asked), no writes or reads from a web page of another site (host
check, JSON-only writes, CORS), connections that cannot be held open, bounded bodies and
parameters, JSON errors only, and the OpenAPI document as a contract that schemathesis
checks against a live worker."""

from __future__ import annotations

import http.client
import json
import socket
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


def request(base: str, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, dict, dict[str, str]]:
    """One request with exactly these headers (``Host`` included when given): status,
    JSON body, response headers."""
    host, port = base.split("//")[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.startswith(b"{") else {}, dict(response.headers)
    finally:
        connection.close()


def test_a_web_page_of_another_site_can_neither_write_nor_read_through_rebinding(guarded: WorkerProcess):
    base = guarded.base_url
    port = base.rsplit(":", 1)[1]
    auth = f"Bearer {TOKEN}"
    body = json.dumps({"source_id": 1, "events_path": "events.csv"}).encode()
    json_type = "application/json"
    code, answer, _ = request(base, "GET", "/view?source_id=1", Host=f"rebound.example:{port}")
    assert code == 403 and "does not serve the host 'rebound.example" in answer["error"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1"):
        assert request(base, "GET", "/health", Host=host)[0] == 200, host
    # a form or fetch() without a preflight can send text/plain, never application/json
    code, answer, _ = request(base, "POST", "/trigger", body, Authorization=auth, **{"Content-Type": "text/plain"})
    assert code == 415 and "Content-Type: application/json" in answer["error"]
    code, answer, _ = request(
        base, "POST", "/trigger", body, Authorization=auth, Origin="http://shop.example", **{"Content-Type": json_type}
    )
    assert code == 403 and "origin 'http://shop.example' are not allowed" in answer["error"]
    code, _, headers = request(base, "GET", "/view?source_id=1", Origin="http://shop.example")
    assert "Access-Control-Allow-Origin" not in headers  # no origin may read (AMPELIOS_CORS_ORIGINS unset)
    for scheme in ("Bearer", "bearer", "BEARER"):  # the scheme is case-insensitive (RFC 6750)
        same_site = {"Origin": f"http://127.0.0.1:{port}", "Content-Type": json_type}
        code, answer, _ = request(base, "POST", "/trigger", body, Authorization=f"{scheme} {TOKEN}", **same_site)
        assert code == 202, (scheme, answer)


def test_a_connection_that_never_finishes_its_request_is_closed(guarded: WorkerProcess):
    host, port = guarded.base_url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=120) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
        assert slow.recv(1024) == b""  # closed by the worker (after web_guard.IDLE_SECONDS)


def test_the_token_can_protect_visitors_and_chosen_origins_may_read(workers: Workers, settings: Settings):
    write_events(settings.data_dir / "events.csv", generate_events(2_000, seed=4))
    worker = workers.start(
        settings.with_(api_token=TOKEN, protect_visitors=True, cors_origins=("https://shop.example",))
    )
    base, auth = worker.base_url, {"Authorization": f"Bearer {TOKEN}"}
    code, answer = http_json("POST", f"{base}/trigger", {"source_id": 1, "events_path": "events.csv"}, headers=auth)
    assert code == 202 and wait_for_job(base, answer["job"], timeout=120)["state"] == "done"
    visitor = int(generate_events(2_000, seed=4).visitorid[0])
    for path in (f"/visitors/{visitor}?source_id=1", "/view?source_id=1&verbose=true"):
        code, answer = http_json("GET", base + path)
        assert code == 401 and "Authorization: Bearer" in answer["error"], path
        assert http_json("GET", base + path, headers=auth)[0] == 200, path
    assert http_json("GET", f"{base}/view?source_id=1")[0] == 200  # counts and centroids stay open
    code, _, headers = request(base, "GET", "/view?source_id=1", Origin="https://shop.example")
    assert code == 200 and headers.get("Access-Control-Allow-Origin") == "https://shop.example"
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    code, _, headers = request(
        base, "OPTIONS", "/trigger", **preflight, **{"Access-Control-Request-Headers": "content-type"}
    )
    assert code == 200 and headers.get("Access-Control-Allow-Origin") == "https://shop.example"


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
