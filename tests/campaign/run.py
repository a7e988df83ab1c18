"""One campaign run: Apache Kafka, Postgres and three workers in a temporary directory,
fed by a live producer (confluent-kafka, null keys, one event per message), a CSV replay
(``ampelios replay``, run again until it completes: a replayed event counts once) and
Segment's Python client through the collector (people who browse anonymously, log in and
buy: identifies that merge journeys) while the faults of a schedule strike, and
delivering segment changes to two webhook receivers (``steady``, subscribed in
``AMPELIOS_WEBHOOKS`` to every segment, and ``failing``, subscribed with ``POST
/webhooks`` to the buyers and cart abandoners, which the ``receiver`` fault takes down);
then what the stack answers once everything is reflected, to be judged against a clean
run of the same input (:func:`differences`), and what each receiver got, judged against
the run's own ``segment-changes`` records (:mod:`tests.campaign.deliveries`).
Every process is stopped by its own PID, paused ones resumed first."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import psycopg2
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as KafkaPartition
from segment.analytics import Client as SegmentClient
from standardwebhooks.webhooks import Webhook

from ampelios.config import Settings
from ampelios.core.collect import visitor_id
from ampelios.core.events import EventBatch, encode_each_event, write_csv
from ampelios.core.generate import generate_events
from ampelios.core.labels import CART_ABANDONERS, FIRST_TIME_BUYERS, REPEAT_BUYERS
from ampelios.core.webhooks import Subscription, membership_changes, new_secret
from ampelios.services.broker import bootstrap_servers
from ampelios.services.database import EmbeddedPostgres
from ampelios.services.kafka import ApacheKafka
from ampelios.services.processes import free_port
from ampelios.services.stack import WorkerProcess, http_json
from ampelios.services.webhook_receiver import Received, WebhookReceiver
from ampelios.topology import Topology
from tests.campaign.deliveries import Attempt, judge_deliveries, retried_under_the_same_id
from tests.campaign.schedule import Fault
from tests.integration.conftest import outcome, settle

WORKERS = 3
DATA_SEED = 2026  # the input: the same for every run of every seed


WRITE_KEY = "campaign"
STEADY, FAILING = "/steady", "/failing"  # the receivers' paths
BUYERS = [REPEAT_BUYERS, FIRST_TIME_BUYERS, CART_ABANDONERS]  # the failing receiver's segments
COLLECTED_FROM = datetime(2015, 6, 1, tzinfo=UTC)  # in the generated data's months


@dataclass(frozen=True)
class Size:
    """How much a run sends: ``events`` generated (half live, half replayed) and
    ``people`` through the collector, spread over ``span`` seconds; ``faults`` drawn in
    that span."""

    events: int
    people: int
    span: float
    faults: int


SIZES = {"tiny": Size(3_000, 40, 20.0, 3), "full": Size(20_000, 300, 90.0, 8)}


def workload(size: Size) -> tuple[EventBatch, EventBatch, list[int]]:
    """(live events in time order, replayed events, sampled visitors): a random half of
    the rows each, so that most visitors come through both; the sample holds 40 of their
    visitors and the first ten collected people."""
    events = generate_events(size.events, seed=DATA_SEED)
    live = np.random.default_rng(DATA_SEED).random(len(events)) < 0.5
    produced = events.take(np.flatnonzero(live)[np.argsort(events.timestamp[live], kind="stable")])
    visitors = np.unique(events.visitorid)
    sample = np.random.default_rng(DATA_SEED).choice(visitors, min(40, len(visitors)), replace=False).tolist()
    people = [visitor_id("user", f"user-{i}") for i in range(min(10, size.people))]
    return produced, events.take(np.flatnonzero(~live)), sorted(sample + people)


class Cluster:
    """Apache Kafka, Postgres and :data:`WORKERS` workers under ``root``, and the webhook
    receivers (:attr:`subscriptions`: path -> subscription)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broker = ApacheKafka(root / "broker.log", root / "kafka")
        self.postgres = EmbeddedPostgres(root / "postgres", root / "postgres.log")
        self.receiver = WebhookReceiver()
        self.subscriptions: dict[str, Subscription] = {}
        self.workers: list[WorkerProcess] = []
        self.logs: list[IO[bytes]] = []
        self.paused: set[int] = set()
        self.receiver_back: list[threading.Timer] = []
        self.receiver_down_until = 0.0  # time.monotonic()

    def start(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        steady = {"id": "steady", "url": self.receiver.url(STEADY), "source_id": 1, "secret": new_secret()}
        (self.root / "webhooks.json").write_bytes(orjson.dumps([steady]))
        base = Settings(
            broker=self.broker.start().url,
            database_url=self.postgres.start().url,
            data_dir=self.root / "data",
            partitions=4,
            replay_batch_events=500,
            snapshot_seconds=0.5,
            history_days=36_500.0,  # the generated months, all kept
            write_keys={WRITE_KEY: 1},
            webhooks=self.root / "webhooks.json",
        )
        for i in range(WORKERS):
            log = (self.root / f"worker-{i}.log").open("ab")
            self.logs.append(log)
            settings = base.with_(state_dir=self.root / f"worker-{i}", web_port=free_port())
            self.workers.append(WorkerProcess(settings, output=log).start(timeout=300))
        failing = {"url": self.receiver.url(FAILING), "source_id": 1}
        code, made = http_json("POST", f"{self.workers[0].base_url}/webhooks", failing | {"segments": BUYERS})
        if code != 201:
            raise RuntimeError(f"POST /webhooks answered {code}: {made}")
        self.subscriptions = {
            STEADY: Subscription.from_json(steady),
            FAILING: Subscription(made["id"], made["url"], made["secret"], 1, tuple(BUYERS)),
        }
        for sub in self.subscriptions.values():
            wait_for_first_commits(self.settings, sub.id)

    @property
    def settings(self) -> Settings:
        return self.workers[0].settings

    def stop(self) -> None:
        for timer in self.receiver_back:
            timer.cancel()
        for i, worker in enumerate(self.workers):
            if i in self.paused and worker.process is not None:
                worker.process.send_signal(signal.SIGCONT)
            worker.stop()
        self.broker.stop()
        self.postgres.stop()
        self.receiver.close()
        for log in self.logs:
            log.close()

    def strike(self, fault: Fault) -> None:
        """Apply one fault, whole (a paused worker is resumed, a stopped service started)."""
        worker = self.workers[fault.worker] if fault.worker >= 0 else None
        if fault.kind == "kill" and worker is not None:
            worker.kill()
            worker.start(timeout=300)
        elif fault.kind == "wipe" and worker is not None:
            worker.kill()
            shutil.rmtree(worker.settings.state_dir, ignore_errors=True)
            worker.start(timeout=300)
        elif fault.kind == "pause" and worker is not None and worker.process is not None:
            worker.process.send_signal(signal.SIGSTOP)
            self.paused.add(fault.worker)
            time.sleep(fault.seconds)
            worker.process.send_signal(signal.SIGCONT)
            self.paused.discard(fault.worker)
        elif fault.kind == "broker":
            self.broker.stop()
            time.sleep(fault.seconds)
            self.broker.start()
        elif fault.kind == "postgres":
            self.postgres.stop()
            time.sleep(fault.seconds)
            self.postgres.start()
        elif fault.kind == "receiver":  # down until the last outage drawn so far ends
            self.receiver.status[FAILING] = 503
            self.receiver_down_until = max(self.receiver_down_until, time.monotonic() + fault.seconds)
            self.receiver_back.append(threading.Timer(fault.seconds, self._receiver_back))
            self.receiver_back[-1].start()
        elif fault.kind == "stack":
            for worker in self.workers:
                worker.kill()
            self.broker.kill()
            self.postgres.kill()
            time.sleep(fault.seconds)
            self.postgres.start()
            self.broker.start()
            for worker in self.workers:
                worker.start(timeout=300)
        else:
            raise ValueError(f"no such fault: {fault}")

    def _receiver_back(self) -> None:
        if time.monotonic() >= self.receiver_down_until:
            self.receiver.status.pop(FAILING, None)


def produce_live(settings: Settings, events: EventBatch, span: float) -> None:
    """Send ``events`` one per message with null keys (librdkafka picks the partition),
    spread evenly over ``span`` seconds; librdkafka retries through a broker's restart."""
    producer = Producer(
        {"bootstrap.servers": bootstrap_servers(settings.broker_url), "linger.ms": 5, "log_level": 2}
    )  # its connection errors while the broker restarts are expected: critical ones only
    failures: list[str] = []
    topic, started = Topology.of(settings).events, time.monotonic()
    for n, value in enumerate(encode_each_event(events)):
        wait = started + span * n / len(events) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        producer.produce(topic, value, on_delivery=lambda err, msg: err is None or failures.append(str(err)))
        producer.poll(0)
    remaining = producer.flush(600)
    if remaining or failures:
        raise RuntimeError(f"the live producer lost {remaining} messages: {failures[:3]}")


def collect_people(base: str, people: int, span: float) -> None:
    """Through Segment's client to the collector of the worker at ``base``, spread over
    ``span`` seconds: each person views three products anonymously, logs in (an identify
    that links the anonymous id) and buys as the user. The client retries a failed
    request (the worker killed or paused meanwhile) with the same message ids."""
    errors: list[object] = []
    client = SegmentClient(
        WRITE_KEY, host=base, on_error=lambda e, batch: errors.append(e), max_retries=30, upload_interval=0.2
    )
    started = time.monotonic()
    for i in range(people):
        time.sleep(max(0.0, started + span * i / people - time.monotonic()))
        anonymous, user, at = f"anon-{i}", f"user-{i}", COLLECTED_FROM + timedelta(hours=i)
        for n in range(3):
            product = {"product_id": str(100 + n)}
            client.track(anonymous_id=anonymous, event="Product Viewed", properties=product, timestamp=at)
            at += timedelta(minutes=1)
        client.identify(user, anonymous_id=anonymous, timestamp=at)
        order = {"order_id": f"o-{i}", "products": [{"product_id": "100"}]}
        client.track(user, "Order Completed", order, timestamp=at + timedelta(minutes=1))
    client.flush()
    client.join()
    if errors:
        raise RuntimeError(f"the collector refused calls: {errors[:3]}")


def replay_until_done(settings: Settings, path: Path, attempts: int = 20) -> int:
    """``ampelios replay`` of ``path`` until it exits 0 (a broker restart can fail one);
    the attempts it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")} | settings.to_env()
    command = [sys.executable, "-m", "ampelios", "replay", str(path), "--source-id", "1"]
    for attempt in range(1, attempts + 1):
        if subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0:
            return attempt
        time.sleep(1.0)
    raise RuntimeError(f"ampelios replay of {path} failed {attempts} times")


def _kafka_consumer(settings: Settings, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap_servers(settings.broker_url),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 2,
        }
    )


def wait_for_first_commits(settings: Settings, subscription_id: str, timeout: float = 120.0) -> None:
    """Until the subscription's group has committed every partition of
    ``segment-changes`` (its members sent): a change written after that is delivered as
    a change, which is what :func:`judge_receivers` expects of every one."""
    topology = Topology.of(settings)
    consumer = _kafka_consumer(settings, topology.webhook_group(subscription_id))  # never joins
    partitions = [KafkaPartition(topology.segment_changes, p) for p in range(settings.partitions)]
    deadline = time.monotonic() + timeout
    try:
        while min(tp.offset for tp in consumer.committed(partitions, timeout=10)) < 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"webhook {subscription_id}: partitions not committed within {timeout}s")
            time.sleep(0.5)
    finally:
        consumer.close()


def written_changes(settings: Settings) -> list[dict[str, Any]]:
    """Every ``segment-changes`` record, in each partition's order (a visitor's records
    are all in one partition)."""
    topic = Topology.of(settings).segment_changes
    consumer = _kafka_consumer(settings, "campaign-judge")
    records: list[dict[str, Any]] = []
    try:
        for p in range(settings.partitions):
            low, high = consumer.get_watermark_offsets(KafkaPartition(topic, p), timeout=30)
            consumer.assign([KafkaPartition(topic, p, low)])
            offset = low
            while offset < high:
                message = consumer.poll(10)
                if message is None or message.error():
                    raise RuntimeError(f"{topic}[{p}] unreadable at {offset}: {message and message.error()}")
                records.append(orjson.loads(message.value()))
                offset = message.offset() + 1
    finally:
        consumer.close()
    return records


def judge_receivers(cluster: Cluster, timeout: float = 300.0) -> dict[str, Any]:
    """Each receiver's deliveries judged (:func:`judge_deliveries`) once they hold every
    change the run's records make, or ``timeout`` seconds after the failing receiver is
    back; with the ids retried under the same key."""
    for timer in cluster.receiver_back:
        timer.join()
    records = written_changes(cluster.settings)
    deadline = time.monotonic() + timeout
    while True:
        judged: dict[str, Any] = {}
        for path, sub in cluster.subscriptions.items():
            received = cluster.receiver.attempts(path)
            attempts = [Attempt(r.headers["webhook-id"], r.status, orjson.loads(r.body)) for r in received]
            unsigned = [
                f"the signature of {r.headers['webhook-id']} does not verify"
                for r in received
                if r.status < 300 and not verified_on_arrival(sub.secret, r)
            ]
            retried, failed = retried_under_the_same_id(attempts)
            expected = membership_changes(records, sub)
            judged[path] = {
                "changes": len(expected),
                "attempts": len(attempts),
                "failed ids retried under the same key": f"{retried} of {failed}",
                "problems": unsigned + judge_deliveries(expected, attempts),
            }
        if not any(j["problems"] for j in judged.values()) or time.monotonic() > deadline:
            return judged
        time.sleep(1.0)


def verified_on_arrival(secret: str, request: Received) -> bool:
    """Whether a receiver checking the Standard Webhooks headers as ``request`` arrived
    would have taken it: the signature of its id, timestamp and body, and a timestamp
    within the library's five minutes of its arrival (the judge looks later)."""
    stamp, message_id = int(request.headers["webhook-timestamp"]), request.headers["webhook-id"]
    signed = Webhook(secret).sign(message_id, datetime.fromtimestamp(stamp, UTC), request.body.decode())
    return abs(stamp - request.at) <= 300 and signed in request.headers["webhook-signature"].split(" ")


