"""One visitor: ``/visitors/{visitorid}``, answered by the worker that holds it."""

from __future__ import annotations

from typing import Any

import numpy as np
from faust.web import Request

from ampelios.api.context import Api
from ampelios.api.contract import Session, SourceQuery, Visitor, VisitorPath
from ampelios.api.http import HttpError, Routes, parse_int
from ampelios.api.routes.history import latest
from ampelios.core.collect import visitor_id
from ampelios.core.explain import why
from ampelios.core.journeys import JourneyState, merged_into
from ampelios.core.partitioning import partition_for, visitor_key
from ampelios.processors.journey_store import read_journey
from ampelios.runtime.cluster import FORWARDED, holder_of, own_url
from ampelios.sinks.history import HistoryUnavailable

routes = Routes()


def visitor_ref(raw: str) -> int:
    """A visitor id, or a collected visitor by its original id: ``user:<userId>`` or
    ``anonymous:<anonymousId>`` (:func:`ampelios.core.collect.visitor_id`)."""
    kind, sep, original = raw.partition(":")
    if sep and kind in ("user", "anonymous") and original:
        return visitor_id(kind, original)
    return parse_int(raw, "visitorid")


@routes.get(
    "/visitors/{visitorid}",
    "One visitor's journey, features, segment, why it is there, and transitions",
    path_params=VisitorPath,
    query=SourceQuery,
    answers={200: ("the visitor", Visitor)},
    errors=(400, 404, 503),
    guard="visitors",
)
async def visitor(api: Api, request: Request, path: VisitorPath, query: SourceQuery) -> tuple[int, Any]:
    """One visitor's sessions, state vector, six features, segment and why it is there."""
    p, app, source_id = api.p, api.p.app, query.source_id
    vid = visitor_ref(path.visitorid)
    partition = partition_for(source_id, vid, p.settings.partitions)
    holder = holder_of(app, api.journeys_topic, partition)
    if holder is not None and holder != own_url(app) and FORWARDED not in request.headers:
        return await api.from_peer(holder, request.path_qs)
    if partition not in p.local_partitions():
        raise HttpError(503, f"no worker holds visitor {vid} right now (a rebalance is under way); retry")
    value = read_journey(p.journeys, visitor_key(source_id, vid))
    if value is None:
        raise HttpError(404, f"visitor {vid} of source {source_id} is unknown")
    target = merged_into(value)
    if target is not None:  # linked to another visitor (an anonymous id to its user): that one's journey
        target_partition = partition_for(source_id, target, p.settings.partitions)
        at = holder_of(app, api.journeys_topic, target_partition)
        if at is not None and at != own_url(app):
            return await api.from_peer(at, f"/visitors/{target}?source_id={source_id}")
        if target_partition not in p.local_partitions():
            raise HttpError(503, f"no worker holds visitor {target} right now (a rebalance is under way); retry")
        vid, value = target, read_journey(p.journeys, visitor_key(source_id, target))
        if value is None or merged_into(value) is not None:
            raise HttpError(404, f"visitor {vid} of source {source_id} is unknown")
    journey = JourneyState.from_bytes(value)
    sessions = journey.sessions(p.settings.session_gap_ms)
    features = journey.features(p.settings.session_gap_ms, p.settings.active_window_ms)
    model = p.published_model(source_id)
    segment = int(model.assign(features[None, :])[0]) if model is not None and journey.active else None
    transitions, error = None, None
    if p.history is None:
        error = "no database is configured (AMPELIOS_DATABASE_URL)"
    else:
        try:
            lineage = model.lineage if model is not None else latest(await p.history.lineages(source_id))
            transitions = await p.history.transitions(source_id, vid, lineage)
        except HistoryUnavailable as exc:
            error = str(exc)
    answer = Visitor(
        visitorid=vid,
        source_id=source_id,
        original_id=p.original_id(source_id, vid),
        sessions=[Session(**s.to_dict()) for s in sessions],
        state=features[:3].astype(np.int64).tolist(),
        features=features.tolist(),
        segment=segment,
        active=journey.active,
        label=model.labels[segment] if model is not None and segment is not None else None,
        why=why(model, features) if model is not None and segment is not None else None,
        transitions=transitions,
    )
    if error:
        answer.transitions_error = error
    return 200, answer
