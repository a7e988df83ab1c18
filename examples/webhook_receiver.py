"""A receiver of Ampelios's segment webhooks, with nothing but the standard library.

It verifies every delivery (Standard Webhooks: HMAC-SHA256 of ``id.timestamp.body`` with
the subscription's secret, and a timestamp within five minutes), handles each
``webhook-id`` once (a retry of a delivery it already handled is answered 204 again), and
prints who entered and who left which segment. Run it, then subscribe it:

    WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py 8000

Answer 2xx only once a delivery is safely handled: anything else (or no answer within
10 s) makes Ampelios send it again, with backoff, until it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

TOLERANCE_SECONDS = 300


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The delivery's JSON when ``secret`` signed it less than five minutes ago; else
    ValueError (or KeyError for a missing header)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        raise ValueError("the timestamp is too far from now")
    signed = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(signed).decode()
    signatures = [s.partition(",")[2] for s in headers["webhook-signature"].split()]
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise ValueError("no signature matches")
    return json.loads(body)


def handle(delivery: dict[str, Any]) -> None:
    """What a CRM or an email tool would do; here, print it."""
    if delivery["type"] == "members":  # the segment's members when the subscription began
        print(f"{len(delivery['visitors'])} members of {delivery['label']!r}")
    for change in delivery.get("changes", []):  # then every move, in order per visitor
        who = change["original_id"] or change["visitorid"]  # the site's own id when it was collected
        print(f"{who} {change['action']}s {change['label']!r}")


def main() -> None:
    secret = os.environ["WEBHOOK_SECRET"]
    handled: set[str] = set()  # keep it in your database in real life

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                delivery = verify(secret, self.headers, body)
            except (KeyError, ValueError) as exc:
                self.send_error(400, str(exc))
                return
            if self.headers["webhook-id"] not in handled:
                handle(delivery)
                handled.add(self.headers["webhook-id"])
            self.send_response(204)
            self.end_headers()

    HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()


if __name__ == "__main__":
    main()
