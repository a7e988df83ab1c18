"""Names of collected visitors: kept while they may be segmented, then forgotten with their
records, whatever order or compaction the changelog's records come through."""

from __future__ import annotations

import tempfile

import numpy as np
import rocksdict
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.engine.changelog import pack_pairs
from ampelios.engine.visitor_names import (
    NameChanges,
    keep_days,
    name_key,
    name_value,
    read_name,
    record_key,
    refresh_days,
)

OFFSET = b"__offset__"
Log = list[tuple[bytes, bytes | None]]


def original(visitor: int) -> str:
    return f"anonymous:a-{visitor}"


def publish(db: rocksdict.Rdict, log: Log, keep: int | None, source: int, stamps: list[tuple[int, int]]) -> None:
    """What :meth:`VisitorNames.publish_names` does: one record, then tombstones for the
    records that left."""
    keys = [name_key(source, v) for v, _ in stamps]
    key = record_key(source, max(d for _, d in stamps))
    value = pack_pairs(keys, [name_value(original(v), d) for v, d in stamps])
    log.append((key, value))
    left = apply(db, [(key, value)], keep)
    log += [(k, None) for k in left]
    apply(db, [(k, None) for k in left], keep)


def apply(db: rocksdict.Rdict, records: Log, keep: int | None) -> list[bytes]:
    changes = NameChanges(db, keep)
    for key, value in records:
        changes.apply(key, value)
    db.write(changes.write_batch(OFFSET, 0))
    return changes.left


def names(db: rocksdict.Rdict) -> dict[bytes, tuple[str, int]]:
    return {k: read_name(v) for k, v in db.items() if k.startswith(b"name:")}


def compacted(log: Log) -> Log:
    """What Kafka's compaction may leave: the last record of each key, tombstones gone."""
    last = {key: offset for offset, (key, _) in enumerate(log)}
    return [(k, v) for offset, (k, v) in enumerate(log) if last[k] == offset and v is not None]


def recovered(path: str, records: Log, keep: int | None) -> rocksdict.Rdict:
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    apply(db, records, keep)
    return db


stamps = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 60)), min_size=1, max_size=5)
requests = st.lists(st.tuples(st.sampled_from([1, 2]), stamps), min_size=1, max_size=60)


@settings(max_examples=80, deadline=None)
@given(requests, st.sampled_from([None, 1, 5, 20]), st.randoms(use_true_random=False))
def test_names_are_the_latest_stamps_within_keep_days_whatever_the_order_or_compaction(requests, keep, rng):
    """The table holds, per name, its latest stamp unless ``keep`` days or more before its
    source's latest; recovered from the records in any order, or from what compaction
    leaves once the tombstones were sent, it holds the same names."""
    latest: dict[bytes, int] = {}
    clock: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as root:
        db = rocksdict.Rdict(f"{root}/written", rocksdict.Options(raw_mode=True))
        log: Log = []
        for source, pairs in requests:
            publish(db, log, keep, source, pairs)
            for visitor, day in pairs:
                key = name_key(source, visitor)
                latest[key] = max(day, latest.get(key, -1))
                clock[source] = max(day, clock.get(source, 0))
        expected = {
            key: (original(int(key.split(b":")[2])), day)
            for key, day in latest.items()
            if keep is None or day > clock[int(key.split(b":")[1])] - keep
        }
        assert names(db) == expected
        records = [(k, v) for k, v in log if v is not None]
        rng.shuffle(records)
        for i, kept in enumerate([records, compacted(log)]):
            again = recovered(f"{root}/{i}", kept, keep)
            assert names(again) == expected
            again.close()
        db.close()


def test_a_year_of_returning_visitors_keeps_a_window_of_names_and_records():
    """2,000 visitors, each seen on a random day of every month for a year, stamped as the
    collector stamps them (new, or once their stamp is ``refresh_days(30)`` old): the names
    kept are those of the last ``keep_days(30)`` days, and what compaction leaves of the
    changelog is the records of those days only -- under twice the table it restores."""
    keep, refresh = keep_days(30), refresh_days(30)
    assert keep is not None and refresh is not None
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as root:
        db = rocksdict.Rdict(f"{root}/written", rocksdict.Options(raw_mode=True))
        log: Log = []
        seen = sorted((int(m * 30 + rng.integers(0, 30)), int(v)) for m in range(12) for v in range(2_000))
        for day in range(360):
            today = [v for d, v in seen if d == day]
            due = [v for v in today if (s := db.get(name_key(1, v))) is None or read_name(s)[1] + refresh <= day]
            for start in range(0, len(due), 20):  # a request names up to 20 visitors
                publish(db, log, keep, 1, [(v, day) for v in due[start : start + 20]])
        kept_names = names(db)
        assert kept_names and min(day for _, day in kept_names.values()) > 359 - keep
        kept = compacted(log)
        assert len(kept) < len(log) / 4
        live = sum(len(k) + len(v) for k, v in db.items() if k != OFFSET)
        assert sum(len(k) + len(v or b"") for k, v in kept) < 2 * live
        assert names(recovered(f"{root}/recovered", kept, keep)) == kept_names
        db.close()


def test_records_of_older_versions_are_names_stamped_on_day_zero():
    """A record keyed by a random id with plain original ids (before names were stamped)
    is applied as names of day 0, forgotten once the clock is ``keep`` days on."""
    with tempfile.TemporaryDirectory() as root:
        db = rocksdict.Rdict(f"{root}/db", rocksdict.Options(raw_mode=True))
        legacy = (b"0123456789abcdef", pack_pairs([name_key(1, 7)], [b"user:ada"]))
        assert apply(db, [legacy], 5) == []
        assert names(db) == {name_key(1, 7): ("user:ada", 0)}
        publish(db, [], 5, 1, [(8, 4)])
        assert name_key(1, 7) in names(db)
        publish(db, [], 5, 1, [(8, 5)])
        assert names(db) == {name_key(1, 8): (original(8), 5)}
        db.close()
