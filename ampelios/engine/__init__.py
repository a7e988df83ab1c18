"""The exactly-once engine: each input partition's state, position and outputs in one write."""
