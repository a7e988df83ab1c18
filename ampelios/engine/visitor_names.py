"""The original ids of collected visitors: a global table that forgets visitors who left.

Every worker holds every name (``name:<source>:<visitor>`` -> ``\\x00``, the event-time
day it was last stamped (u32 big-endian), the original id), so that a collector notices
hash collisions and webhooks name visitors. A request's names are **one** changelog record
(a record per name cost the collector about a third of its events per second,
``scripts/bench_merges.py``), keyed ``<source>:<day><random id>`` by the newest day it
stamps.

**The contract.** A table that keeps names for ``keep_days`` (``None``: for ever) holds,
for each key of the records applied, the pair of the latest day, unless that day is
``keep_days`` or more before the source's clock (the latest day of any pair of that source):
then the name has left. This is a function of the *set* of records applied, whatever their
order -- so a record may go from the changelog once every pair in it has left or was
stamped again later. A record's pairs are all older than its key's day, so a record whose
day has left the window is such a record: the worker that sees it leave sends a tombstone
under its key, and Kafka's compaction keeps the changelog near ``keep_days`` of names,
however long the history. The collector stamps a name again once its day is
:func:`refresh_days` old, so a visitor keeps its name as long as its journey is stored,
and a week more (days by the source's clock, which a quiet partition's may trail).

Records of older versions (random 16-byte keys, values without the ``\\x00`` header) are
applied as names of day 0; they are never sent a tombstone.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import rocksdict

from ampelios.engine.batch_table import PublishedTable
from ampelios.engine.changelog import pack_pairs, unpack_pairs
from ampelios.internals import persisted_offset_key, store_db

DAY_MS = 86_400_000
GRACE_DAYS = 7  # a visitor that left the window is still named for this long
_DAY = struct.Struct(">I")
_CLOCK = b"\x00clock:"  # + source -> the source's latest day
_BY_DAY = b"\x00d:"  # + source:, day, name key -> b"" (the names of a day, to forget them)
_RECORDS = b"\x00r:"  # + a record's key -> b"" (the records not yet sent a tombstone)


def refresh_days(active_days: float | None) -> int | None:
    """How old (event-time days) a name's stamp is when the collector stamps it again:
    twice the active window (how long a journey is stored after its last event) and
    :data:`GRACE_DAYS`; ``None`` without a window: names are kept for ever."""
    return None if active_days is None else math.ceil(2 * active_days) + GRACE_DAYS


def keep_days(active_days: float | None) -> int | None:
    """How many days a name is kept after its stamp: twice :func:`refresh_days`, so that a
    visitor last seen on day ``t`` (stamped on ``t - refresh_days`` or later) keeps its
    name until ``t + refresh_days``, and a steadily returning one is in two records."""
    refresh = refresh_days(active_days)
    return None if refresh is None else 2 * refresh


def name_value(original: str, day: int) -> bytes:
    """The stored value of an original id stamped on ``day`` (event-time days since 1970)."""
    return b"\x00" + _DAY.pack(day) + original.encode()


def read_name(value: bytes) -> tuple[str, int]:
    """(original id, day stamped) of a stored value; day 0 for a value of older versions."""
    if value[:1] == b"\x00":
        return value[1 + _DAY.size :].decode(), _DAY.unpack_from(value, 1)[0]
    return value.decode(), 0


def name_key(source_id: int, visitor: int) -> bytes:
    """The key of the original id (``user:<userId>``, ``anonymous:<id>``) of a collected
    visitor of a source."""
    return b"name:%d:%d" % (source_id, visitor)


def record_key(source_id: int, day: int) -> bytes:
    """A new record's key: its source, its newest day, a random id."""
    return b"%d:" % source_id + _DAY.pack(day) + uuid.uuid4().bytes


