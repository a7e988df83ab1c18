"""What a running worker has and its parts share: the pipeline (settings, app, topics,
tables), metrics, and the other workers."""
