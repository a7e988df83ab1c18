"""A worker whose table recovery does not finish says so and exits with code 70."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_recovery_that_never_finishes_ends_the_worker_with_code_70(tmp_path):
    # Faust's recovery service is replaced by one that stays in recovery with records left
    # to read: the watchdog alone is under test (no broker is needed to build the app).
    script = textwrap.dedent(
        f"""
        import asyncio, logging
        from types import SimpleNamespace
        from aiokafka.structs import TopicPartition
        from pathlib import Path
        from ampelios.config import Settings
        from ampelios.worker.app import create_pipeline

        logging.basicConfig(level=logging.INFO)
        app = create_pipeline(Settings(state_dir=Path({str(tmp_path)!r}))).app
        recovery = SimpleNamespace(
            in_recovery=True,
            completed=asyncio.Event(),
            active_remaining=lambda: {{TopicPartition("ampelios-journeys-changelog", 3): 1234}},
        )
        app.__dict__["tables"] = SimpleNamespace(recovery=recovery)  # app.tables is a cached property
        asyncio.run(app._watch_recovery(timeout=1.5))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 70, run.stderr[-3000:]
    assert "Table recovery did not finish within 2 s" in run.stderr
    assert "'ampelios-journeys-changelog[3]': 1234" in run.stderr
