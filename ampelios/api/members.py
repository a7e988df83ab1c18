"""The members of a segment, page by page or whole, read from the journeys table.

A listing walks the events partitions in order (0, 1, ...) and, in each, the source's
journeys in key order, classifying them a chunk at a time (:data:`CHUNK` journeys, one
vectorized decode and assignment each) under one model: the one published when the
listing began, *pinned* in its :class:`MemberCursor`. So every page of a listing answers
under the same model, each visitor appears at most once, and a visitor who changes
segment between pages is listed by where the pinned model puts its journey when its
page is read. The order is the store's (partition, then the visitor id as text), not
numeric; the cursor is opaque.

Any worker answers: partitions it holds are read locally, the others by the worker that
holds them (``local=true`` requests of one partition, relayed). A whole segment streams
as CSV or NDJSON with bounded memory (one chunk at a time).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from ampelios.core.journeys import FEATURE_NAMES, N_FEATURES, stored_features
from ampelios.core.model import SegmentModel
from ampelios.engine.batch_table import BatchTable
from ampelios.processors.journey_store import scan_journeys
from ampelios.runtime.cluster import PeerUnavailable, ask, holder_of, own_url
from ampelios.runtime.pipeline import Pipeline

CHUNK = 10_000  # journeys read, decoded and classified at a time
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
CSV_HEADER = (",".join(("visitorid", *FEATURE_NAMES)) + "\n").encode()

_CURSOR = struct.Struct("<BIHHqqB")  # format, source, segment, partition, after, model version, k
_CURSOR_FORMAT = 1


@dataclass(frozen=True)
class MemberCursor:
    """Where a listing of one segment's members stands: the model it classifies with
    (pinned at the first page), the partition it is in and the last visitor id it
    returned there (-1: none yet). ``token`` is its URL-safe text form."""

    source_id: int
    segment: int
    model: SegmentModel
    partition: int = 0
    after: int = -1

    def token(self) -> str:
        m = self.model
        head = _CURSOR.pack(_CURSOR_FORMAT, self.source_id, self.segment, self.partition, self.after, m.version, m.k)
        body = m.active.astype(np.uint8).tobytes() + m.scale.tobytes() + m.centroids.tobytes()
        label = m.labels[self.segment].encode()
        return base64.urlsafe_b64encode(head + body + label).rstrip(b"=").decode()

    @classmethod
    def parse(cls, token: str) -> MemberCursor:
        """The cursor of a token; ValueError if it is not one."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            fmt, source_id, segment, partition, after, version, k = _CURSOR.unpack_from(raw)
        except (binascii.Error, struct.error, ValueError):
            raise ValueError("after names no page of a listing: pass the next of the previous page") from None
        sizes = (k, 8 * N_FEATURES, 8 * N_FEATURES * k)
        if fmt != _CURSOR_FORMAT or not 0 <= segment < k or len(raw) < _CURSOR.size + sum(sizes):
            raise ValueError("after names no page of a listing: pass the next of the previous page")
        at = _CURSOR.size
        active = np.frombuffer(raw, np.uint8, k, at).astype(bool)
        scale = np.frombuffer(raw, np.float64, N_FEATURES, at + sizes[0])
        centroids = np.frombuffer(raw, np.float64, N_FEATURES * k, at + sizes[0] + sizes[1]).reshape(k, N_FEATURES)
        labels = [""] * k
        labels[segment] = raw[at + sum(sizes) :].decode(errors="replace")
        zeros = np.zeros(k, dtype=np.int64)
        model = SegmentModel(centroids, active, scale, zeros, np.zeros((k, N_FEATURES)), labels, version=version)
        return cls(source_id, segment, model, partition, after)

    def at(self, partition: int, after: int = -1) -> MemberCursor:
        return replace(self, partition=partition, after=after)


@dataclass(frozen=True)
class Members:
    """Members read from one partition: visitor ids (n,), their six features (n, 6), and
    the last visitor id read (``None``: the partition has no more journeys)."""

    visitors: np.ndarray
    features: np.ndarray
    last: int | None

    def __len__(self) -> int:
        return len(self.visitors)

    def head(self, n: int) -> Members:
        """The first ``n``; the partition then goes on after the n-th."""
        if n >= len(self):
            return self
        return Members(self.visitors[:n], self.features[:n], int(self.visitors[n - 1]))

    def page(self) -> list[dict[str, object]]:
        return [{"visitorid": v, "features": f} for v, f in zip(self.visitors.tolist(), self.features.tolist())]

    def csv(self) -> bytes:
        rows = zip(self.visitors.tolist(), *self.features.T.tolist())
        return "".join(
            f"{visitor},{views:.0f},{carts:.0f},{buys:.0f},{visits:.0f},{per_visit:.6g},{ratio:.6g}\n"
            for visitor, views, carts, buys, visits, per_visit, ratio in rows
        ).encode()

    def ndjson(self) -> bytes:
        return b"".join(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in self.page())


