"""What Postgres keeps of a source: ``/history`` (snapshots of its segments) and ``/alerts``."""

from __future__ import annotations

from typing import Any

from faust.web import Request

from ampelios.api.context import Api, no_segments
from ampelios.api.contract import Alerts, AlertsQuery, History, HistoryQuery
from ampelios.api.http import HttpError, Routes
from ampelios.core.model import SegmentModel
from ampelios.sinks.history import HistoryUnavailable

routes = Routes()


def latest(lineages: list[dict[str, Any]]) -> str:
    """The lineage Postgres saw last ("" when none): what a worker without the source's
    model shows."""
    return max(lineages, key=lambda lin: lin["last_seen"])["lineage"] if lineages else ""


async def _lineage(
    api: Api, source_id: int, asked: str | None, model: SegmentModel | None
) -> tuple[str, list[dict[str, Any]]]:
    """The model lineage a request reads (``asked``; by default the current model's, or
    the last seen) and every lineage of the source; 404 for one the source never had."""
    assert api.p.history is not None
    lineages = await api.p.history.lineages(source_id)
    if asked is None:
        return (model.lineage if model is not None else latest(lineages)), lineages
    if asked not in {lin["lineage"] for lin in lineages}:
        raise HttpError(404, f"source {source_id} has no lineage {asked!r:.40}")
    return asked, lineages


@routes.get(
    "/history",
    "Snapshots of a source's segments over event or wall time",
    query=HistoryQuery,
    answers={200: ("oldest first", History)},
    errors=(400, 404, 503),
    needs_state=False,
)
async def history(api: Api, request: Request, query: HistoryQuery) -> tuple[int, History]:
    """Snapshots of a source's segments, oldest first, on event or wall time, of one
    model lineage: the current model's unless ``lineage`` names another. On event
    time, ``basis=current`` (the default) gives every period's population under the
    lineage's newest model, ``basis=model`` under the model of its moment."""
    p, source_id = api.p, query.source_id
    basis = "model" if query.clock == "wall" else query.basis  # a wall snapshot is the model of its moment
    if p.history is None:
        raise HttpError(503, "no database is configured (AMPELIOS_DATABASE_URL): no history is kept")
    model = p.published_model(source_id)
    try:
        lineage, lineages = await _lineage(api, source_id, query.lineage, model)
        if basis == "current":
            version, snapshots, changes = await p.history.periods(source_id, query.since, query.until, lineage)
        else:
            snapshots = await p.history.snapshots(source_id, query.clock, query.since, query.until, lineage)
    except HistoryUnavailable as exc:
        raise HttpError(503, str(exc)) from None
    if not snapshots and model is None and not lineages:
        raise no_segments(source_id)
    answer = History(
        source_id=source_id, clock=query.clock, basis=basis, lineage=lineage, lineages=lineages, snapshots=snapshots
    )
    if basis == "current":
        answer.model_version, answer.model_changes = version, changes
    return 200, answer


@routes.get(
    "/alerts",
    "Shifts of a source's per-day signals (drift alerts) and their recoveries",
    query=AlertsQuery,
    answers={200: ("oldest first", Alerts)},
    errors=(400, 404, 503),
    needs_state=False,
)
async def alerts(api: Api, request: Request, query: AlertsQuery) -> tuple[int, Alerts]:
    """The drift alerts of a source detected between ``since`` and ``until`` (event
    time), oldest first, of the current model's lineage unless ``lineage`` names
    another."""
    p, source_id = api.p, query.source_id
    if p.history is None:
        raise HttpError(503, "no database is configured (AMPELIOS_DATABASE_URL): no alerts are kept")
    model = p.published_model(source_id)
    try:
        lineage, lineages = await _lineage(api, source_id, query.lineage, model)
        found = await p.history.alerts(source_id, query.since, query.until, lineage)
    except HistoryUnavailable as exc:
        raise HttpError(503, str(exc)) from None
    if model is None and not lineages:
        raise no_segments(source_id)
    return 200, Alerts(source_id=source_id, lineage=lineage, alerts=found)
