"""Prometheus metrics of one worker, served at ``GET /metrics`` in the text format.

Counters and the histogram are this worker's since it started (Prometheus adds the
workers up and handles restarts); gauges are read when scraped:

===========================================  ==========================================
metric                                       meaning
===========================================  ==========================================
ampelios_events_processed_total{source_id}   events applied to journeys (new events;
                                             duplicates of stored ones are not counted)
ampelios_events_rejected_total{source_id}    rows and messages dead-lettered by the worker
ampelios_events_forwarded_total{source_id}   events that arrived on a partition not owning
                                             their visitor, forwarded to the owner
ampelios_batch_seconds{agent}                time to apply one batch (journeys: a group of
                                             events messages; segments: a run of deltas)
ampelios_lag{kind}                           records not yet reflected (``kind="stream"``)
                                             or not yet in Postgres (``kind="sink"``),
                                             over all workers
ampelios_segment_visitors{source_id,segment,label}  visitors per segment
ampelios_model_version{source_id}            version of the segment model
ampelios_replay_jobs{state}                  replay jobs started on this worker, by state
ampelios_alerts{source_id,signal,segment,    drift alerts (docs/history.md), ``state`` open
direction,state}                             or recovered; segment empty but for shares
ampelios_changelog_records_recovered{table}  changelog records this worker read into its
                                             local tables since it started (a restart on
                                             kept local state reads only the newer ones)
ampelios_webhook_deliveries_total            webhook deliveries this worker made, by
{subscription,outcome}                       attempt: ``delivered`` (2xx) or ``failed``
                                             (retried)
ampelios_webhook_changes_total{subscription}  enters, exits and members delivered
ampelios_webhook_seconds{subscription}       from a segment-changes record's write to
                                             the receiver's 2xx, retries included
===========================================  ==========================================
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ampelios.core.model import SegmentModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The metrics of one worker, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("ampelios_events_processed", "Events applied to journeys", ["source_id"], registry=r)
        self.rejected = Counter(
            "ampelios_events_rejected", "Rows and messages dead-lettered by the worker", ["source_id"], registry=r
        )
        self.forwarded = Counter(
            "ampelios_events_forwarded",
            "Events forwarded to the partition owning their visitor",
            ["source_id"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ampelios_batch_seconds", "Time to apply one batch", ["agent"], buckets=BATCH_BUCKETS, registry=r
        )
        self.lag = Gauge("ampelios_lag", "Records not yet reflected (stream) or written (sink)", ["kind"], registry=r)
        self.segment_visitors = Gauge(
            "ampelios_segment_visitors", "Visitors per segment", ["source_id", "segment", "label"], registry=r
        )
        self.model_version = Gauge("ampelios_model_version", "Version of the segment model", ["source_id"], registry=r)
        self.replay_jobs = Gauge("ampelios_replay_jobs", "Replay jobs started on this worker", ["state"], registry=r)
        self.alerts = Gauge(
            "ampelios_alerts",
            "Drift alerts of a source's signals, open (not recovered) or recovered",
            ["source_id", "signal", "segment", "direction", "state"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "ampelios_webhook_deliveries",
            "Webhook delivery attempts, delivered (2xx) or failed (retried)",
            ["subscription", "outcome"],
            registry=r,
        )
        self.webhook_changes = Counter(
            "ampelios_webhook_changes", "Enters, exits and members delivered", ["subscription"], registry=r
        )
        self.webhook_seconds = Histogram(
            "ampelios_webhook_seconds",
            "From a segment-changes record's write to the receiver's 2xx",
            ["subscription"],
            buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
            registry=r,
        )
        self.recovered = Gauge(
            "ampelios_changelog_records_recovered",
            "Changelog records read into local tables since the worker started",
            ["table"],
            registry=r,
        )

    def render(
        self,
        pending: Mapping[str, Any],
        models: Iterable[tuple[int, SegmentModel]],
        job_states: Iterable[str],
        recovered: Mapping[str, int],
        alerts: Iterable[Mapping[str, Any]] = (),
    ) -> bytes:
        """The text exposition, after setting the gauges from the state given."""
        self.alerts.clear()
        for alert in alerts:
            if not alert.get("withdrawn"):
                segment = "" if alert["segment"] is None else str(alert["segment"])
                state = "recovered" if alert["recovered_at"] is not None else "open"
                labels = (str(alert["source_id"]), alert["signal"], segment, alert["direction"], state)
                self.alerts.labels(*labels).inc()
        for table, records in recovered.items():
            self.recovered.labels(table).set(records)
        self.lag.labels("stream").set(pending["lag"])
        self.lag.labels("sink").set(pending["sink_lag"])
        self.segment_visitors.clear()
        for source_id, model in models:
            self.model_version.labels(str(source_id)).set(model.version)
            for segment, (label, size) in enumerate(zip(model.labels, model.sizes.tolist())):
                self.segment_visitors.labels(str(source_id), str(segment), label).set(size)
        states = Tally(job_states)
        for state in ("running", "done", "failed"):
            self.replay_jobs.labels(state).set(states[state])
        return generate_latest(self.registry)
