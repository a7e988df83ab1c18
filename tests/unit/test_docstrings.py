"""The examples in the docstrings are true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "ampelios.core.events",
    "ampelios.core.explain",
    "ampelios.core.generate",
    "ampelios.core.identities",
    "ampelios.core.journeys",
    "ampelios.core.k_choice",
    "ampelios.core.labels",
    "ampelios.core.model",
    "ampelios.core.partitioning",
    "ampelios.core.population",
    "ampelios.sinks.history",
    "ampelios.engine.outbox",
    "tests.campaign.deliveries",
    "tests.campaign.schedule",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
