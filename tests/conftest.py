"""Options of the whole suite, and what a test needs from the machine."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("embedded", "apache"),
        default="embedded",
        help="the broker integration tests run on: the embedded Tansu broker, or Apache Kafka "
        "(fetched from Maven Central with mvn, run with java; only the tests marked apache run)",
    )
    parser.addoption(
        "--screenshot",
        default=None,
        help="where the dashboard test also saves its screenshot (make screenshot: docs/img/dashboard.png)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--broker=apache`` only the tests marked ``apache`` run: the rest does not
    depend on which broker carries the events, and the embedded run covers it."""
    if config.getoption("--broker") != "apache":
        return
    deselected = [item for item in items if item.get_closest_marker("apache") is None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("apache") is not None]


def require_tool(name: str, install: str) -> str:
    """The path of a program a test needs. Missing: the test is skipped on a developer's
    machine, and fails under ``.ci/run`` (which sets CI and installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run should have installed it")
        pytest.skip(message)
    return path
