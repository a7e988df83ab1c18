"""Options of the whole suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("embedded", "apache"),
        default="embedded",
        help="the broker integration tests run on: the embedded Tansu broker, or Apache Kafka "
        "(fetched from Maven Central with mvn, run with java)",
    )
