"""The adapter of other libraries' private names refuses a version that lacks one."""

import pytest
from faust.transport.consumer import Consumer

from ampelios import internals


def test_the_installed_versions_have_every_name_used():
    internals.check()


def test_a_missing_private_name_stops_the_start_with_one_line_naming_the_versions(monkeypatch):
    monkeypatch.delattr(Consumer, "_commit_offsets")
    with pytest.raises(internals.IncompatibleLibrary) as raised:
        internals.check()
    message = str(raised.value)
    assert "\n" not in message
    assert "faust-streaming==0.15.3" in message and "aiokafka==0.14.0" in message
    assert "faust.transport.consumer.Consumer._commit_offsets missing" in message
