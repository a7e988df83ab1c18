"""Settings come from AMPELIOS_* variables, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ampelios.config import ConfigError, Settings


def test_defaults_and_round_trip_through_the_environment():
    settings = Settings.from_env({})
    assert settings.broker is None and settings.k == 5 and settings.session_gap_ms == 20 * 60_000
    custom = Settings.from_env(
        {
            "AMPELIOS_K": "6,2=8",
            "AMPELIOS_STATE_DIR": "/tmp/x",
            "AMPELIOS_BROKER": "kafka://h:9092",
            "AMPELIOS_PARTITIONS": "3",
            "AMPELIOS_EVENT_MAP": "product_view=view, purchase=transaction, page_view=ignore",
            "AMPELIOS_LOCAL_BROKER": "tansu",
        }
    )
    assert (settings.local_broker, custom.local_broker) == ("kafka", "tansu")
    assert (custom.k_for(1), custom.k_for(2), custom.state_dir, custom.partitions) == (6, 8, Path("/tmp/x"), 3)
    assert custom.event_map == {"product_view": "view", "purchase": "transaction", "page_view": "ignore"}
    assert Settings.from_env(custom.to_env()) == custom


def test_the_number_of_segments_can_be_chosen_automatically_for_every_source_or_some():
    auto = Settings.from_env({"AMPELIOS_K": "auto,2=8"})
    assert (auto.k_for(1), auto.k_for(2)) == (None, 8)
    some = Settings.from_env({"AMPELIOS_K": "6,3=auto"})
    assert (some.k_for(1), some.k_for(3)) == (6, None)
    assert Settings.from_env({"AMPELIOS_K": "2=auto"}).k_for(1) == 5  # the default stays
    for settings in (auto, some):
        assert Settings.from_env(settings.to_env()) == settings


def test_a_worker_binds_where_asked_and_is_reached_by_its_host_name():
    alone = Settings.from_env({"AMPELIOS_WEB_PORT": "7000"})
    assert (alone.web_bind_address, alone.web_url) == ("127.0.0.1", "http://127.0.0.1:7000")
    in_a_container = Settings.from_env({"AMPELIOS_WEB_HOST": "worker-2", "AMPELIOS_WEB_BIND": "0.0.0.0"})
    assert (in_a_container.web_bind_address, in_a_container.web_url) == ("0.0.0.0", "http://worker-2:6066")
    assert Settings.from_env(in_a_container.to_env()) == in_a_container


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AMPELIOS_WEB_PORT": "http"}, "AMPELIOS_WEB_PORT must be an integer"),
        ({"AMPELIOS_WEB_PORT": "70000"}, "AMPELIOS_WEB_PORT must be a TCP port (1-65535)"),
        ({"AMPELIOS_K": "0"}, "AMPELIOS_K must be positive"),
        ({"AMPELIOS_K": "5,6"}, "default k twice"),
        ({"AMPELIOS_K": "5,x=3"}, "not a source id"),
        ({"AMPELIOS_BROKER": "localhost:9092"}, "kafka://host:port"),
        ({"AMPELIOS_SESSION_GAP_MINUTES": "-1"}, "must be positive"),
        ({"AMPELIOS_PARTITON": "8"}, "unknown setting(s) AMPELIOS_PARTITON"),
        ({"AMPELIOS_EVENT_MAP": "purchase=buy"}, "name=transaction or name=ignore"),
        ({"AMPELIOS_EVENT_MAP": "purchase"}, "must look like name=view"),
        ({"AMPELIOS_EVENT_MAP": "a=view,a=addtocart"}, "maps 'a' twice"),
        ({"AMPELIOS_LOCAL_BROKER": "memory"}, "must be kafka (keeps its state) or tansu (in memory)"),
    ],
)
def test_bad_values_name_the_variable(env, words):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert words in str(error.value)
