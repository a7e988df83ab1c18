"""The collector: Segment-style ``POST /v1/track|page|identify|batch`` from a site's tracker."""

from __future__ import annotations

from typing import Any

from faust.web import Request

from ampelios.api.context import Api
from ampelios.api.contract import CollectorAnswer, RejectedCall, SegmentBatch, SegmentCall
from ampelios.api.http import HttpError, Routes, json_body
from ampelios.core.collect import MAX_BATCH_BYTES, MAX_CALL_BYTES
from ampelios.ingest import collector

routes = Routes()

_ERRORS = {
    400: "not JSON, a call over 32 KB or a batch over 500 KB, or the call was rejected",
    401: "the write key (the Basic auth user, or writeKey) is not one of AMPELIOS_WRITE_KEYS",
}


def _collect(kind: str | None) -> Any:
    async def collect(api: Api, request: Request) -> tuple[int, CollectorAnswer]:
        """Segment-style tracking calls -> events (:mod:`ampelios.ingest.collector`).
        The body is Segment's call, read call by call by the core (:mod:`ampelios.core.collect`),
        which gives the reason for each call it rejects."""
        limit = MAX_CALL_BYTES if kind is not None else MAX_BATCH_BYTES
        body = await json_body(request, limit, too_large=400)  # Segment answers 400
        try:
            got = await collector.accept(api.p, request.headers.get("Authorization", ""), body, kind)
        except collector.CollectorRefused as exc:
            raise HttpError(exc.status, str(exc)) from None
        rejected = [RejectedCall(index=int(r.position), reason=r.reason) for r in got.rejections]
        return 200, CollectorAnswer(success=True, accepted=len(got.events), ignored=got.ignored, rejected=rejected)

    return collect


for _kind in (*collector.KINDS, "batch"):
    routes.post(
        f"/v1/{_kind}",
        f"Segment-style {_kind} call{'s' if _kind == 'batch' else ''} from a site's tracker",
        body=SegmentBatch if _kind == "batch" else SegmentCall,
        answers={200: ("what became of each call, once the broker has the events", CollectorAnswer)},
        errors=(400, 401, 403, 408, 415),
        error_meanings=_ERRORS,
        needs_state=False,
        security="writeKey",
    )(_collect(None if _kind == "batch" else _kind))
