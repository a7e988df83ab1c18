"""Ampelios: behaviour-based customer segments from browser events, continuously.

The package is laid out the way one event travels:

- ``ampelios.core``: pure functions and small classes over numpy arrays (parsing and
  validation, partitioning, sessionization and features, the online segment model,
  look-alike data). No Faust, no I/O beyond reading a CSV.
- ``ampelios.ingest``: events in: a CSV replayed into the events topic, Segment-style
  tracking calls.
- ``ampelios.engine``: exactly once over Faust: each input partition's state, position
  and outputs in one write.
- ``ampelios.processors``: what a run of messages changes: journeys, the segment model,
  rejection counts.
- ``ampelios.worker``: the thin Faust shell: app, topics, tables, agents (wiring only).
- ``ampelios.sinks``: where segments go: Postgres history, webhooks.
- ``ampelios.api``: the HTTP API every worker serves.
- ``ampelios.services``: the processes Ampelios can start for itself (embedded broker,
  embedded Postgres, Apache Kafka) and the one-command stack.
- ``ampelios.cli``: the ``ampelios`` command.
"""

__version__ = "0.1.0"
