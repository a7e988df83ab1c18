"""The collector: Segment-style tracking calls in, events on the ``events`` topic out.

Every worker serves ``POST /v1/track``, ``/v1/page``, ``/v1/identify`` and ``/v1/batch``
(:mod:`ampelios.api.routes`). A request names its source by its write key
(``AMPELIOS_WRITE_KEYS``: write key -> source id), as Segment's clients send it: the user
of HTTP Basic auth, or ``writeKey`` in the body. :func:`accept` turns its calls into
events (:func:`ampelios.core.collect.collect`) and answers only once the broker has them:

- the events, one message per partition, on the partition that owns each visitor (as a
  replay sends them, :mod:`ampelios.core.partitioning`);
- each rejected call on the dead-letter topic (stage ``collector``) and the count of the
  ignored ones, so that ``/stats`` and ``/rejections`` count them as for files;
- the links of anonymous ids to users its calls made, in the global table every worker
  reads (``identities``), so that the next calls with only that anonymous id are the
  user's on any worker (once the link reached it: as the models do);
- the original ids of visitors seen for the first time, and again once their stamp is
  the active window old, in the global table ``visitor-names`` (one record per request,
  :mod:`ampelios.engine.visitor_names`), which notices hash collisions and names the
  visitors webhooks send.

The answer says what became of each call: ``{"success": true, "accepted": events,
"ignored": calls, "rejected": [{"index", "reason"}]}``. A request that is not JSON, too
large (32 KB per call, 500 KB per batch: Segment's limits) or whose only call is
rejected answers 400, as Segment does; in a batch, a rejected call loses nothing else.
"""

from __future__ import annotations

import base64
import binascii
import time
from functools import partial
from typing import Any

import numpy as np

from ampelios.core.collect import Collected, collect, visitor_id
from ampelios.core.events import MERGE, EventBatch, encode_events
from ampelios.core.partitioning import partitions_for
from ampelios.engine.outbox import Outbox
from ampelios.engine.visitor_names import DAY_MS
from ampelios.ingest.replay import ignored_record, rejection_record
from ampelios.runtime.pipeline import Pipeline, link_key

KINDS = ("track", "page", "identify")  # the single-call endpoints; /v1/batch says per call


class CollectorRefused(Exception):
    """A request the collector answers with ``status`` and the message, storing nothing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def write_key_of(authorization: str, body: dict[str, Any]) -> str | None:
    """The write key of a request: the user of ``Authorization: Basic``, else the body's
    ``writeKey``."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "basic" and credentials:
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CollectorRefused(401, "the Basic credentials are not base64 of writeKey:") from None
        return user.partition(":")[0] or None
    key = body.get("writeKey")
    return key if isinstance(key, str) and key else None


def source_of(p: Pipeline, authorization: str, body: dict[str, Any]) -> int:
    """The source a request sends to, by its write key (401 when unknown)."""
    if not p.settings.write_keys:
        raise CollectorRefused(401, "this worker collects no events: AMPELIOS_WRITE_KEYS names no write key")
    key = write_key_of(authorization, body)
    if key is None or key not in p.settings.write_keys:
        raise CollectorRefused(401, "an unknown write key: send one of AMPELIOS_WRITE_KEYS as the Basic auth user")
    return p.settings.write_keys[key]


async def accept(p: Pipeline, authorization: str, body: dict[str, Any], kind: str | None) -> Collected:
    """Collect the calls of one request (``kind``: the endpoint's call type, ``None`` for
    a batch) and send what they give; return what was collected once the broker has it all."""
    source_id = source_of(p, authorization, body)
    if kind is None:
        calls = body.get("batch")
        if not isinstance(calls, list):
            raise CollectorRefused(400, "a batch needs a list of calls in batch")
    else:
        calls = [body]
    linked, named = partial(p.linked_user, source_id), partial(p.original_id, source_id)
    now = round(time.time() * 1000)
    got = collect(calls, source_id, p.collector_codes, now, body.get("sentAt"), kind, linked, named)
    # The names before the events (a call after this answer finds them); the links after
    # their merges are acknowledged, so that a retry after a crash in between links (and
    # merges) again. A call that meanwhile finds no link still ends as the user's: its
    # events follow the merge on the anonymous visitor's partition.
    await p.names.publish_names(source_id, p.names.stamps(source_id, got.names, _newest_days(got.events)))
    await _send(p, source_id, got, now)
    await p.identities.publish_many([(link_key(source_id, anonymous), user.encode()) for anonymous, user in got.links])
    if kind is not None and got.rejections:  # a single call: Segment answers 400
        raise CollectorRefused(400, got.rejections[0].reason)
    return got


def _newest_days(events: EventBatch) -> dict[int, int]:
    """visitor -> the event-time day of its newest event in ``events``."""
    if not len(events):
        return {}
    visitors, owner = np.unique(events.visitorid, return_inverse=True)
    days = np.zeros(len(visitors), dtype=np.int64)
    np.maximum.at(days, owner, events.timestamp // DAY_MS)
    return dict(zip(visitors.tolist(), days.tolist()))


async def _send(p: Pipeline, source_id: int, got: Collected, now: int) -> None:
    """Send the events of ``got``, a ``MERGE`` row per link it made (on the anonymous
    visitor's partition: its journey joins the user's there), and its dead letters."""
    topology, box = p.topology, Outbox()
    events = got.events
    if got.links:
        anonymous = [visitor_id("anonymous", a) for a, _ in got.links]
        users = [visitor_id("user", u) for _, u in got.links]
        n = len(anonymous)
        merges = EventBatch.from_columns([source_id] * n, [now] * n, anonymous, [MERGE] * n, users, [-1] * n)
        events = EventBatch.concat([events, merges])
    if len(events):
        visitors, owner = np.unique(events.visitorid, return_inverse=True)
        partition = partitions_for(np.full(len(visitors), source_id), visitors, topology.partitions)[owner]
        for part in np.unique(partition).tolist():
            box.add(topology.events, None, encode_events(events.take(partition == part)), part)
    key = b"%d" % source_id
    for rejection in got.rejections:
        box.add(topology.dead_letters, key, rejection_record(source_id, rejection, "collector"))
    if got.ignored:
        box.add(topology.dead_letters, key, ignored_record(source_id, got.ignored))
    await box.send(p.app.producer)
