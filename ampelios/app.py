"""The Faust app, configured from the environment: ``faust -A ampelios.app worker``."""

from ampelios.config import Settings
from ampelios.services import event_loop
from ampelios.worker.app import create_pipeline

event_loop.install()
pipeline = create_pipeline(Settings.from_env())
app = pipeline.app
