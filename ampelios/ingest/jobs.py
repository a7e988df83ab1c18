"""Replay jobs started by ``POST /trigger``: where the file may be, and what a job reports."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ampelios.core.events import CsvError
from ampelios.ingest.replay import ReplayProgress, replay_file
from ampelios.topology import Topology

log = logging.getLogger(__name__)


class PathRefused(ValueError):
    """The requested path is not a file under the data directory (HTTP 400)."""


class PathMissing(FileNotFoundError):
    """The requested path is under the data directory but no such file exists (HTTP 404)."""


def resolve_data_path(data_dir: Path, requested: str) -> Path:
    """The regular ``.csv`` file ``requested`` names under ``data_dir`` (what
    :func:`data_files` lists); nothing outside it, ever.

    Refused (without opening anything): empty or absolute paths, any ``..`` part, names
    that do not end in ``.csv``, paths
    that leave the data directory through a symlink, and anything that is not a regular
    file (directories, devices, pipes, sockets).
    """
    if not requested or not requested.strip():
        raise PathRefused("events_path is empty")
    if "\x00" in requested:
        raise PathRefused("events_path must not contain NUL")
    relative = PurePosixPath(requested)
    if relative.is_absolute() or Path(requested).is_absolute():
        raise PathRefused("events_path must be relative to the data directory")
    if ".." in relative.parts:
        raise PathRefused("events_path must not contain '..'")
    if relative.suffix != ".csv":
        raise PathRefused(f"events_path must name a .csv file, as GET /files lists them, got {requested[:80]!r}")
    try:
        root = data_dir.resolve()
        target = (root / relative).resolve()
        inside, exists, regular = target.is_relative_to(root), target.exists(), target.is_file()
    except OSError as exc:  # e.g. a name too long for the file system
        raise PathRefused(f"events_path cannot be used: {exc.strerror}") from None
    if not inside:
        raise PathRefused("events_path leaves the data directory")
    if not exists:
        raise PathMissing(f"no file {requested!r} in the data directory")
    if not regular:
        raise PathRefused(f"{requested!r} is not a regular file")
    return target


MAX_LISTED_FILES = 500


def data_files(data_dir: Path) -> list[dict[str, Any]]:
    """The CSV files a replay may read: ``{"name", "bytes"}`` of each regular ``*.csv``
    file under ``data_dir`` (names relative to it, as ``POST /trigger`` takes them),
    sorted by name, at most MAX_LISTED_FILES; links that leave the directory are left out."""
    files: list[dict[str, Any]] = []
    for path in sorted(data_dir.rglob("*.csv")):
        name = path.relative_to(data_dir).as_posix()
        try:
            target = resolve_data_path(data_dir, name)
        except (PathRefused, PathMissing):
            continue
        files.append({"name": name, "bytes": target.stat().st_size})
        if len(files) == MAX_LISTED_FILES:
            break
    return files


@dataclass
class ReplayJob:
    """One replay started over HTTP; its state is ``running``, ``done`` or ``failed``.

    ``done`` means every row was sent and then reflected in the segments, and a snapshot
    of the segments at the end of the job was asked for."""

    id: str
    source_id: int
    path: str
    state: str = "running"
    progress: ReplayProgress = field(default_factory=ReplayProgress)
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        p = self.progress
        return {
            "job": self.id,
            "source_id": self.source_id,
            "events_path": self.path,
            "state": self.state,
            "rows": p.rows,
            "rows_sent": p.sent,
            "rows_rejected": p.rejected,
            "rows_ignored": p.ignored,
            "rejections": p.reasons.report(limit=10),
            "events": p.events,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def start_job(
    jobs: dict[str, ReplayJob],
    url: str,
    topology: Topology,
    path: Path,
    name: str,
    source_id: int,
    batch_events: int,
    codes: Mapping[str, int],
    finish: Callable[[ReplayJob], Awaitable[None]],
) -> ReplayJob:
    """Start replaying ``path`` in the background, then await ``finish(job)``; the job
    records its own progress."""
    job = ReplayJob(id=uuid.uuid4().hex[:12], source_id=source_id, path=name)
    jobs[job.id] = job

    def on_progress(progress: ReplayProgress) -> None:
        job.progress = progress

    async def run() -> None:
        try:
            progress = await replay_file(
                url, topology, path, source_id, batch_events=batch_events, codes=codes, on_progress=on_progress
            )
            failure = progress.all_rejected()
            if failure is not None:
                job.state, job.error = "failed", failure
                return
            await finish(job)
            job.state = "done"
        except (CsvError, OSError) as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:
            log.exception("replay job %s failed", job.id)
            job.state, job.error = "failed", repr(exc)
        finally:
            job.finished_at = time.time()

    job.task = asyncio.get_running_loop().create_task(run(), name=f"replay-{job.id}")
    return job
