"""Events in: a CSV replayed into the events topic, replay jobs, and Segment-style tracking calls."""