def stored_history(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """The Postgres rows SQL users read of segment periods, activity and alerts (those of
    the current lineage, alerts not withdrawn), without ids, lineages or model versions
    (they name the deployment); floats to 9 digits."""
    queries = {
        "period segments": "SELECT period_start, segment_id, label, size, visitors FROM current_period_segments "
        "WHERE source_id = 1",
        "period activity": "SELECT period_start, visitors, buyers, views, addtocarts, transactions "
        "FROM current_period_activity WHERE source_id = 1",
        "alerts": "SELECT signal, segment_id, label, direction, before, after, started_at, detected_at, "
        "recovered_at FROM segment_alerts JOIN current_lineages USING (source_id, lineage) "
        "WHERE source_id = 1 AND NOT withdrawn",
    }
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg2.connect(settings.database_url) as conn, conn.cursor() as cur:
        for name, query in queries.items():
            cur.execute(query)
            rounded = (tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in cur.fetchall())
            rows[name] = sorted(rounded, key=repr)
    return rows


@contextlib.contextmanager
def running(root: Path) -> Iterator[Cluster]:
    cluster = Cluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def run(root: Path, size: Size, schedule: list[Fault]) -> dict[str, Any]:
    """Feed a fresh cluster under ``root`` while ``schedule`` strikes; what it answers."""
    produced, replayed, sample = workload(size)
    with running(root) as cluster:
        path = root / "data" / "replayed.csv"
        with path.open("wb") as f:
            write_csv(replayed, f)
        errors: list[BaseException] = []

        def feed(target: Any, *args: Any) -> threading.Thread:
            def guarded() -> None:
                try:
                    target(*args)
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=guarded, daemon=True)
            thread.start()
            return thread

        started = time.monotonic()
        feeds = [
            feed(produce_live, cluster.settings, produced, size.span),
            feed(replay_until_done, cluster.settings, path),
            feed(collect_people, cluster.workers[-1].base_url, size.people, size.span),
        ]
        for fault in schedule:
            time.sleep(max(0.0, started + fault.at - time.monotonic()))
            cluster.strike(fault)
        for thread in feeds:
            thread.join(900)
        if errors or any(t.is_alive() for t in feeds):
            raise RuntimeError(f"a feed did not complete: {errors or 'still running'}")
        workers = enumerate(cluster.workers)
        gone = {i: w.process.returncode for i, w in workers if w.process is not None and w.process.poll() is not None}
        if gone:
            raise RuntimeError(f"workers exited on their own (worker: exit code): {gone}")
        bases = [w.base_url for w in cluster.workers]
        settle(*bases)
        answers = [outcome(cluster.settings, base, sample) for base in bases]
        return {
            "workers": answers,
            "postgres": stored_history(cluster.settings),
            "receivers": judge_receivers(cluster),
            "seconds": round(time.monotonic() - started, 1),
        }