class NameChanges:
    """The writes that apply name records to a store (see the module's contract), and the
    keys of the records that have left (to be sent tombstones)."""

    def __init__(self, store: Any, keep: int | None) -> None:
        self.store, self.keep = store, keep
        self.pending: dict[bytes, bytes | None] = {}
        self.left: list[bytes] = []

    def _get(self, key: bytes) -> bytes | None:
        return self.pending[key] if key in self.pending else self.store.get(key)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record (``value`` ``None``: a tombstone of ``key``)."""
        if key is not None and value is None:
            self.pending[_RECORDS + key] = None
            return
        if value is None:
            return
        pairs = unpack_pairs(value)
        sources = {source for source, _, _ in map(_name_parts, (k for k, _ in pairs))}
        if key is not None and _is_new_key(key):
            self.pending[_RECORDS + key] = b""
        for name, stored in pairs:
            self._set(name, stored)
        for source in sources:
            self._forget_before(source)

    def _set(self, name: bytes, value: bytes | None) -> None:
        if value is None:  # names are never deleted but by leaving
            return
        source, _, _ = _name_parts(name)
        day = read_name(value)[1]
        old = self._get(name)
        if old is not None:
            old_day = read_name(old)[1]
            if old_day > day:
                return
            self.pending[_day_key(source, old_day, name)] = None
        clock = self._clock(source)
        if day > clock:
            self.pending[_CLOCK + source] = _DAY.pack(day)
        self.pending[name] = value
        self.pending[_day_key(source, day, name)] = b""

    def _clock(self, source: bytes) -> int:
        stored = self._get(_CLOCK + source)
        return _DAY.unpack(stored)[0] if stored else 0

    def _forget_before(self, source: bytes) -> None:
        """Delete the names of ``source`` stamped ``keep`` days or more before its clock,
        and note its records of those days as left."""
        if self.keep is None:
            return
        first = self._clock(source) - self.keep + 1
        if first <= 0:
            return
        low = _BY_DAY + source + b":"
        for key in self._keys_between(low, low + _DAY.pack(first)):
            self.pending[key] = None
            self.pending[key[len(low) + _DAY.size :]] = None  # its name, not stamped since
        low = _RECORDS + source + b":"
        self.left += [key[len(_RECORDS) :] for key in self._keys_between(low, low + _DAY.pack(first))]

    def _keys_between(self, low: bytes, high: bytes) -> list[bytes]:
        found = {k for k, _ in _scan(self.store, low, high) if self.pending.get(k, b"") is not None}
        found |= {k for k, v in self.pending.items() if low <= k < high and v is not None}
        return sorted(found)

    def write_batch(self, offset_key: bytes, offset: int) -> rocksdict.WriteBatch:
        """One write batch of every change and the offset of the last record applied."""
        write = rocksdict.WriteBatch(raw_mode=True)
        for key, value in self.pending.items():
            if value is None:
                write.delete(key)
            else:
                write.put(key, value)
        write.put(offset_key, b"%d" % offset)
        return write


def _scan(store: Any, low: bytes, high: bytes) -> Iterable[tuple[bytes, bytes]]:
    for key, value in store.items(from_key=low):
        if key >= high:
            return
        yield key, value


def _name_parts(name: bytes) -> tuple[bytes, bytes, bytes]:
    """(source, ``:``, visitor) of a name key ``name:<source>:<visitor>``."""
    return name[len(b"name:") :].partition(b":")


def _day_key(source: bytes, day: int, name: bytes) -> bytes:
    return _BY_DAY + source + b":" + _DAY.pack(day) + name


def _is_new_key(key: bytes) -> bool:
    source, colon, rest = key.partition(b":")
    return source.isdigit() and colon == b":" and len(rest) == _DAY.size + 16


class VisitorNames(PublishedTable):
    """The ``visitor-names`` global table (see the module docstring): written with
    :meth:`publish_names`, read with :meth:`original`."""

    def __init__(self, app: Any, active_days: float | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.refresh, self.keep = refresh_days(active_days), keep_days(active_days)

    def original(self, key: bytes) -> tuple[str, int] | None:
        """(original id, day stamped) of a name key, if it is kept."""
        value = self.get(key)
        return read_name(value) if value is not None else None

    def clock(self, source_id: int) -> int:
        """The latest day any name of a source was stamped (0: none yet)."""
        stored = self.get(_CLOCK + b"%d" % source_id)
        return _DAY.unpack(stored)[0] if stored else 0

    def stamps(
        self, source_id: int, new: Sequence[tuple[int, str]], seen: dict[int, int]
    ) -> list[tuple[bytes, str, int]]:
        """The (name key, original id, day) a request stamps: its ``new`` (visitor,
        original id) on the day of their newest event in ``seen`` (visitor -> day), or the
        source's clock; and the names of visitors in ``seen`` whose stamp is
        :attr:`refresh` days or more before that day."""
        clock = self.clock(source_id)
        stamped = [(name_key(source_id, v), original, seen.get(v, clock)) for v, original in new]
        if self.refresh is not None:
            named = {v for v, _ in new}
            for visitor, day in seen.items():
                stored = None if visitor in named else self.original(name_key(source_id, visitor))
                if stored is not None and stored[1] + self.refresh <= day:
                    stamped.append((name_key(source_id, visitor), stored[0], day))
        return stamped

    async def publish_names(self, source_id: int, names: Sequence[tuple[bytes, str, int]]) -> None:
        """Stamp each (name key, original id, day) for every worker: one changelog record,
        acknowledged, then the changes and its offset in one local write; then tombstones
        for the records that have left, if any."""
        if not names:
            return
        pairs = [(key, name_value(original, day)) for key, original, day in names]
        key = record_key(source_id, max(day for _, _, day in names))
        value = pack_pairs([k for k, _ in pairs], [v for _, v in pairs])
        sent = await self._send(key, value)
        left = self._apply_local([(key, value)], (await sent).offset)
        if left:
            tombstones = [await self._send(k, None) for k in left]
            self._apply_local([(k, None) for k in left], max([(await t).offset for t in tombstones]))

    async def _send(self, key: bytes, value: bytes | None) -> Any:
        return await self.changelog_topic.send(
            key=key, value=value, partition=0, key_serializer="raw", value_serializer="raw"
        )

    def _apply_local(self, records: Sequence[tuple[bytes | None, bytes | None]], offset: int) -> list[bytes]:
        db = store_db(self.data, 0)
        changes = NameChanges(db, self.keep)
        for key, value in records:
            changes.apply(key, value)
        db.write(changes.write_batch(persisted_offset_key(self.data), offset))
        return changes.left

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        """Every worker, as records arrive: apply them (:class:`NameChanges`)."""
        messages = [event.message for event in batch]
        if messages:
            self._apply_local([(m.key, m.value) for m in messages], max(m.offset for m in messages))
