"""The Faust worker's root: it builds the app, its topics and tables, and wires agents,
processors, sinks and views; wiring only."""
