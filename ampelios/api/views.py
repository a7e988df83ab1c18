"""HTTP views, served by the worker's Faust web server (aiohttp); JSON via orjson.

=========================  ============================================================
endpoint                   answer
=========================  ============================================================
GET  /                     the dashboard (HTML; its files under ``/static/``)
POST /trigger              202 ``{"job", "status_url"}``: replay a CSV of the data dir
GET  /trigger/{job}        the job: state (running/done/failed), rows sent, rejected
GET  /view                 per segment: id, label, users, share, centroid, and in plain
                           words summary, advice and action
GET  /segments/quality      how well k = 2..10 segment the visitors, and the k auto chooses
GET  /segments/{id}/members every member of a segment with its features: paged JSON, or the
                           whole segment as CSV or NDJSON
GET  /visitors/{id}        one visitor's journey, features, segment, why it is there, and
                           its transitions (``{id}``: ``user:<userId>`` or
                           ``anonymous:<anonymousId>`` for collected visitors)
GET  /history              snapshots of the segments over event or wall time
GET  /alerts               shifts of a source's signals (drift alerts) and their recoveries
GET  /stats                events, visitors, rejected, ignored, forwarded, lag (records not yet
                           reflected), sink_lag (records not yet in Postgres)
GET  /rejections           why rows were rejected: count per reason, with a few examples
GET  /metrics              Prometheus metrics (text format)
GET  /files                the CSV files of the data directory a replay can read
GET  /health               ``{"status": "ok"}``
GET  /openapi.json         the OpenAPI document of all of these (:mod:`.openapi`)
POST /v1/track|page|...    Segment-style tracking calls (``identify``, ``batch`` too):
                           events from a site's tracker (:mod:`.collector`)
GET|POST /webhooks         webhook subscriptions: list them, or subscribe a URL to a
                           source's segment membership (:mod:`.webhooks`)
GET|DELETE /webhooks/{id}  one subscription; delete it
GET  /webhooks/{id}/deliveries  the last deliveries of a subscription, from every worker
=========================  ============================================================

Errors are ``{"error": "..."}`` with status 400 (bad request), 401 (``/trigger`` without
the bearer token ``AMPELIOS_API_TOKEN``, when that is set), 404 (unknown), 405, 413 (a
body over 64 KiB) or 503 (the worker is still recovering its tables after a start or
rebalance, or Postgres is unavailable: retry); never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from aiokafka.structs import TopicPartition
from faust.web import Request, Response, View

from ampelios import internals
from ampelios.api.members import (
    CONTENT_TYPES,
    CSV_HEADER,
    FORMATS,
    MemberCursor,
    MemberPages,
    first_members,
    read_members,
)
from ampelios.api.openapi import MAX_BODY_BYTES, MAX_MEMBERS, MAX_USER_LIMIT, openapi_document
from ampelios.api.web_guard import BODY_SECONDS, authorized, connection_options, guard
from ampelios.api.webhooks import Webhooks
from ampelios.config import AUTO
from ampelios.core.collect import MAX_BATCH_BYTES, MAX_CALL_BYTES, visitor_id
from ampelios.core.events import MAX_SOURCE_ID, UNKNOWN_SOURCE
from ampelios.core.explain import why
from ampelios.core.journeys import JourneyState
from ampelios.core.k_choice import K_RULE, choose_k, evaluate
from ampelios.core.labels import action, advice, summary
from ampelios.core.model import SegmentModel
from ampelios.core.partitioning import partition_for, visitor_key
from ampelios.core.rejections import MAX_REASONS, RejectionSummary
from ampelios.core.webhooks import Subscription, SubscriptionRefused
from ampelios.ingest import collector
from ampelios.ingest.jobs import PathMissing, PathRefused, ReplayJob, data_files, resolve_data_path, start_job
from ampelios.processors.journey_store import read_journey
from ampelios.processors.segment_owner import stored_population
from ampelios.runtime.cluster import FORWARDED, PeerUnavailable, ask, holder_of, own_url, relay, workers_of
from ampelios.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ampelios.runtime.pipeline import Pipeline, snapshot_request
from ampelios.sinks.history import HistoryUnavailable

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"  # the dashboard's files

DEFAULT_USER_LIMIT = 100
DEFAULT_MEMBERS = 1000  # members per page of /segments/{id}/members
MODEL_WAIT_POLLS = 20  # a replay job waits at most 10 s after lag 0 for its source's first model
DEFAULT_REASONS = 20


class StreamCut(Exception):
    """A streamed answer failed after it began: the connection is cut, so that the client
    sees an incomplete transfer rather than a short file."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(view: View, obj: Any, status: int = 200) -> Response:
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_UTC_Z)
    return view.bytes(body, content_type="application/json", status=status)