def read_journeys(
    table: BatchTable, source_id: int, partition: int, after: int, gap_ms: int, window_ms: int | None, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """The next ``chunk`` journeys of a source in ``partition`` after visitor ``after``
    (-1: from the first), in key order: visitor ids, six features, active flags, and the
    last visitor id read (``None``: no more journeys). Blocking: run it in a thread."""
    prefix = b"%d:" % source_id
    start = prefix if after < 0 else b"%d:%d\x00" % (source_id, after)
    keys, values = [], []
    for key, value in scan_journeys(table, partition, start, b"%d;" % source_id):
        keys.append(key)
        values.append(value)
        if len(keys) == chunk:
            break
    visitors = np.array([int(k[len(prefix) :]) for k in keys], dtype=np.int64)
    features, active = stored_features(values, gap_ms, window_ms)
    return visitors, features, active, int(visitors[-1]) if len(keys) == chunk else None


def read_members(
    table: BatchTable, cursor: MemberCursor, gap_ms: int, window_ms: int | None, chunk: int = CHUNK
) -> Members:
    """The members among the next ``chunk`` journeys of the cursor's partition after its
    visitor, classified under its model. Blocking: run it in a thread."""
    visitors, features, active, last = read_journeys(
        table, cursor.source_id, cursor.partition, cursor.after, gap_ms, window_ms, chunk
    )
    mine = active & (cursor.model.assign(features) == cursor.segment) if len(visitors) else active
    return Members(visitors[mine], features[mine], last)


def first_members(
    table: BatchTable,
    partitions: list[int],
    source_id: int,
    model: SegmentModel,
    limit: int,
    gap_ms: int,
    window_ms: int | None,
) -> list[list[int]]:
    """Up to ``limit`` visitor ids of every segment from ``partitions`` (each read in key
    order, one chunk at a time, until every segment has its ``limit`` or all its
    members). Blocking: run it in a thread."""
    found: list[list[int]] = [[] for _ in range(model.k)]
    wanted = np.minimum(limit, model.sizes)
    for partition in partitions:
        after: int | None = -1
        while after is not None and any(len(f) < w for f, w in zip(found, wanted.tolist())):
            visitors, features, active, after = read_journeys(
                table, source_id, partition, after, gap_ms, window_ms, CHUNK
            )
            if not len(visitors):
                break
            segments = model.assign(features)
            for visitor, segment in zip(visitors[active].tolist(), segments[active].tolist()):
                if len(found[segment]) < limit:
                    found[segment].append(visitor)
    return [sorted(ids) for ids in found]


class MemberPages:
    """Pages of a segment's members, each partition read here when this worker holds it,
    else asked of the worker that does (``local=true``). PeerUnavailable when no worker
    holds a partition right now or its holder does not answer."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.journeys_topic = p.journeys.changelog_topic.get_topic_name()

    def holder(self, partition: int) -> str:
        """URL of the other worker that holds ``partition``."""
        url = holder_of(self.p.app, self.journeys_topic, partition)
        if url is None or url == own_url(self.p.app):
            raise PeerUnavailable(f"no worker holds partition {partition} right now (a rebalance is under way)")
        return url

    @staticmethod
    def path(cursor: MemberCursor, query: str) -> str:
        """The request that asks the holder of the cursor's partition for what follows it."""
        c = cursor
        return f"/segments/{c.segment}/members?source_id={c.source_id}&after={c.token()}&local=true&{query}"

    async def page(self, cursor: MemberCursor, limit: int, local: bool) -> tuple[list[Any], MemberCursor | None]:
        """Up to ``limit`` members from the cursor on and the cursor after them (``None``:
        no more); with ``local``, of the cursor's partition only."""
        p = self.p
        found: list[Any] = []
        gap_ms, window_ms = p.settings.session_gap_ms, p.settings.active_window_ms
        at: MemberCursor | None = cursor
        while at is not None and len(found) < limit:
            following: MemberCursor | None
            if at.partition in p.local_partitions():
                read = await asyncio.to_thread(read_members, p.journeys, at, gap_ms, window_ms)
                read = read.head(limit - len(found))
                found += read.page()
                following = at.at(at.partition, read.last) if read.last is not None else None
            else:
                url, path_qs = self.holder(at.partition), self.path(at, f"limit={limit - len(found)}")
                status, answer = await ask(p.app, url, path_qs, p.settings.api_token)
                if status != 200:
                    raise PeerUnavailable(f"worker {url} answered {status} to {path_qs}: {answer.get('error')}")
                found += answer["members"]
                following = MemberCursor.parse(answer["next"]) if answer["next"] else None
            if following is None and not local and at.partition + 1 < p.settings.partitions:
                following = at.at(at.partition + 1)
            at = following
        return found, at
