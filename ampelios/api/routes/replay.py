"""Replays: ``POST /trigger`` a CSV of the data directory, follow its job, list the files."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.web import Request

from ampelios.api.context import Api
from ampelios.api.contract import Files, Job, JobPath, JobStarted, TriggerRequest
from ampelios.api.http import HttpError, Routes, json_body, read_body
from ampelios.ingest.jobs import PathMissing, PathRefused, ReplayJob, data_files, resolve_data_path, start_job
from ampelios.runtime.pipeline import snapshot_request

routes = Routes()

MODEL_WAIT_POLLS = 20  # a replay job waits at most 10 s after lag 0 for its source's first model


@routes.post(
    "/trigger",
    "Replay a CSV file of the data directory into the events topic",
    body=TriggerRequest,
    answers={202: ("the replay started", JobStarted)},
    errors=(400, 403, 404, 408, 413, 415),
    guard="writes",
    needs_state=False,
)
async def trigger(api: Api, request: Request) -> tuple[int, JobStarted]:
    """Replay a CSV under the data directory into the events topic."""
    p = api.p
    body = read_body(TriggerRequest, await json_body(request))
    try:
        path = resolve_data_path(p.settings.data_dir, body.events_path)
    except PathRefused as exc:
        raise HttpError(400, str(exc)) from None
    except PathMissing as exc:
        raise HttpError(404, str(exc)) from None

    async def snapshot_when_reflected(job: ReplayJob) -> None:
        """Wait until the job's events are in the segments (and the source has a model
        this worker sees: the owner publishes it just after the lag reads 0), then ask
        for a snapshot."""
        while (await p.pending())["lag"]:
            await asyncio.sleep(0.5)
        for _ in range(MODEL_WAIT_POLLS):  # a file of only rejected or ignored rows makes no model
            if p.published_model(job.source_id) is not None:
                break
            await asyncio.sleep(0.5)
        request = snapshot_request(job.source_id, f"replay {job.path} ({job.id}) done")
        await p.segment_updates.send(key=b"%d" % job.source_id, value=request)

    job = start_job(
        p.jobs,
        p.settings.broker_url,
        p.topology,
        path,
        body.events_path,
        body.source_id,
        p.settings.replay_batch_events,
        p.event_codes,
        finish=snapshot_when_reflected,
    )
    return 202, JobStarted(job=job.id, status_url=f"/trigger/{job.id}")


@routes.get(
    "/trigger/{job}",
    "State and counts of one replay job",
    path_params=JobPath,
    answers={200: ("the job", Job)},
    errors=(404,),
    needs_state=False,
)
async def job(api: Api, request: Request, path: JobPath) -> tuple[int, Any]:
    """State and counts of one replay job (as :meth:`ReplayJob.to_json` reports it)."""
    found = api.p.jobs.get(path.job)
    if found is None:
        raise HttpError(404, f"no replay job {path.job!r} on this worker")
    return 200, found.to_json()


@routes.get(
    "/files",
    "The CSV files of the data directory that POST /trigger can replay",
    answers={200: ("by name", Files)},
    needs_state=False,
)
async def files(api: Api, request: Request) -> tuple[int, Any]:
    """The CSV files of the data directory that POST /trigger can replay."""
    return 200, Files(files=await asyncio.to_thread(data_files, api.p.settings.data_dir))
