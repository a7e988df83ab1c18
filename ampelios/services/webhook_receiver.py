"""A webhook receiver for trying Ampelios's webhooks locally: the API doc, the benchmark
and the tests point subscriptions at it.

It listens on a free port of 127.0.0.1 in a thread, keeps every request (path, headers,
body, the status it answered, the time it arrived) and answers each path with the status
set for it in :attr:`WebhookReceiver.status` (200 unless set), so a test can take a
receiver down and bring it back. :meth:`bodies` verifies what it accepted with the
``standardwebhooks`` library, as a receiver should.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered
    at: float  # Unix seconds


class WebhookReceiver:
    """See the module docstring; a context manager that stops the server."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.status.get(self.path, 200)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Received(self.path, headers, body, status, time.time()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def attempts(self, path: str) -> list[Received]:
        """Every request to ``path``, in arrival order."""
        return [r for r in list(self.requests) if r.path == path]

    def bodies(self, path: str, secret: str) -> list[dict[str, Any]]:
        """The bodies ``path`` accepted (2xx), verified (signature and timestamp) and decoded."""
        return [Webhook(secret).verify(r.body, r.headers) for r in self.attempts(path) if r.status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
