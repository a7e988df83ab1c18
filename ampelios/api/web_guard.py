"""What a request must be before any view sees it: the worker is safe to leave running.

A worker on a laptop listens on 127.0.0.1, which every web page the user opens can reach
too. So, with the default settings:

- **Host** (no DNS rebinding): the ``Host`` header must name this worker as configured
  (``AMPELIOS_WEB_HOST``, ``localhost``, or a name in ``AMPELIOS_ALLOWED_HOSTS``; ``*``
  allows any), or be an IP address, which a rebinding page cannot send. Else 403.
- **Writes are JSON** (no cross-site request forgery): a POST, PUT, PATCH or DELETE must
  say ``Content-Type: application/json`` (else 415), which a page of another origin can
  only send after a CORS preflight, and a write whose ``Origin`` is another site that
  ``AMPELIOS_CORS_ORIGINS`` does not list is refused (403). A DELETE without a body may
  leave the type out: no form can send a DELETE, and a page only after a preflight. The
  collector (``/v1/*``) also takes ``text/plain``, as browser trackers send it to spare a
  preflight: it trusts the write key, not the browser, and a page of another origin is
  still refused unless ``AMPELIOS_CORS_ORIGINS`` lists it (the site's own).
- **CORS**: no origin is allowed unless ``AMPELIOS_CORS_ORIGINS`` lists it
  (:func:`cors_options`, Faust's ``web_cors_options``).
- **Connections**: a connection idle, or still sending its request line and headers, for
  :data:`IDLE_SECONDS` is closed; a request body must arrive within :data:`BODY_SECONDS`.
- **Bearer tokens**: :func:`authorized` reads ``Authorization: Bearer <token>`` with the
  scheme in any case, comparing the token in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from faust.web import ResourceOptions

from ampelios.config import Settings

IDLE_SECONDS = 15.0  # an idle connection, or one that has not sent its headers, is closed
BODY_SECONDS = 10.0  # to send a request body (at most 64 KiB)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What browser trackers add to their calls: analytics.js counts its retries; RudderStack's
# SDK names the visitor, the send time and its retries.
TRACKER_HEADERS = (
    "X-Retry-Count",
    "AnonymousId",
    "SentAt",
    "Rsa-Recovered",
    "Rsa-Retry-Attempt",
    "Rsa-Since-Last-Attempt",
    "Rsa-Since-First-Attempt",
    "Rsa-Retry-Reason",
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(status: int, message: str) -> web.Response:
    return web.Response(body=orjson.dumps({"error": message}), status=status, content_type="application/json")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_allowed(settings: Settings, host_header: str) -> bool:
    """Whether a request with this ``Host`` header is meant for this worker."""
    if "*" in settings.allowed_hosts:
        return True
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.lower().rstrip(".")
    names = {"localhost", settings.web_host.lower(), *(h.lower() for h in settings.allowed_hosts)}
    return host in names or _is_ip(host)


def authorized(header: str, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` as a bearer token (RFC 6750:
    the scheme in any case)."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def cors_options(settings: Settings) -> Mapping[str, ResourceOptions]:
    """Faust's ``web_cors_options``: the origins of ``AMPELIOS_CORS_ORIGINS`` may read and
    write with JSON and a bearer token; no other origin may."""
    return {
        origin: ResourceOptions(
            allow_credentials=False,
            expose_headers=(),
            allow_headers=("Content-Type", "Authorization", *TRACKER_HEADERS),
            max_age=600,
            allow_methods=("GET", "POST"),
        )
        for origin in settings.cors_origins
    }


def guard(settings: Settings) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware that checks every request as the module docstring says."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not host_allowed(settings, host):
            return _refuse(403, f"this worker does not serve the host {host[:80]!r} (AMPELIOS_ALLOWED_HOSTS)")
        if request.method in WRITES and request.match_info.http_exception is None:  # a route answers
            origin = request.headers.get("Origin")
            if origin is not None and origin not in (f"{request.scheme}://{host}", *settings.cors_origins):
                return _refuse(403, f"writes from the origin {origin[:80]!r} are not allowed (AMPELIOS_CORS_ORIGINS)")
            bodiless_delete = request.method == "DELETE" and not request.can_read_body
            tracker_text = request.path.startswith("/v1/") and request.content_type == "text/plain"
            if request.content_type != "application/json" and not (bodiless_delete or tracker_text):
                return _refuse(415, "the body must be JSON, sent with Content-Type: application/json")
        return await handler(request)

    return check


def connection_options() -> dict[str, Any]:
    """Options of aiohttp's connection handler: the idle (and header) timeout."""
    return {"keepalive_timeout": IDLE_SECONDS}
