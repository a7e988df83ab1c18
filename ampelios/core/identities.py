"""One person across login: the events of a visitor linked to another become the other's.

A link says that visitor ``a`` is the same person as visitor ``u`` (the collector links an
anonymous id to the user id a call carries with it, :mod:`ampelios.core.collect`). It
travels as a ``MERGE`` row (visitor ``a``, item ``u``) to ``a``'s partition, where
:func:`follow_links` turns everything of ``a`` into ``u``'s: its stored journey and its
events in the run, and every later event of ``a``, which finds the link stored in place of
``a``'s journey (:func:`~ampelios.core.journeys.merged_value`). Since journeys hold
distinct events, the person's journey is the same whether ``a``'s events come before or
after the link, in any packing (``tests/unit/test_identities.py``).

Links are one level deep: a visitor is linked to one that is not itself linked (the
collector links anonymous ids to users only). A later link of the same visitor to another
moves only what comes after it. Events are moved once: another producer's ``$merge`` rows
could chain links or make them go round, and the events such links would move again --
those that arrive moved (in a message keyed :data:`MOVED_KEY`) for a visitor that is itself
linked, and those a link would move to a visitor linked on the same partition -- are
refused instead (round a cycle they would move for ever).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from ampelios.core.events import MERGE, EventBatch
from ampelios.core.journeys import JourneyState, merged_into

MOVED_KEY = b"$moved"  # the Kafka key of a message of events moved by links to their visitor


@dataclass(frozen=True)
class Followed:
    """A run's events once its links are followed: ``kept`` (those of visitors not linked),
    ``moved`` (rows of linked visitors, as their targets'), the visitors whose stored
    journeys leave (``gone``: their events are among ``moved``), the links the run made
    (visitor -> target) and the rows ``refused`` (moved once already, to a visitor that
    is itself linked)."""

    kept: EventBatch
    moved: EventBatch
    gone: np.ndarray
    links: dict[int, int]
    refused: EventBatch


def has_links(events: EventBatch, stored: Mapping[int, bytes]) -> bool:
    """Whether a run (and the stored values of its visitors) has a link to follow."""
    return bool((events.event == MERGE).any()) or any(merged_into(v) is not None for v in stored.values())


def link_targets(events: EventBatch, stored: Mapping[int, bytes]) -> set[int]:
    """The visitors that the links of a run and of its stored visitors point to, and
    whose stored values :func:`follow_links` needs as well (where this partition has them)."""
    targets = set(events.itemid[events.event == MERGE].tolist())
    targets.update(t for value in stored.values() if (t := merged_into(value)) is not None)
    return targets - stored.keys()


def follow_links(
    events: EventBatch, stored: Mapping[int, bytes], source_id: int, moved_to: Collection[int] = ()
) -> Followed:
    """Follow the links of ``events`` (one source) and those stored (``stored``: the
    values this partition has of the run's visitors and of the :func:`link_targets`).
    Refused: the rows of a visitor linked to one that is itself linked (and its stored
    journey), and those of a linked visitor of ``moved_to`` (the visitors that events
    moved by a link arrived for).

    >>> from ampelios.core.journeys import merged_value
    >>> run = EventBatch.from_columns([1, 1], [10, 20], [5, 6], [MERGE, 0], [9, 3], [-1, -1])
    >>> followed = follow_links(run, {6: merged_value(9)}, 1)
    >>> followed.links, followed.moved.visitorid.tolist(), len(followed.kept), len(followed.refused)
    ({5: 9}, [9], 0, 0)
    """
    linked = events.event == MERGE
    links = dict(zip(events.visitorid[linked].tolist(), events.itemid[linked].tolist()))  # a later one wins
    events = events.take(~linked)
    targets = {v: t for v, value in stored.items() if (t := merged_into(value)) is not None}
    targets.update(links)
    chained = {v for v, t in targets.items() if t in targets}  # linked to a visitor itself linked
    refuse = np.isin(events.visitorid, [*chained, *(v for v in moved_to if v in targets)])
    refused, events = [events.take(refuse)], events.take(~refuse)
    follows = np.isin(events.visitorid, list(targets))
    rows = events.take(follows)
    to = [targets[v] for v in rows.visitorid.tolist()]
    moved = [EventBatch.from_columns(rows.source_id, rows.timestamp, to, rows.event, rows.itemid, rows.transactionid)]
    gone = [v for v in links if v in stored and merged_into(stored[v]) is None]
    for v in gone:  # the stored journey of a visitor linked now goes with it
        past = JourneyState.from_bytes(stored[v]).events
        source, target = np.full(len(past), source_id), np.full(len(past), v if v in chained else targets[v])
        columns = (past["timestamp"], target, past["event"], past["itemid"], past["transactionid"])
        (refused if v in chained else moved).append(EventBatch.from_columns(source, *columns))
    return Followed(
        events.take(~follows),
        EventBatch.concat(moved),
        np.array(gone, dtype=np.int64),
        links,
        EventBatch.concat(refused),
    )
