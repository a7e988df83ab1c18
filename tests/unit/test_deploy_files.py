"""The production files in infra/ are valid: the compose file by Docker Compose's own
validator, every Ampelios setting in them by Ampelios's settings parser.

Docker's engine does not run on the project's machines, so neither file is run here
(docs/deploy.md says what was and was not run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from ampelios.config import Settings
from tests.conftest import require_tool

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_the_compose_file_is_valid_for_docker_compose():
    compose = require_tool("docker-compose", "Debian: apt-get install docker-compose")
    checked = subprocess.run(
        [compose, "-f", str(INFRA / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=INFRA,
    )
    assert checked.returncode == 0, checked.stderr


def test_every_worker_in_the_compose_file_has_valid_settings_and_its_own_address_and_state():
    compose = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    workers = {name: s for name, s in compose["services"].items() if name.startswith("worker")}
    assert len(workers) >= 2
    settings = [Settings.from_env({k: str(v) for k, v in w["environment"].items()}) for w in workers.values()]
    assert all(s.broker == "kafka://kafka:9092" and s.database_url for s in settings)
    assert len({s.web_url for s in settings}) == len(workers)  # each reachable by its own name
    assert len({frozenset(w["volumes"]) for w in workers.values()}) == len(workers)  # state apart
    assert len({s.partitions for s in settings}) == 1


def test_the_dockerfile_sets_only_valid_settings():
    dockerfile = (INFRA / "Dockerfile").read_text()
    env = dict(re.findall(r"(AMPELIOS_[A-Z_]+)=(\S+)", dockerfile))
    assert env and Settings.from_env(env).web_bind_address == "0.0.0.0"
