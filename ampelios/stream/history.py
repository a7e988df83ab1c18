"""Snapshots of the segments into Postgres, every ``AMPELIOS_SNAPSHOT_SECONDS``.

Only the worker that owns the segment model writes, and only when the model changed
since its last snapshot. Without ``AMPELIOS_DATABASE_URL`` there is no history.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiokafka.structs import TopicPartition
from mode import Service

from ampelios.core.model import SegmentModel
from ampelios.services.database import History
from ampelios.stream.app import Pipeline

log = logging.getLogger(__name__)


class SnapshotWriter(Service):
    """Writes a snapshot of every source's segments when its model has changed."""

    def __init__(self, pipeline: Pipeline, url: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pipeline = pipeline
        self.history = History(url)
        self.written: dict[bytes, int] = {}

    async def on_start(self) -> None:
        version = await self.history.start()
        log.info("Postgres history ready (schema version %s)", version)

    async def on_stop(self) -> None:
        await self.history.stop()

    @Service.task
    async def _snapshots(self) -> None:
        interval = self.pipeline.settings.snapshot_seconds
        while not self.should_stop:
            await self.sleep(interval)
            try:
                await self.write_changed()
            except Exception:
                log.exception("could not write segment snapshots; will retry")

    def owns_model(self) -> bool:
        p = self.pipeline
        return TopicPartition(p.topology.segment_updates, 0) in p.app.assignor.assigned_actives()

    async def write_changed(self) -> int:
        """Write a snapshot of each source whose model changed; return how many."""
        if not self.owns_model():
            return 0
        written = 0
        now = datetime.now(UTC)
        for key, value in self.pipeline.segments.items_with_prefix(0, b"model:"):
            model = SegmentModel.from_bytes(value)
            if self.written.get(key) == model.version:
                continue
            source_id = int(key.split(b":")[1])
            await self.history.write_snapshot(
                source_id, now, model.version, model.sizes.tolist(), model.units.tolist(), model.labels
            )
            self.written[key] = model.version
            written += 1
        return written


def register(p: Pipeline) -> None:
    if p.settings.database_url is None:
        log.warning("AMPELIOS_DATABASE_URL is not set: segment history is not kept")
        return
    p.app.service(SnapshotWriter(p, p.settings.database_url))  # type: ignore[arg-type]
