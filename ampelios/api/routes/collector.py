"""The collector: Segment-style tracking calls from a site's tracker, on the server or in the
browser, and what Segment's browser library (analytics.js) fetches from its CDN.

A server-side library posts to ``/v1/track``, ``/v1/page``, ``/v1/identify`` and
``/v1/batch``; analytics.js posts to ``/v1/<first letter of the call's type>``. A site that
loads analytics.js with Segment's snippet points the snippet's CDN at a worker, which
serves the library's build (vendored, ``scripts/vendor_analytics_next.sh``) and the
settings that point the library back at the same worker (docs/integrations.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

import orjson
from aiohttp import web
from faust.web import Request

from ampelios.api.context import Api
from ampelios.api.contract import (
    BROWSER_CALLS,
    BrowserCallPath,
    BundlePath,
    CollectorAnswer,
    Dropped,
    LibrarySettings,
    RejectedCall,
    RudderSource,
    SegmentBatch,
    SegmentCall,
    SegmentIntegration,
    SourceConfig,
    SourceConfigQuery,
    WriteKeyPath,
)
from ampelios.api.http import HttpError, Routes, json_body
from ampelios.core.collect import MAX_BATCH_BYTES, MAX_CALL_BYTES
from ampelios.ingest import collector

routes = Routes()

LIBRARY = Path(__file__).resolve().parents[2] / "web" / "static" / "vendor" / "analytics-next"
JAVASCRIPT = "application/javascript; charset=utf-8"
BUNDLE_CACHE = "public, max-age=31536000, immutable"  # a chunk's name holds its content's hash
LIBRARY_CACHE = "public, max-age=300"  # the library and its settings, as Segment's CDN keeps them
ANSWERED = "what became of each call, once the broker has the events"
_ERRORS = {
    400: "not JSON, a call over 32 KB or a batch over 500 KB, or the call was rejected",
    401: "the write key (the Basic auth user, or writeKey) is not one of AMPELIOS_WRITE_KEYS",
}


async def _collect(api: Api, request: Request, kind: str | None) -> tuple[int, CollectorAnswer]:
    """Collect one request's calls (``kind``: every call's type; ``None``: a batch, each
    call says) and answer once the broker has the events. The body is Segment's call, read
    call by call by the core (:mod:`ampelios.core.collect`), which says why it rejects one."""
    limit = MAX_CALL_BYTES if kind is not None else MAX_BATCH_BYTES
    body = await json_body(request, limit, too_large=400)  # Segment answers 400
    try:
        got = await collector.accept(api.p, request.headers.get("Authorization", ""), body, kind)
    except collector.CollectorRefused as exc:
        raise HttpError(exc.status, str(exc)) from None
    rejected = [RejectedCall(index=int(r.position), reason=r.reason) for r in got.rejections]
    return 200, CollectorAnswer(success=True, accepted=len(got.events), ignored=got.ignored, rejected=rejected)


def _declare(kind: str) -> None:
    async def collect(api: Api, request: Request) -> tuple[int, CollectorAnswer]:
        """Segment-style tracking calls -> events (:mod:`ampelios.ingest.collector`)."""
        return await _collect(api, request, None if kind == "batch" else kind)

    routes.post(
        f"/v1/{kind}",
        f"Segment-style {kind} call{'s' if kind == 'batch' else ''} from a site's tracker",
        body=SegmentBatch if kind == "batch" else SegmentCall,
        answers={200: (ANSWERED, CollectorAnswer)},
        errors=(400, 401, 403, 408, 415),
        error_meanings=_ERRORS,
        needs_state=False,
        security="writeKey",
    )(collect)


for _kind in (*collector.KINDS, "batch"):
    _declare(_kind)


@routes.post(
    "/v1/m",
    "The metrics Segment's browser library reports about itself: answered and dropped",
    body=SegmentCall,
    answers={200: ("dropped", Dropped)},
    errors=(400, 403, 408, 415),
    needs_state=False,
)
async def library_metrics(api: Api, request: Request) -> tuple[int, Dropped]:
    """Nothing to collect (the settings this worker serves turn the library's metrics off)."""
    await json_body(request, MAX_CALL_BYTES, too_large=400)
    return 200, Dropped(success=True)


@routes.post(
    "/v1/{call}",
    "A call from Segment's browser library (analytics.js), at the path it posts to",
    description=(
        "analytics.js posts each call to /v1/ and the first letter of its type (t, p, i, a, g, s; "
        "b for a batch), with its write key as the Basic auth user, as text/plain. Answered as "
        "/v1/track, /v1/page, /v1/identify and /v1/batch answer; alias, group and screen calls "
        "are counted as ignored."
    ),
    path_params=BrowserCallPath,
    body=SegmentCall,
    answers={200: (ANSWERED, CollectorAnswer)},
    errors=(400, 401, 403, 408, 415),
    error_meanings=_ERRORS,
    needs_state=False,
    security="writeKey",
)
async def browser_call(api: Api, request: Request, path: BrowserCallPath) -> tuple[int, CollectorAnswer]:
    """analytics.js's calls -> events, as the HTTP API's endpoints take them."""
    kind = BROWSER_CALLS[path.call]
    return await _collect(api, request, None if kind == "batch" else kind)


def _source_key(api: Api, write_key: str) -> str:
    if write_key not in api.p.settings.write_keys:
        raise HttpError(404, f"no source has the write key {write_key[:80]!r} (AMPELIOS_WRITE_KEYS)")
    return write_key


@routes.get(
    "/v1/projects/{write_key}/settings",
    "The settings Segment's browser library fetches: its calls go to this worker",
    path_params=WriteKeyPath,
    answers={200: ("the library's settings", LibrarySettings)},
    errors=(404,),
    needs_state=False,
)
async def library_settings(api: Api, request: Request, path: WriteKeyPath) -> tuple[int, LibrarySettings]:
    """Settings pointing the Segment.io destination at the host (and scheme) the request
    came to, or behind a proxy at its ``X-Forwarded-Host`` and ``X-Forwarded-Proto``."""
    key = _source_key(api, path.write_key)
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    segment = SegmentIntegration(
        apiKey=key,
        apiHost=f"{host}/v1",
        protocol="https" if scheme == "https" else "http",
        unbundledIntegrations=[],
        addBundledMetadata=True,
    )
    enabled = {"__default": {"enabled": True, "integrations": {}}}
    return 200, LibrarySettings(
        integrations={"Segment.io": segment},
        plan={"track": enabled, "identify": enabled, "group": enabled},
        edgeFunction={},
        analyticsNextEnabled=True,
        middlewareSettings={},
        enabledMiddleware={},
        metrics={"sampleRate": 0, "host": f"{host}/v1"},
        legacyVideoPluginsEnabled=False,
        remotePlugins=[],
    )


@routes.get(
    "/sourceConfig/",
    "The source configuration RudderStack's JavaScript SDK fetches: its calls go to this worker",
    query=SourceConfigQuery,
    answers={200: ("the source's configuration", SourceConfig)},
    errors=(401, 404),
    needs_state=False,
)
async def source_config(api: Api, request: Request, query: SourceConfigQuery) -> tuple[int, SourceConfig]:
    """The configuration of the source of the write key (the query's, or the Basic auth
    user), with no destination of its own: the SDK sends every call to its data plane URL."""
    try:
        key = query.writeKey or collector.write_key_of(request.headers.get("Authorization", ""), {})
    except collector.CollectorRefused as exc:
        raise HttpError(exc.status, str(exc)) from None
    key = _source_key(api, key or "")
    source_id = str(api.p.settings.write_keys[key])
    source = RudderSource(
        id=source_id,
        name=f"source {source_id}",
        writeKey=key,
        workspaceId="ampelios",
        enabled=True,
        config={},
        destinations=[],
    )
    return 200, SourceConfig(isHosted=False, source=source)


@functools.cache
def _library() -> bytes:
    return (LIBRARY / "standalone.js").read_bytes()


@functools.cache
def _bundles() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (LIBRARY / "bundles").glob("*.js")}


