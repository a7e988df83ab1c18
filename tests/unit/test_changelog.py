"""The changelog record format, and the ring that lets Kafka's compaction drop records."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import numpy as np
import rocksdict
from hypothesis import given, settings
from hypothesis import strategies as st

from ampelios.engine.changelog import RECORD_PREFIX, add_pairs, apply_record, next_record, pack_pairs, unpack_pairs

OFFSET = b"__offset__"  # stands for Faust's persisted offset key, which the ring skips


@given(st.lists(st.tuples(st.binary(max_size=40), st.none() | st.binary(max_size=300)), max_size=50))
def test_pairs_round_trip_in_order(pairs):
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    assert unpack_pairs(pack_pairs(keys, values)) == pairs


class Partition:
    """One partition as a BatchTable writes it: a RocksDB database and its changelog."""

    def __init__(self, path: str, snapshots: bool = False) -> None:
        self.db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
        self.log: list[tuple[bytes, bytes | None]] = []  # (record key, value), by offset
        self.snapshots: list[dict[bytes, bytes]] | None = [] if snapshots else None  # the table after each offset

    def write(self, pairs: list[tuple[bytes, bytes | None]]) -> None:
        record = next_record(self.db, pairs, skip=OFFSET)
        self.log += [(key, None) for key in record.tombstones] + [(record.key, record.value)]
        write = rocksdict.WriteBatch(raw_mode=True)
        add_pairs(write, record.writes)
        write.put(OFFSET, b"%d" % (len(self.log) - 1))
        self.db.write(write)
        while self.snapshots is not None and len(self.snapshots) < len(self.log):
            self.snapshots.append(table(self.db))


def table(db: rocksdict.Rdict) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if k != OFFSET}


def compacted(log: list[tuple[bytes, bytes | None]], drop: list[bool]) -> list[int]:
    """Offsets left once some superseded records (a later record has their key) are dropped."""
    last = {key: offset for offset, (key, _) in enumerate(log)}
    return [offset for offset, (key, _) in enumerate(log) if last[key] == offset or not drop[offset % len(drop)]]


def recover(path: str, start: dict[bytes, bytes], log: list[tuple[bytes, bytes | None]], offsets: list[int]) -> dict:
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    write = rocksdict.WriteBatch(raw_mode=True)
    add_pairs(write, start.items())
    for offset in offsets:
        apply_record(write, *log[offset])
    db.write(write)
    try:
        return table(db)
    finally:
        db.close()


def directories() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as root:
        for i in range(1_000):
            yield f"{root}/{i}"


keys = st.integers(0, 300).map(lambda i: b"k%03d" % i)
batches = st.lists(st.tuples(keys, st.none() | st.binary(min_size=60, max_size=300)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(batches, min_size=1, max_size=80), st.lists(st.booleans(), min_size=1, max_size=30), st.data())
def test_what_compaction_leaves_recovers_the_table_written(written, drop, data):
    """Whatever superseded records compaction drops, recovery from empty, or from the local
    files at any offset, ends with the table as written (deletions included)."""
    dirs = directories()
    partition = Partition(next(dirs), snapshots=True)
    for pairs in written:
        partition.write(pairs)
    expected = table(partition.db)
    kept = compacted(partition.log, drop)
    assert recover(next(dirs), {}, partition.log, kept) == expected
    at = data.draw(st.integers(0, len(partition.log) - 1))
    assert partition.snapshots is not None
    assert recover(next(dirs), partition.snapshots[at], partition.log, [o for o in kept if o > at]) == expected
    partition.db.close()


def test_a_compacted_changelog_keeps_less_than_twice_the_live_state():
    """Journeys of 2,000 visitors rewritten by 3,000 batches of 20: once compaction keeps
    only the last record of each key, the changelog holds under twice the live bytes."""
    rng = np.random.default_rng(7)
    dirs = directories()
    partition = Partition(next(dirs))
    for _ in range(3_000):
        visitors = rng.integers(0, 2_000, 20)
        partition.write([(b"1:%d" % v, rng.bytes(int(rng.integers(100, 400)))) for v in visitors])
    live = sum(len(k) + len(v) for k, v in table(partition.db).items())
    kept = compacted(partition.log, [True])
    kept_bytes = sum(len(partition.log[o][0]) + len(partition.log[o][1] or b"") for o in kept)
    assert len(partition.log) >= 3_000 and len(kept) < len(partition.log) / 10
    assert kept_bytes < 2 * live, (kept_bytes, live)
    assert recover(next(dirs), {}, partition.log, kept) == table(partition.db)
    partition.db.close()


def test_records_are_keyed_by_slots_that_come_round_again():
    dirs = directories()
    partition = Partition(next(dirs))
    for i in range(200):
        partition.write([(b"v:%d" % (i % 50), b"x" * 300)])
    slots = {key for key, _ in partition.log}
    assert all(key.startswith(RECORD_PREFIX) for key in slots)
    assert 1 < len(slots) < 100
    partition.db.close()


def test_keys_the_ring_cannot_hold_are_refused():
    dirs = directories()
    partition = Partition(next(dirs))
    for key in (b"\x00own", b"\xffhigh", b""):
        try:
            partition.write([(key, b"1")])
        except ValueError as error:
            assert "above" in str(error)
        else:
            raise AssertionError(f"{key!r} was written")
    partition.db.close()