def differences(clean: dict[str, Any], struck: dict[str, Any]) -> list[str]:
    """What a struck run answered differently from the clean one: a line per worker and
    part (days, alerts, stats, segments, Postgres visitors, sampled journeys), with its
    first differing item (every worker is judged against the clean run's first), a line
    per Postgres table, and what each receiver got wrong."""
    expected = clean["workers"][0]
    return [
        *(
            f"worker {i} {key}: {_first_difference(expected[key], value)}"
            for i, answers in enumerate(struck["workers"])
            for key, value in answers.items()
            if value != expected[key]
        ),
        *(
            f"Postgres {table}: {_first_difference(clean['postgres'][table], rows)}"
            for table, rows in struck["postgres"].items()
            if rows != clean["postgres"][table]
        ),
        *(f"receiver {path}: {problem}" for path, j in struck["receivers"].items() for problem in j["problems"]),
    ]


def _first_difference(expected: Any, got: Any) -> str:
    if isinstance(expected, list) and isinstance(got, list):
        if len(expected) != len(got):
            return f"{len(got)} items, {len(expected)} expected"
        for i, (e, g) in enumerate(zip(expected, got)):
            if e != g:
                return f"item {i}: {str(g)[:300]} instead of {str(e)[:300]}"
    if isinstance(expected, dict) and isinstance(got, dict):
        for k in sorted(set(expected) | set(got)):
            if expected.get(k) != got.get(k):
                return f"{k}: {str(got.get(k))[:300]} instead of {str(expected.get(k))[:300]}"
    return f"{str(got)[:300]} instead of {str(expected)[:300]}"
