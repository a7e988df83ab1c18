"""Names and sizes of every topic Ampelios uses, in one place.

=====================  ==========  ====================================================
topic                  partitions  carries
=====================  ==========  ====================================================
events                 N           browser events (input; key ``source:visitor``)
events-dlq             N           rejected rows and messages, with reason and position
<app>-segment-updates  1           per-batch model deltas; one owner applies them
<app>-epoch            1           the broker's life, to detect an emptied broker
=====================  ==========  ====================================================

Faust adds the changelog topics of the tables (``<app>-<table>-changelog``).
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
    def segment_updates(self) -> str:
        return f"{self.app_id}-segment-updates"

    @property
    def epoch(self) -> str:
        return f"{self.app_id}-epoch"

    def topics(self) -> list[TopicSpec]:
        """The topics to create before anything produces or consumes."""
        return [
            TopicSpec(self.events, self.partitions),
            TopicSpec(self.dead_letters, self.partitions),
            TopicSpec(self.segment_updates, 1),
        ]
