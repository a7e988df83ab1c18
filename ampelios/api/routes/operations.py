"""Operating a worker: health, counts and lag, why rows were rejected, metrics, the contract."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from faust.web import Request

from ampelios.api.context import Api
from ampelios.api.contract import Health, LocalStats, Rejections, RejectionsQuery, Stats, StatsQuery
from ampelios.api.http import HttpError, Routes
from ampelios.api.openapi import openapi_document
from ampelios.core.rejections import MAX_REASONS, RejectionSummary
from ampelios.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)
routes = Routes()


@routes.get(
    "/health",
    "Whether the worker serves (its tables are recovered)",
    answers={200: ("serving", Health), 503: ("recovering", Health)},
    needs_state=False,
)
async def health(api: Api, request: Request) -> tuple[int, Health]:
    """200 once the worker has recovered its state and serves; 503 until then."""
    return (200, Health(status="ok")) if api.p.ready() else (503, Health(status="recovering"))


@routes.get(
    "/stats",
    "Events and visitors reflected, rows rejected, records still to process",
    query=StatsQuery,
    answers={200: ("the counts", (Stats, LocalStats))},
    errors=(400, 503),
)
async def stats(api: Api, request: Request, query: StatsQuery) -> tuple[int, Stats | LocalStats]:
    """Events and visitors reflected, rows rejected, and records not yet reflected.
    ``source_id=-1`` counts messages whose source could not be read."""
    p, source_id = api.p, query.source_id
    if query.local:
        return 200, LocalStats(**p.source_stats(source_id), partitions=p.local_partitions())
    # Lag first, counts after: lag 0 then means that every record published before
    # this request is in the counts (read the other way round, records applied
    # while the lag is computed would be missing from counts yet not in the lag).
    pending = await p.pending()
    totals = p.source_stats(source_id)
    held = set(p.local_partitions())
    for url in api.peers():
        answer = await api.peer_answer(url, f"/stats?source_id={source_id}&local=true")
        held.update(answer.pop("partitions"))
        totals = {k: totals[k] + answer[k] for k in totals}
    if held != set(range(p.settings.partitions)):
        raise HttpError(503, "not every partition is held by a worker right now (a rebalance); retry")
    model = p.published_model(source_id)
    return 200, Stats(**totals, model_version=model.version if model is not None else None, **pending)


@routes.get(
    "/rejections",
    "Why rows and messages of a source were rejected, with examples",
    query=RejectionsQuery,
    answers={200: ("the reasons, most frequent first", Rejections)},
    errors=(400, 503),
    guard="visitors",
)
async def rejections(api: Api, request: Request, query: RejectionsQuery) -> tuple[int, Rejections]:
    """Why a source's rows and messages were rejected: the count of each reason, most
    frequent first, with its first examples (where, what the row held)."""
    summary = api.p.rejection_summary(query.source_id)
    if not query.local:
        for url in api.peers():
            path_qs = f"/rejections?source_id={query.source_id}&limit={MAX_REASONS}&local=true"
            summary.merge(RejectionSummary.from_report((await api.peer_answer(url, path_qs))["reasons"]))
    return 200, Rejections(source_id=query.source_id, rejected=summary.total, reasons=summary.report(query.limit))


@routes.get(
    "/metrics",
    "Prometheus metrics of this worker (text exposition format 0.0.4)",
    answers={200: ("the metrics", {"text/plain": str})},
    needs_state=False,
)
async def metrics(api: Api, request: Request) -> web.Response:
    """Prometheus metrics (text format; see :mod:`ampelios.runtime.metrics`)."""
    p = api.p
    try:
        pending = await p.pending()
    except Exception as exc:  # the broker is unreachable: say so, keep the rest
        log.warning("/metrics: lag not known: %r", exc)
        pending = {"lag": float("nan"), "sink_lag": float("nan")}
    models = p.published_models()
    recovered = {table.name: table.recovered for table in (p.journeys, p.segments)}
    jobs = [job.state for job in p.jobs.values()]
    body = p.metrics.render(pending, models, jobs, recovered, p.published_alerts())
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


@routes.get(
    "/openapi.json",
    "This document",
    answers={200: ("OpenAPI 3.1", dict[str, Any])},
    needs_state=False,
)
async def contract(api: Api, request: Request) -> tuple[int, dict[str, Any]]:
    """The OpenAPI document of this API."""
    settings = api.p.settings
    token_required = settings.api_token is not None
    return 200, openapi_document(api.operations, token_required, visitors_protected=settings.protect_visitors)
