"""The processors: what a run of input messages changes in journeys, the segment model and the rejection counts."""
