"""Ampelios: behaviour-based customer segments from browser events, continuously.

The package is laid out the way one event travels:

- ``ampelios.core``: pure functions and small classes over numpy arrays (parsing and
  validation, partitioning, sessionization and features, the online segment model,
  look-alike data). No Faust, no I/O beyond reading a CSV.
- ``ampelios.stream``: the thin Faust shell (app, topics, tables, agents, web views) and
  the replay of a CSV into the events topic.
- ``ampelios.services``: the processes Ampelios can start for itself (embedded broker,
  embedded Postgres), the Postgres history, and the one-command stack.
- ``ampelios.cli``: the ``ampelios`` command.
"""

__version__ = "0.1.0"
