"""Several workers of one app: which worker holds which partition, and asking the others.

Each worker holds the journeys of the events partitions assigned to it. Faust's partition
assignor shares, with every assignment, the URL of each worker's web server and the
partitions it was given (``AMPELIOS_WEB_HOST`` and ``AMPELIOS_WEB_PORT`` make that URL),
so any worker can answer any request: a visitor look-up is forwarded to the worker that
holds the visitor, and counts are gathered from all of them. With one worker there is no
one else to ask and nothing leaves the process.

A forwarded request carries :data:`FORWARDED` so that it is never forwarded again: two
workers that disagree about an assignment (for the moment a rebalance takes) answer 503
rather than pass a request back and forth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

FORWARDED = "X-Ampelios-Forwarded"
PEER_TIMEOUT = aiohttp.ClientTimeout(total=10)


class PeerUnavailable(Exception):
    """Another worker did not answer (it may be stopping, or a rebalance is under way)."""


def workers_of(app: Any, changelog_topic: str) -> dict[str, list[int]]:
    """URL of every worker -> the partitions of ``changelog_topic`` it holds (as of the
    last assignment; empty before the first)."""
    holders = app.assignor.table_metadata(changelog_topic)
    return {str(url): sorted(parts.get(changelog_topic, ())) for url, parts in holders.items()}


def holder_of(app: Any, changelog_topic: str, partition: int) -> str | None:
    """URL of the worker holding ``partition`` of the topic (``None``: not known now)."""
    for url, partitions in workers_of(app, changelog_topic).items():
        if partition in partitions:
            return url
    return None


def own_url(app: Any) -> str:
    return str(app.conf.canonical_url)


async def ask(app: Any, url: str, path_qs: str, token: str | None = None) -> tuple[int, Any]:
    """GET ``path_qs`` (path and query) from the worker at ``url`` (with the API token, when
    there is one, for reads it protects): status and JSON body."""
    headers = {FORWARDED: "1", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        async with app.http_client.get(url.rstrip("/") + path_qs, headers=headers, timeout=PEER_TIMEOUT) as r:
            return r.status, orjson.loads(await r.read())
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise PeerUnavailable(f"worker {url} did not answer {path_qs}: {exc!r:.200}") from None


STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


async def relay(app: Any, url: str, path_qs: str, token: str | None = None) -> AsyncIterator[bytes]:
    """GET ``path_qs`` from the worker at ``url`` and yield its body as it arrives (for
    answers too large to hold); PeerUnavailable if it does not answer 200."""
    headers = {FORWARDED: "1", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        async with app.http_client.get(url.rstrip("/") + path_qs, headers=headers, timeout=STREAM_TIMEOUT) as r:
            if r.status != 200:
                raise PeerUnavailable(f"worker {url} answered {r.status} to {path_qs}: {(await r.read())[:200]!r}")
            async for piece in r.content.iter_chunked(2**16):
                yield piece
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PeerUnavailable(f"worker {url} did not answer {path_qs}: {exc!r:.200}") from None
