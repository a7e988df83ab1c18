"""What every handler is given: the running worker and the ways to ask the other workers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faust.web import Request

from ampelios.api.http import HttpError, Operation
from ampelios.api.members import MemberPages
from ampelios.api.web_guard import authorized
from ampelios.api.webhooks import Webhooks
from ampelios.runtime.cluster import PeerUnavailable, ask, own_url, workers_of
from ampelios.runtime.pipeline import Pipeline


@dataclass
class Api:
    """A worker's API: its pipeline, webhooks and member pages, its peers, and every
    operation it serves (which ``/openapi.json`` documents)."""

    p: Pipeline
    webhooks: Webhooks
    pages: MemberPages
    operations: Sequence[Operation]

    @classmethod
    def of(cls, p: Pipeline, webhooks: Webhooks, operations: Sequence[Operation]) -> Api:
        return cls(p, webhooks, MemberPages(p), operations)

    @property
    def journeys_topic(self) -> str:
        return self.p.journeys.changelog_topic.get_topic_name()

    @property
    def segment_state(self) -> str:
        return self.p.segments.changelog_topic.get_topic_name()

    def peers(self) -> list[str]:
        """URLs of the other workers holding journeys partitions."""
        me = own_url(self.p.app)
        return [url for url, held in workers_of(self.p.app, self.journeys_topic).items() if url != me and held]

    async def from_peer(self, url: str, path_qs: str) -> tuple[int, Any]:
        """Another worker's answer, whatever its status; its silence is a 503."""
        try:
            return await ask(self.p.app, url, path_qs, self.p.settings.api_token)
        except PeerUnavailable as exc:
            raise HttpError(503, f"{exc}; retry") from None

    async def peer_answer(self, url: str, path_qs: str) -> Any:
        """A peer's 200 answer; its error (or silence) is this request's 503."""
        status, body = await self.from_peer(url, path_qs)
        if status != 200:
            raise HttpError(503, f"worker {url} answered {status} to {path_qs}: {body.get('error')}; retry")
        return body

    def authorize(self, request: Request) -> None:
        """401 unless the request carries the API token (when one is set)."""
        token = self.p.settings.api_token
        if token is not None and not authorized(request.headers.get("Authorization", ""), token):
            raise HttpError(401, "this endpoint needs the header Authorization: Bearer $AMPELIOS_API_TOKEN")


def no_segments(source_id: int) -> HttpError:
    return HttpError(404, f"source {source_id} has no segments yet: no event of that source has been processed")
