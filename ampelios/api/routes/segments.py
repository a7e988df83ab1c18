"""The segments of a source: ``/view``, how well each k segments it, and every member."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiokafka.structs import TopicPartition
from faust.web import Request

from ampelios.api.context import Api, no_segments
from ampelios.api.contract import (
    KQuality,
    Members,
    MembersPath,
    MembersQuery,
    Segment,
    SegmentsQuery,
    SourceQuery,
)
from ampelios.api.http import HttpError, Routes, StreamCut
from ampelios.api.members import CONTENT_TYPES, CSV_HEADER, MemberCursor, first_members, read_members
from ampelios.config import AUTO
from ampelios.core.k_choice import K_RULE, choose_k, evaluate
from ampelios.core.labels import action, advice, summary
from ampelios.processors.segment_owner import stored_population
from ampelios.runtime.cluster import FORWARDED, holder_of, own_url, relay

log = logging.getLogger(__name__)
routes = Routes()


@routes.get(
    "/view",
    "The segments of a source",
    query=SegmentsQuery,
    answers={200: ("one entry per segment", list[Segment])},
    errors=(400, 404, 503),
    guard="verbose",
)
async def segments(api: Api, request: Request, query: SegmentsQuery) -> tuple[int, list[Segment]]:
    """Segments of a source: id, users (count, or ids with verbose=true), centroid."""
    p = api.p
    if query.verbose and p.settings.protect_visitors:
        api.authorize(request)
    model = p.published_model(query.source_id)
    if model is None:
        raise no_segments(query.source_id)
    users: list[Any] = model.sizes.tolist()
    if query.verbose:
        gap_ms, window_ms = p.settings.session_gap_ms, p.settings.active_window_ms
        local = p.local_partitions()
        users = await asyncio.to_thread(
            first_members, p.journeys, local, query.source_id, model, query.limit, gap_ms, window_ms
        )
        if not query.local:
            for url in api.peers():
                path_qs = f"/view?source_id={query.source_id}&verbose=true&limit={query.limit}&local=true"
                answer = await api.peer_answer(url, path_qs)
                users = [sorted([*mine, *theirs["users"]])[: query.limit] for mine, theirs in zip(users, answer)]
    total = max(1, model.sizes.sum())
    return 200, [
        Segment(
            id=s,
            label=model.labels[s],
            users=users[s],
            share=float(model.sizes[s] / total),
            centroid=model.units[s].tolist(),
            summary=summary(model.units[s]),
            advice=advice(model.labels[s]),
            action=action(model.labels[s]),
        )
        for s in range(model.k)
    ]


@routes.get(
    "/segments/quality",
    "How well k = 2..10 segment a source's visitors, and the k AMPELIOS_K=auto chooses",
    description=(
        "Each k is fitted on the source's current population as a seeding does; the worker "
        "that owns the model answers (any worker forwards). See docs/segment-model.md."
    ),
    query=SourceQuery,
    answers={200: ("the figures of each k", KQuality)},
    errors=(400, 404, 503),
)
async def quality(api: Api, request: Request, query: SourceQuery) -> tuple[int, Any]:
    """How well k = 2..10 segment a source's visitors now, the k ``AMPELIOS_K=auto``
    chooses, and the k in use; computed by the worker that owns the model."""
    p, app = api.p, api.p.app
    if TopicPartition(p.topology.segment_updates, 0) not in app.assignor.assigned_actives():
        url = holder_of(app, api.segment_state, 0)
        if url is None or url == own_url(app) or FORWARDED in request.headers:
            raise HttpError(503, "no worker owns the segment model right now (a rebalance); retry")
        return await api.from_peer(url, request.path_qs)
    population = await asyncio.to_thread(stored_population, p.segments, query.source_id)
    if not population.total:
        raise no_segments(query.source_id)
    qualities = await asyncio.to_thread(evaluate, population)
    model = p.published_model(query.source_id)
    setting = p.settings.k_for(query.source_id)
    return 200, KQuality(
        source_id=query.source_id,
        visitors=population.total,
        k=model.k if model is not None else None,
        setting=AUTO if setting is None else setting,
        chosen=choose_k(qualities),
        rule=K_RULE,
        qualities=[q.to_json() for q in qualities],
    )


@routes.get(
    "/segments/{segment}/members",
    "Every member of a segment with its six features, page by page or whole",
    description=(
        "format=json (default) answers a page of `limit` members and `next`, the cursor of the "
        "following page (null after the last): pass it as `after`. Every page of one listing "
        "classifies under the model of its first page (`model_version`), so no visitor appears "
        "twice; the order is the store's (partition, then visitor id as text). format=csv or "
        "ndjson streams every member of the segment (from `after`, when given) in one answer."
    ),
    path_params=MembersPath,
    query=MembersQuery,
    answers={
        200: (
            "a page of members (json), or every member (csv, ndjson)",
            {"application/json": Members, "text/csv": str, "application/x-ndjson": str},
        )
    },
    errors=(400, 404, 503),
    guard="visitors",
)
async def members(
    api: Api, request: Request, path: MembersPath, query: MembersQuery
) -> tuple[int, Members] | web.StreamResponse:
    """Every member of a segment with its six features: a page of ``limit`` after the
    cursor ``after`` (JSON), or the whole segment (``format=csv`` or ``ndjson``)."""
    p = api.p
    cursor = _cursor(api, query, path.segment)
    if query.local and cursor.partition not in p.local_partitions():
        raise HttpError(503, f"partition {cursor.partition} is not held here (a rebalance is under way); retry")
    if query.format == "json":
        found, after = await api.pages.page(cursor, query.limit, query.local)
        return 200, Members(
            source_id=query.source_id,
            segment=cursor.segment,
            label=cursor.model.labels[cursor.segment],
            model_version=cursor.model.version,
            members=found,
            next=after.token() if after is not None else None,
        )
    fmt = query.format
    name = f"source-{query.source_id}-segment-{cursor.segment}.{fmt}"
    response = web.StreamResponse(
        headers={"Content-Type": CONTENT_TYPES[fmt], "Content-Disposition": f'attachment; filename="{name}"'}
    )
    await response.prepare(request)
    try:
        if fmt == "csv" and not query.local:
            await response.write(CSV_HEADER)
        await _stream_partition(api, response, cursor, fmt)
        for partition in range(cursor.partition + 1, p.settings.partitions if not query.local else 0):
            await _stream_partition(api, response, cursor.at(partition), fmt)
        await response.write_eof()
    except Exception as exc:
        log.warning("streaming the members of segment %d of source %d failed: %r", cursor.segment, query.source_id, exc)
        raise StreamCut(str(exc)) from exc
    return response


def _cursor(api: Api, query: MembersQuery, segment: int) -> MemberCursor:
    """The request's cursor (``after``), or the first one under the current model."""
    if query.after:
        try:
            cursor = MemberCursor.parse(query.after)
        except ValueError as exc:  # names no page: as an unknown resource
            raise HttpError(404, str(exc)) from None
        if (cursor.source_id, cursor.segment) != (query.source_id, segment):
            raise HttpError(400, "after is a cursor of another segment or source")
        if cursor.partition >= api.p.settings.partitions:
            raise HttpError(400, "after is a cursor of another deployment (more partitions)")
        return cursor
    model = api.p.published_model(query.source_id)
    if model is None:
        raise no_segments(query.source_id)
    if segment >= model.k:
        raise HttpError(404, f"source {query.source_id} has segments 0 to {model.k - 1}, not {segment}")
    return MemberCursor(query.source_id, segment, model)


async def _stream_partition(api: Api, response: web.StreamResponse, cursor: MemberCursor, fmt: str) -> None:
    """Write every member of the cursor's partition from the cursor on, read here or
    relayed from the worker that holds the partition."""
    p = api.p
    if cursor.partition not in p.local_partitions():
        holder, path_qs = api.pages.holder(cursor.partition), api.pages.path(cursor, f"format={fmt}")
        async for piece in relay(p.app, holder, path_qs, p.settings.api_token):
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
