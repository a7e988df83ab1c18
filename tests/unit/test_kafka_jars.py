"""The local Apache Kafka broker's jars: pinned, fetched once, each checked against its SHA-256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ampelios.services.kafka import KAFKA_VERSION, Jar, fetch_kafka, pinned_jars


def test_the_pinned_jars_are_kafka_and_what_it_runs_on():
    jars = pinned_jars()
    names = {(j.group, j.artifact) for j in jars}
    assert ("org.apache.kafka", "kafka_2.13") in names and ("org.apache.logging.log4j", "log4j-core") in names
    assert all(j.version == KAFKA_VERSION for j in jars if j.group == "org.apache.kafka")
    assert len(names) == len(jars) and all(len(j.sha256) == 64 for j in jars)
    kafka = next(j for j in jars if j.artifact == "kafka_2.13")
    assert (
        kafka.url("https://repo")
        == f"https://repo/org/apache/kafka/kafka_2.13/{KAFKA_VERSION}/kafka_2.13-{KAFKA_VERSION}.jar"
    )


def repository_with(tmp_path: Path, content: bytes) -> tuple[str, Jar]:
    """A Maven-style repository on disk holding one jar ``g.h:a:1`` with ``content``."""
    folder = tmp_path / "repo" / "g" / "h" / "a" / "1"
    folder.mkdir(parents=True)
    (folder / "a-1.jar").write_bytes(content)
    return (tmp_path / "repo").as_uri(), Jar("g.h", "a", "1", hashlib.sha256(b"the pinned jar").hexdigest())


def test_jars_are_fetched_once_and_kept(tmp_path: Path):
    repository, jar = repository_with(tmp_path, b"the pinned jar")
    lib = fetch_kafka("t", tmp_path / "cache", repository=repository, jars=[jar])
    assert (lib / "a-1.jar").read_bytes() == b"the pinned jar"
    (tmp_path / "repo" / "g" / "h" / "a" / "1" / "a-1.jar").unlink()  # the cache answers now
    assert fetch_kafka("t", tmp_path / "cache", repository=repository, jars=[jar]) == lib


def test_a_jar_whose_checksum_differs_is_refused_and_nothing_is_kept(tmp_path: Path):
    repository, jar = repository_with(tmp_path, b"something else")
    with pytest.raises(RuntimeError, match="not the pinned"):
        fetch_kafka("t", tmp_path / "cache", repository=repository, jars=[jar])
    assert not (tmp_path / "cache" / "lib").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".lock"]