@routes.get(
    "/analytics.js/v1/{write_key}/analytics.min.js",
    "Segment's browser library (analytics-next, vendored), as Segment's CDN serves it to the snippet",
    path_params=WriteKeyPath,
    answers={200: ("the library, with the write key in it", {"application/javascript": str})},
    errors=(404,),
    needs_state=False,
)
async def library(api: Api, request: Request, path: WriteKeyPath) -> web.Response:
    """The library with its write key written in, as the CDN writes it."""
    literal = orjson.dumps(_source_key(api, path.write_key))[1:-1]  # inside the build's "..."
    body = _library().replace(b"__WRITE_KEY__", literal, 1)
    return web.Response(body=body, headers={"Content-Type": JAVASCRIPT, "Cache-Control": LIBRARY_CACHE})


@routes.get(
    "/analytics-next/bundles/{bundle}",
    "A chunk of the browser library, which the library loads from its CDN when it needs it",
    path_params=BundlePath,
    answers={200: ("the chunk", {"application/javascript": str})},
    errors=(404,),
    needs_state=False,
)
async def bundle(api: Api, request: Request, path: BundlePath) -> web.Response:
    """One chunk of the vendored build, by its name."""
    found = _bundles().get(path.bundle)
    if found is None:
        raise HttpError(404, f"the library has no chunk {path.bundle[:80]!r}")
    return web.Response(body=found, headers={"Content-Type": JAVASCRIPT, "Cache-Control": BUNDLE_CACHE})