def _moment(request: Request, name: str) -> datetime | None:
    """A query parameter as a UTC time: ISO 8601 (``2015-06-01``, ``2015-06-01T12:00Z``)
    or Unix milliseconds."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        if raw.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
        moment = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise HttpError(400, f"{name} must be an ISO 8601 time or Unix milliseconds, got {raw!r:.40}") from None


def _int(raw: Any, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+\.0*", raw):  # 7.0 is the integer 7, as in JSON Schema
        raw = raw.partition(".")[0]
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise HttpError(400, f"{name} must be an integer, got {raw!r:.40}") from None
    if type(raw) is bool or not lo <= value <= hi:
        raise HttpError(400, f"{name} must be an integer in {lo}..{hi}, got {raw!r:.40}")
    return value


def _visitor(raw: str) -> int:
    """A visitor id, or a collected visitor by its original id: ``user:<userId>`` or
    ``anonymous:<anonymousId>`` (:func:`ampelios.core.collect.visitor_id`)."""
    kind, sep, original = raw.partition(":")
    if sep and kind in ("user", "anonymous") and original:
        return visitor_id(kind, original)
    return _int(raw, "visitorid")


def _source_id(request: Request, lowest: int = 0) -> int:
    if "source_id" not in request.query:
        raise HttpError(400, "source_id is required, e.g. ?source_id=1")
    return _int(request.query["source_id"], "source_id", lowest, MAX_SOURCE_ID)


def _flag(request: Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise HttpError(400, f"{name} must be true or false, got {raw!r:.40}")
    return raw in ("true", "1")


def _authorize(request: Request, token: str | None) -> None:
    if token is not None and not authorized(request.headers.get("Authorization", ""), token):
        raise HttpError(401, "this endpoint needs the header Authorization: Bearer $AMPELIOS_API_TOKEN")


async def _json_body(request: Request, limit: int = MAX_BODY_BYTES, too_large: int = 413) -> dict[str, Any]:
    """The request's JSON object body, at most ``limit`` bytes (else status ``too_large``)."""
    if (request.content_length or 0) > limit:
        raise HttpError(too_large, f"the body must be at most {limit} bytes")
    try:
        raw = await asyncio.wait_for(request.content.read(limit + 1), BODY_SECONDS)
    except TimeoutError:
        raise HttpError(408, f"the body did not arrive within {BODY_SECONDS:.0f} s") from None
    if len(raw) > limit:
        raise HttpError(too_large, f"the body must be at most {limit} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HttpError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Errors outside the views (unknown path, wrong method) answer JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        body = orjson.dumps({"error": exc.reason})
        return web.Response(body=body, status=exc.status, content_type="application/json", headers=headers)


async def _lineage(p: Pipeline, request: Request, source_id: int, model: SegmentModel | None) -> tuple[str, list[dict]]:
    """The model lineage a request reads (``lineage``; by default the current model's, or
    the last seen) and every lineage of the source; 404 for one the source never had."""
    assert p.history is not None
    lineages = await p.history.lineages(source_id)
    lineage = request.query.get("lineage")
    if lineage is None:
        return (model.lineage if model is not None else latest(lineages)), lineages
    if lineage not in {lin["lineage"] for lin in lineages}:
        raise HttpError(404, f"source {source_id} has no lineage {lineage!r:.40}")
    return lineage, lineages


def latest(lineages: list[dict[str, Any]]) -> str:
    """The lineage Postgres saw last ("" when none): what a worker without the source's
    model shows."""
    return max(lineages, key=lambda lin: lin["last_seen"])["lineage"] if lineages else ""


def _endpoint(p: Pipeline, *, needs_state: bool = True, writes: bool = False, visitors: bool = False) -> Any:
    """Turn ``async (view, request, ...) -> (status, body)`` into a JSON view; answer 503
    while the worker is still recovering the tables the view reads; with ``writes``,
    require the API token when one is configured, and with ``visitors`` (the view shows
    visitors) when ``AMPELIOS_PROTECT_VISITORS`` is set too."""

    def decorate(method: Any) -> Any:
        async def handler(self: View, request: Request, **kwargs: Any) -> Response:
            try:
                if writes or (visitors and p.settings.protect_visitors):
                    _authorize(request, p.settings.api_token)
                if needs_state and not p.ready():
                    raise HttpError(503, "the worker is recovering its state; retry shortly")
                answer = await method(self, request, **kwargs)
                if isinstance(answer, web.StreamResponse):
                    return answer  # streamed; an error once it has begun cuts the connection
                status, body = answer
            except HttpError as exc:
                status, body = exc.status, {"error": str(exc)}
            except PeerUnavailable as exc:
                status, body = 503, {"error": f"{exc}; retry"}
            except StreamCut:
                raise
            except Exception as exc:
                log.exception("%s %s failed", request.method, request.path)
                status, body = 500, {"error": f"internal error: {exc!r:.200}"}
            return _json(self, body, status)

        handler.__name__ = method.__name__
        handler.__doc__ = method.__doc__
        return handler

    return decorate


def register(p: Pipeline, webhooks: Webhooks) -> None:
    app = p.app
    app.web.web_app.middlewares.extend([guard(p.settings), _json_errors])
    internals.serve_connections_with(app.web, connection_options())

    journeys_topic = p.journeys.changelog_topic.get_topic_name()
    pages = MemberPages(p)

    def _peers() -> list[str]:
        """URLs of the other workers holding journeys partitions."""
        me = own_url(app)
        return [url for url, partitions in workers_of(app, journeys_topic).items() if url != me and partitions]

    async def _from_peer(url: str, path_qs: str) -> tuple[int, Any]:
        try:
            return await ask(app, url, path_qs, p.settings.api_token)
        except PeerUnavailable as exc:
            raise HttpError(503, f"{exc}; retry") from None

    async def _peer_answer(url: str, path_qs: str) -> Any:
        """A peer's 200 answer; its error (or silence) is this request's 503."""
        status, body = await _from_peer(url, path_qs)
        if status != 200:
            raise HttpError(503, f"worker {url} answered {status} to {path_qs}: {body.get('error')}; retry")
        return body

    def no_segments(source_id: int) -> HttpError:
        return HttpError(404, f"source {source_id} has no segments yet: no event of that source has been processed")

    app.web.add_static("/static/", STATIC)

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            """The dashboard (ampelios/web/static): segments, history, replays, look-ups."""
            return self.bytes((STATIC / "index.html").read_bytes(), content_type="text/html")

    @app.page("/health")
    class Health(View):
        @_endpoint(p, needs_state=False)
        async def get(self, request: Request) -> tuple[int, Any]:
            """200 once the worker has recovered its state and serves; 503 until then."""
            return (200, {"status": "ok"}) if p.ready() else (503, {"status": "recovering"})

    @app.page("/view")
    class Segments(View):
        @_endpoint(p)
        async def get(self, request: Request) -> tuple[int, Any]:
            """Segments of a source: id, users (count, or ids with verbose=true), centroid."""
            source_id = _source_id(request)
            verbose = _flag(request, "verbose")
            if verbose and p.settings.protect_visitors:
                _authorize(request, p.settings.api_token)
            limit = _int(request.query.get("limit", DEFAULT_USER_LIMIT), "limit", 1, MAX_USER_LIMIT)
            model = p.published_model(source_id)
            if model is None:
                raise no_segments(source_id)
            users: list[Any] = model.sizes.tolist()
            if verbose:
                gap_ms, window_ms = p.settings.session_gap_ms, p.settings.active_window_ms
                local = p.local_partitions()
                users = await asyncio.to_thread(
                    first_members, p.journeys, local, source_id, model, limit, gap_ms, window_ms
                )
                if not _flag(request, "local"):
                    for url in _peers():
                        path_qs = f"/view?source_id={source_id}&verbose=true&limit={limit}&local=true"
                        answer = await _peer_answer(url, path_qs)
                        users = [sorted([*mine, *theirs["users"]])[:limit] for mine, theirs in zip(users, answer)]
            return 200, [
                {
                    "id": s,
                    "label": model.labels[s],
                    "users": users[s],
                    "share": float(model.sizes[s] / max(1, model.sizes.sum())),
                    "centroid": model.units[s].tolist(),
                    "summary": summary(model.units[s]),
                    "advice": advice(model.labels[s]),
                    "action": action(model.labels[s]),
                }
                for s in range(model.k)
            ]

    @app.page("/visitors/{visitorid}")
    class Visitor(View):
        @_endpoint(p, visitors=True)
        async def get(self, request: Request, visitorid: str) -> tuple[int, Any]:
            """One visitor's sessions, state vector, six features, segment and why it is there."""
            source_id = _source_id(request)
            vid = _visitor(visitorid)
            partition = partition_for(source_id, vid, p.settings.partitions)
            holder = holder_of(app, journeys_topic, partition)
            if holder is not None and holder != own_url(app) and FORWARDED not in request.headers:
                return await _from_peer(holder, request.path_qs)
            if partition not in p.local_partitions():
                raise HttpError(503, f"no worker holds visitor {vid} right now (a rebalance is under way); retry")
            value = read_journey(p.journeys, visitor_key(source_id, vid))
            if value is None:
                raise HttpError(404, f"visitor {vid} of source {source_id} is unknown")
            journey = JourneyState.from_bytes(value)
            sessions = journey.sessions(p.settings.session_gap_ms)
            features = journey.features(p.settings.session_gap_ms, p.settings.active_window_ms)
            model = p.published_model(source_id)
            in_segments = model is not None and journey.active
            segment = int(model.assign(features[None, :])[0]) if in_segments else None
            transitions, error = None, None
            if p.history is None:
                error = "no database is configured (AMPELIOS_DATABASE_URL)"
            else:
                try:
                    lineage = model.lineage if model is not None else latest(await p.history.lineages(source_id))
                    transitions = await p.history.transitions(source_id, vid, lineage)
                except HistoryUnavailable as exc:
                    error = str(exc)
            return 200, {
                "visitorid": vid,
                "source_id": source_id,
                "sessions": [s.to_dict() for s in sessions],
                "state": features[:3].astype(np.int64).tolist(),
                "features": features.tolist(),
                "segment": segment,
                "active": journey.active,
                "label": model.labels[segment] if model is not None and segment is not None else None,
                "why": why(model, features) if model is not None and segment is not None else None,
                "transitions": transitions,
                **({"transitions_error": error} if error else {}),
            }

    segment_state = p.segments.changelog_topic.get_topic_name()

    @app.page("/segments/quality")
    class SegmentQuality(View):
        @_endpoint(p)
        async def get(self, request: Request) -> tuple[int, Any]:
            """How well k = 2..10 segment a source's visitors now, the k ``AMPELIOS_K=auto``
            chooses, and the k in use; computed by the worker that owns the model."""
            source_id = _source_id(request)
            owner = TopicPartition(p.topology.segment_updates, 0) in app.assignor.assigned_actives()
            if not owner:
                url = holder_of(app, segment_state, 0)
                if url is None or url == own_url(app) or FORWARDED in request.headers:
                    raise HttpError(503, "no worker owns the segment model right now (a rebalance); retry")
                return await _from_peer(url, request.path_qs)
            population = await asyncio.to_thread(stored_population, p.segments, source_id)
            if not population.total:
                raise no_segments(source_id)
            qualities = await asyncio.to_thread(evaluate, population)
            model = p.published_model(source_id)
            setting = p.settings.k_for(source_id)
            return 200, {
                "source_id": source_id,
                "visitors": population.total,
                "k": model.k if model is not None else None,
                "setting": AUTO if setting is None else setting,
                "chosen": choose_k(qualities),
                "rule": K_RULE,
                "qualities": [q.to_json() for q in qualities],
            }

    @app.page("/segments/{segment}/members")
    class SegmentMembers(View):
        @_endpoint(p, visitors=True)
        async def get(self, request: Request, segment: str) -> tuple[int, Any] | web.StreamResponse:
            """Every member of a segment with its six features: a page of ``limit`` after the
            cursor ``after`` (JSON), or the whole segment (``format=csv`` or ``ndjson``)."""
            source_id = _source_id(request)
            fmt = request.query.get("format", "json")
            if fmt not in FORMATS:
                raise HttpError(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r:.40}")
            cursor = member_cursor(request, source_id, _int(segment, "segment", 0, 2**16 - 1))
            local = _flag(request, "local")  # a worker asks for a partition it was told this one holds
            if local and cursor.partition not in p.local_partitions():
                raise HttpError(503, f"partition {cursor.partition} is not held here (a rebalance is under way); retry")
            if fmt == "json":
                limit = _int(request.query.get("limit", DEFAULT_MEMBERS), "limit", 1, MAX_MEMBERS)
                found, after = await pages.page(cursor, limit, local)
                return 200, {
                    "source_id": source_id,
                    "segment": cursor.segment,
                    "label": cursor.model.labels[cursor.segment],
                    "model_version": cursor.model.version,
                    "members": found,
                    "next": after.token() if after is not None else None,
                }
            name = f"source-{source_id}-segment-{cursor.segment}.{fmt}"
            response = web.StreamResponse(
                headers={"Content-Type": CONTENT_TYPES[fmt], "Content-Disposition": f'attachment; filename="{name}"'}
            )
            await response.prepare(request)
            try:
                if fmt == "csv" and not local:
                    await response.write(CSV_HEADER)
                await stream_partition(response, cursor, fmt)
                for partition in range(cursor.partition + 1, p.settings.partitions if not local else 0):
                    await stream_partition(response, cursor.at(partition), fmt)
                await response.write_eof()
            except Exception as exc:
                log.warning(
                    "streaming the members of segment %d of source %d failed: %r", cursor.segment, source_id, exc
                )
                raise StreamCut(str(exc)) from exc
            return response

    def member_cursor(request: Request, source_id: int, segment: int) -> MemberCursor:
        """The request's cursor (``after``), or the first one under the current model."""
        if request.query.get("after"):
            try:
                cursor = MemberCursor.parse(request.query["after"])
            except ValueError as exc:  # names no page: as an unknown resource
                raise HttpError(404, str(exc)) from None
            if (cursor.source_id, cursor.segment) != (source_id, segment):
                raise HttpError(400, "after is a cursor of another segment or source")
            if cursor.partition >= p.settings.partitions:
                raise HttpError(400, "after is a cursor of another deployment (more partitions)")
            return cursor
        model = p.published_model(source_id)
        if model is None:
            raise no_segments(source_id)
        if segment >= model.k:
            raise HttpError(404, f"source {source_id} has segments 0 to {model.k - 1}, not {segment}")
        return MemberCursor(source_id, segment, model)

    async def stream_partition(response: web.StreamResponse, cursor: MemberCursor, fmt: str) -> None:
        """Write every member of the cursor's partition from the cursor on, read here or
        relayed from the worker that holds the partition."""
        if cursor.partition not in p.local_partitions():
            async for piece in relay(
                app, pages.holder(cursor.partition), pages.path(cursor, f"format={fmt}"), p.settings.api_token
            ):
                await response.write(piece)
            return
        gap_ms, window_ms = p.settings.session_gap_ms, p.settings.active_window_ms

        def chunk(at: MemberCursor) -> tuple[bytes, int | None]:
            read = read_members(p.journeys, at, gap_ms, window_ms)
            return read.csv() if fmt == "csv" else read.ndjson(), read.last

        at: MemberCursor | None = cursor
        while at is not None:
            body, last = await asyncio.to_thread(chunk, at)
            if body:
                await response.write(body)
            at = at.at(at.partition, last) if last is not None else None

    @app.page("/history")
    class SegmentHistory(View):
        @_endpoint(p, needs_state=False)
        async def get(self, request: Request) -> tuple[int, Any]:
            """Snapshots of a source's segments, oldest first, on event or wall time, of one
            model lineage: the current model's unless ``lineage`` names another. On event
            time, ``basis=current`` (the default) gives every period's population under the
            lineage's newest model, ``basis=model`` under the model of its moment."""
            source_id = _source_id(request)
            clock = request.query.get("clock", "event")
            if clock not in ("event", "wall"):
                raise HttpError(400, f"clock must be event or wall, got {clock!r:.40}")
            basis = request.query.get("basis", "current")
            if basis not in ("current", "model"):
                raise HttpError(400, f"basis must be current or model, got {basis!r:.40}")
            if clock == "wall":
                basis = "model"  # a wall snapshot is the model of its moment; the answer says so
            since, until = _moment(request, "since"), _moment(request, "until")
            if p.history is None:
                raise HttpError(503, "no database is configured (AMPELIOS_DATABASE_URL): no history is kept")
            model = p.published_model(source_id)
            try:
                lineage, lineages = await _lineage(p, request, source_id, model)
                changes: list[dict] = []
                if basis == "current":
                    version, snapshots, changes = await p.history.periods(source_id, since, until, lineage)
                else:
                    version, snapshots = None, await p.history.snapshots(source_id, clock, since, until, lineage)
            except HistoryUnavailable as exc:
                raise HttpError(503, str(exc)) from None
            if not snapshots and model is None and not lineages:
                raise no_segments(source_id)
            answer = {"source_id": source_id, "clock": clock, "basis": basis, "lineage": lineage, "lineages": lineages}
            if basis == "current":
                answer.update(model_version=version, model_changes=changes)
            return 200, {**answer, "snapshots": snapshots}

    @app.page("/alerts")
    class Alerts(View):
        @_endpoint(p, needs_state=False)
        async def get(self, request: Request) -> tuple[int, Any]:
            """The drift alerts of a source detected between ``since`` and ``until`` (event
            time), oldest first, of the current model's lineage unless ``lineage`` names
            another."""
            source_id = _source_id(request)
            since, until = _moment(request, "since"), _moment(request, "until")
            if p.history is None:
                raise HttpError(503, "no database is configured (AMPELIOS_DATABASE_URL): no alerts are kept")
            model = p.published_model(source_id)
            try:
                lineage, lineages = await _lineage(p, request, source_id, model)
                alerts = await p.history.alerts(source_id, since, until, lineage)
            except HistoryUnavailable as exc:
                raise HttpError(503, str(exc)) from None
            if model is None and not lineages:
                raise no_segments(source_id)
            return 200, {"source_id": source_id, "lineage": lineage, "alerts": alerts}

    @app.page("/stats")
    class Stats(View):
        @_endpoint(p)
        async def get(self, request: Request) -> tuple[int, Any]:
            """Events and visitors reflected, rows rejected, and records not yet reflected.
            ``source_id=-1`` counts messages whose source could not be read."""
            source_id = _source_id(request, lowest=UNKNOWN_SOURCE)
            if _flag(request, "local"):
                return 200, {**p.source_stats(source_id), "partitions": p.local_partitions()}
            # Lag first, counts after: lag 0 then means that every record published before
            # this request is in the counts (read the other way round, records applied
            # while the lag is computed would be missing from counts yet not in the lag).
            pending = await p.pending()
            totals = p.source_stats(source_id)
            held = set(p.local_partitions())
            for url in _peers():
                answer = await _peer_answer(url, f"/stats?source_id={source_id}&local=true")
                held.update(answer.pop("partitions"))
                totals = {k: totals[k] + answer[k] for k in totals}
            if held != set(range(p.settings.partitions)):
                raise HttpError(503, "not every partition is held by a worker right now (a rebalance); retry")
            model = p.published_model(source_id)
            version = model.version if model is not None else None
            return 200, {**totals, "model_version": version, **pending}

    @app.page("/rejections")
    class Rejections(View):
        @_endpoint(p, visitors=True)
        async def get(self, request: Request) -> tuple[int, Any]:
            """Why a source's rows and messages were rejected: the count of each reason, most
            frequent first, with its first examples (where, what the row held)."""
            source_id = _source_id(request, lowest=UNKNOWN_SOURCE)
            limit = _int(request.query.get("limit", DEFAULT_REASONS), "limit", 1, MAX_REASONS)
            summary = p.rejection_summary(source_id)
            if not _flag(request, "local"):
                for url in _peers():
                    path_qs = f"/rejections?source_id={source_id}&limit={MAX_REASONS}&local=true"
                    summary.merge(RejectionSummary.from_report((await _peer_answer(url, path_qs))["reasons"]))
            return 200, {"source_id": source_id, "rejected": summary.total, "reasons": summary.report(limit)}

    async def snapshot_when_reflected(job: ReplayJob) -> None:
        """Wait until the job's events are in the segments (and the source has a model
        this worker sees: the owner publishes it just after the lag reads 0), then ask
        for a snapshot."""
        while (await p.pending())["lag"]:
            await asyncio.sleep(0.5)
        for _ in range(MODEL_WAIT_POLLS):  # a file of only rejected or ignored rows makes no model
            if p.published_model(job.source_id) is not None:
                break
            await asyncio.sleep(0.5)
        request = snapshot_request(job.source_id, f"replay {job.path} ({job.id}) done")
        await p.segment_updates.send(key=b"%d" % job.source_id, value=request)

    @app.page("/openapi.json")
    class OpenApi(View):
        @_endpoint(p, needs_state=False)
        async def get(self, request: Request) -> tuple[int, Any]:
            """The OpenAPI document of this API."""
            token_required = p.settings.api_token is not None
            return 200, openapi_document(token_required, visitors_protected=p.settings.protect_visitors)

    @app.page("/trigger")
    class Trigger(View):
        @_endpoint(p, needs_state=False, writes=True)
        async def post(self, request: Request) -> tuple[int, Any]:
            """Replay a CSV under the data directory into the events topic."""
            body = await _json_body(request)
            raw_source = body.get("source_id")
            if type(raw_source) is float and raw_source.is_integer():  # JSON Schema's integer: 1.0 is 1
                raw_source = int(raw_source)
            if type(raw_source) is not int:
                raise HttpError(400, f"source_id must be a JSON integer, e.g. 1, got {orjson.dumps(raw_source)[:40]!r}")
            source_id = _int(raw_source, "source_id", 0, MAX_SOURCE_ID)
            name = body.get("events_path")
            if not isinstance(name, str):
                raise HttpError(400, 'events_path must be a string, e.g. "events.csv"')
            try:
                path = resolve_data_path(p.settings.data_dir, name)
            except PathRefused as exc:
                raise HttpError(400, str(exc)) from None
            except PathMissing as exc:
                raise HttpError(404, str(exc)) from None
            job = start_job(
                p.jobs,
                p.settings.broker_url,
                p.topology,
                path,
                name,
                source_id,
                p.settings.replay_batch_events,
                p.event_codes,
                finish=snapshot_when_reflected,
            )
            return 202, {"job": job.id, "status_url": f"/trigger/{job.id}"}

    def collector_endpoint(kind: str | None) -> type[View]:
        class Collector(View):
            @_endpoint(p, needs_state=False)
            async def post(self, request: Request) -> tuple[int, Any]:
                """Segment-style tracking calls -> events (:mod:`ampelios.ingest.collector`)."""
                limit = MAX_CALL_BYTES if kind is not None else MAX_BATCH_BYTES
                body = await _json_body(request, limit, too_large=400)  # Segment answers 400
                try:
                    return 200, await collector.accept(p, request.headers.get("Authorization", ""), body, kind)
                except collector.CollectorRefused as exc:
                    raise HttpError(exc.status, str(exc)) from None

        return Collector

    for kind in (*collector.KINDS, None):
        app.page(f"/v1/{kind or 'batch'}")(collector_endpoint(kind))

    def subscription(sub_id: str) -> Subscription:
        sub = webhooks.subscriptions().get(sub_id)
        if sub is None:
            raise HttpError(404, f"no webhook subscription {sub_id!r:.80}")
        return sub

    def shown(sub: Subscription) -> dict[str, Any]:
        defined_in = "AMPELIOS_WEBHOOKS" if sub.id in webhooks.fixed else "POST /webhooks"
        return {**sub.to_json(), "defined_in": defined_in, "deliveries_url": f"/webhooks/{sub.id}/deliveries"}

    @app.page("/webhooks")
    class WebhookSubscriptions(View):
        @_endpoint(p, writes=True)
        async def get(self, request: Request) -> tuple[int, Any]:
            """Every webhook subscription, without its secret."""
            return 200, {"subscriptions": [shown(sub) for sub in webhooks.subscriptions().values()]}

        @_endpoint(p, writes=True)
        async def post(self, request: Request) -> tuple[int, Any]:
            """Subscribe a URL to a source's segment membership (all segments, or those
            named): the current members, then every enter and exit. The answer holds the
            secret that signs the deliveries (generated unless given), this once."""
            try:
                sub = await webhooks.subscribe(await _json_body(request))
            except SubscriptionRefused as exc:
                raise HttpError(400, str(exc)) from None
            return 201, {**shown(sub), "secret": sub.secret}

    @app.page("/webhooks/{subscription_id}")
    class WebhookSubscription(View):
        @_endpoint(p, writes=True)
        async def get(self, request: Request, subscription_id: str) -> tuple[int, Any]:
            """One webhook subscription, without its secret."""
            return 200, shown(subscription(subscription_id))

        @_endpoint(p, writes=True)
        async def delete(self, request: Request, subscription_id: str) -> tuple[int, Any]:
            """Delete a subscription made with POST /webhooks: its deliveries stop."""
            sub = subscription(subscription_id)
            if sub.id in webhooks.fixed:
                raise HttpError(409, f"{sub.id} is defined in AMPELIOS_WEBHOOKS: remove it there and restart")
            await webhooks.unsubscribe(sub.id)
            return 200, {"deleted": sub.id}

    @app.page("/webhooks/{subscription_id}/deliveries")
    class WebhookDeliveries(View):
        @_endpoint(p, writes=True)
        async def get(self, request: Request, subscription_id: str) -> tuple[int, Any]:
            """The last deliveries of a subscription (each worker keeps its last 100),
            newest first: id (the webhook-id), type, size, attempts, last status and
            error, when delivered."""
            sub = subscription(subscription_id)
            me = own_url(app)
            found = [{**entry, "worker": me} for entry in webhooks.deliveries(sub.id)]
            if not _flag(request, "local"):
                for url in _peers():
                    found += (await _peer_answer(url, f"/webhooks/{sub.id}/deliveries?local=true"))["deliveries"]
            found.sort(key=lambda entry: entry["created"], reverse=True)
            return 200, {"subscription": sub.id, "deliveries": found}

    @app.page("/metrics")
    class PrometheusMetrics(View):
        async def get(self, request: Request) -> Response:
            """Prometheus metrics (text format; see :mod:`ampelios.runtime.metrics`)."""
            try:
                pending = await p.pending()
            except Exception as exc:  # the broker is unreachable: say so, keep the rest
                log.warning("/metrics: lag not known: %r", exc)
                pending = {"lag": float("nan"), "sink_lag": float("nan")}
            models = p.published_models()
            recovered = {table.name: table.recovered for table in (p.journeys, p.segments)}
            jobs = [job.state for job in p.jobs.values()]
            body = p.metrics.render(pending, models, jobs, recovered, p.published_alerts())
            return self.bytes(body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    @app.page("/files")
    class Files(View):
        @_endpoint(p, needs_state=False)
        async def get(self, request: Request) -> tuple[int, Any]:
            """The CSV files of the data directory that POST /trigger can replay."""
            return 200, {"files": await asyncio.to_thread(data_files, p.settings.data_dir)}

    @app.page("/trigger/{job}")
    class TriggerJob(View):
        @_endpoint(p, needs_state=False)
        async def get(self, request: Request, job: str) -> tuple[int, Any]:
            """State and counts of one replay job."""
            found = p.jobs.get(job)
            if found is None:
                raise HttpError(404, f"no replay job {job!r} on this worker")
            return 200, found.to_json()
