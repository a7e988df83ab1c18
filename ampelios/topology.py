"""Names and sizes of every topic Ampelios uses, in one place.

=====================  ==========  ====================================================
topic                  partitions  carries
=====================  ==========  ====================================================
events                 N           browser events (input; key ``source:visitor``)
events-dlq             N           rejected rows and messages, with reason and position
segment-changes        N           a visitor's own events moved it to another segment
                                   (output for downstream systems; key ``source:visitor``)
segment-alerts         1           a signal of a source shifted or recovered (output;
                                   key ``source``; docs/history.md)
<app>-segment-updates  1           per-batch population deltas and snapshot requests;
                                   the model's one owner applies them in order
<app>-visitor-updates  N           per-batch journey shapes of changed visitors (to SQL)
<app>-snapshots        1           segment snapshots, wall and event time (to SQL)
<app>-epoch            1           the broker's life, to detect an emptied broker
=====================  ==========  ====================================================

Faust adds the changelog topics of the tables (``<app>-<table>-changelog``). The
Postgres sink reads ``segment-changes``, ``segment-alerts``, ``<app>-visitor-updates``
and ``<app>-snapshots`` with a consumer group of its own, so a slow or absent database never
holds up the stream; each webhook subscription reads ``segment-changes`` in a group of its
own (``<app>-webhook-<id>``), so a receiver that is down holds up nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from ampelios.config import Settings
from ampelios.services.broker import TopicSpec


@dataclass(frozen=True)
class Topology:
    app_id: str
    partitions: int

    @classmethod
    def of(cls, settings: Settings) -> Topology:
        return cls(settings.app_id, settings.partitions)

    @property
    def events(self) -> str:
        return "events"

    @property
    def dead_letters(self) -> str:
        return "events-dlq"

    @property
    def segment_changes(self) -> str:
        return "segment-changes"

    @property
    def segment_alerts(self) -> str:
        return "segment-alerts"

    @property
    def segment_updates(self) -> str:
        return f"{self.app_id}-segment-updates"

    @property
    def visitor_updates(self) -> str:
        return f"{self.app_id}-visitor-updates"

    @property
    def snapshots(self) -> str:
        return f"{self.app_id}-snapshots"

    @property
    def epoch(self) -> str:
        return f"{self.app_id}-epoch"

    @property
    def sink_group(self) -> str:
        """Consumer group of the Postgres sink."""
        return f"{self.app_id}-postgres"

    def webhook_group(self, subscription_id: str) -> str:
        """Consumer group of one webhook subscription's deliveries."""
        return f"{self.app_id}-webhook-{subscription_id}"

    def topics(self) -> list[TopicSpec]:
        """The topics to create before anything produces or consumes."""
        return [
            TopicSpec(self.events, self.partitions),
            TopicSpec(self.dead_letters, self.partitions),
            TopicSpec(self.segment_changes, self.partitions),
            TopicSpec(self.segment_alerts, 1),
            TopicSpec(self.segment_updates, 1),
            TopicSpec(self.visitor_updates, self.partitions),
            TopicSpec(self.snapshots, 1),
        ]
