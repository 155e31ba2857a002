"""What the `preannotate` queue runs for whole projects (queued by preannotate.py).

`plan_project`: list the project's tasks (label-studio-sdk), skip those that already
have a prediction of the current model version, queue the rest in chunks.
`run_chunk`: per task, in order: done set -> claim -> task from Label Studio (its
predictions re-checked) -> objects (result cache or model) -> prediction written ->
done set. See preannotate.py for the guarantees.
"""

from __future__ import annotations

import json
import logging
import uuid

import redis
from rq import get_current_job

from squeezesam.backend import jobs, progress, project_params
from squeezesam.backend.labelstudio import (
    PayloadError,
    ProjectConfig,
    parse_label_config,
    task_image,
)
from squeezesam.backend.ls_client import LabelStudioClient, TaskGone, has_prediction
from squeezesam.backend.preannotate import (
    ChunkJob,
    PlanJob,
    done_key,
    enqueue_ids,
    errors_key,
    record_error,
)
from squeezesam.backend.queues import PREANNOTATE, alive_workers
from squeezesam.backend.settings import ConfigError
from squeezesam.backend.store import Store, StoreError
from squeezesam.backend.worker import Runtime, runtime

log = logging.getLogger(__name__)

CLAIM_TTL = 600  # seconds; a claim of a live worker never lasts longer than one task


_clients: dict[int, LabelStudioClient] = {}
_stores: dict[int, Store | None] = {}


def label_store(rt: Runtime) -> Store | None:
    """One label store per worker process, for recording what was served (None, logged,
    when it cannot be opened: pre-annotation goes on without it)."""
    key = id(rt.settings)
    if key not in _stores:
        try:
            _stores[key] = Store.open(rt.settings)
        except StoreError as exc:
            log.warning("label store unavailable, served regions not recorded: %s", exc)
            _stores[key] = None
    return _stores[key]


def ls_client(rt: Runtime) -> LabelStudioClient:
    """One SDK client per worker process (connection pool, token refresh)."""
    key = id(rt.settings)
    if key not in _clients:
        _clients[key] = LabelStudioClient(rt.settings)
    return _clients[key]


def plan(
    ls: LabelStudioClient,
    conn: redis.Redis,
    settings,
    project_id: int,
    version: str,
    limit: int | None = None,
) -> int:
    """Queue the project's tasks without a prediction of `version`; returns how many."""
    label_config = ls.label_config(project_id)
    config = parse_label_config(label_config)  # an unusable config fails the run, clearly
    if project_params.load(conn, project_id) is None:  # no /setup seen since Redis started
        _params_from_label_studio(ls, conn, project_id, config)
    todo, already = [], []
    for task in ls.iter_tasks(project_id):
        if has_prediction(task, version):
            already.append(int(task["id"]))
        elif limit is None or len(todo) < limit:
            todo.append(int(task["id"]))
    if already:
        conn.sadd(done_key(project_id, version), *already)
    log.info("project %s: %d tasks to pre-annotate, %d already done", project_id, len(todo),
             len(already))  # fmt: skip
    return enqueue_ids(conn, settings, project_id, todo, label_config, version, new_run=True)


def _params_from_label_studio(
    ls: LabelStudioClient, conn: redis.Redis, project_id: int, config: ProjectConfig
) -> None:
    """The Extra params of the project's ML backends (`GET /api/ml?project=`), kept as if
    /setup had brought them; several different ones: the defaults, with a warning."""
    try:
        extras = {json.dumps(e, sort_keys=True) for e in ls.ml_extra_params(project_id)}
    except Exception as exc:  # optional: a token that may not list ML backends, say
        log.warning("project %s: Extra params not read from Label Studio: %s", project_id, exc)
        return
    if len(extras) > 1:
        log.warning("project %s: its ML backends have different Extra params; using the "
                    "defaults", project_id)  # fmt: skip
    elif extras:
        try:
            params = project_params.parse(json.loads(extras.pop()), config)
        except PayloadError as exc:
            raise ConfigError(f"project {project_id}: {exc}") from None
        project_params.save(conn, project_id, params)


def plan_project(job: PlanJob) -> int:
    rt = runtime()
    return plan(ls_client(rt), rt.cache.redis, rt.settings, job.project_id,
                rt.predictor.version, job.limit)  # fmt: skip


def run_chunk(job: ChunkJob) -> dict[str, int]:
    """Pre-annotate a chunk of tasks; counts by outcome. Raises only if LS stays down."""
    rt = runtime()
    conn: redis.Redis = rt.cache.redis
    ls = ls_client(rt)
    version = rt.predictor.version
    config = parse_label_config(job.label_config or ls.label_config(job.project_id))
    params = project_params.load(conn, job.project_id) or project_params.DEFAULT
    counts = {"written": 0, "skipped": 0, "failed": 0}
    try:
        for task_id in job.task_ids:
            outcome = _one_task(rt, ls, conn, (config, params), job.project_id, task_id,
                                version)  # fmt: skip
            counts[outcome] += 1
            progress.progress_advance(conn, job.project_id, failed=int(outcome == "failed"))
    finally:
        _finish_if_complete(conn, job.project_id)
    return counts


def _one_task(
    rt: Runtime,
    ls: LabelStudioClient,
    conn: redis.Redis,
    project: tuple[ProjectConfig, project_params.ProjectParams],
    project_id: int,
    task_id: int,
    version: str,
) -> str:
    config, params = project
    done = done_key(project_id, version)
    if conn.sismember(done, task_id):
        return "skipped"
    claim = _claim(conn, project_id, task_id)
    if claim is None:  # a live worker is on it right now (the same task queued twice)
        return "skipped"
    try:
        try:
            task = ls.get_task(task_id)
        except TaskGone as exc:
            record_error(conn, project_id, task_id, str(exc))
            return "failed"
        # re-check under the claim: a crash after the write but before SADD, or an
        # answer to a bulk /predict, already stored this model's prediction
        if has_prediction(task, version) or conn.sismember(done, task_id):
            conn.sadd(done, task_id)
            return "skipped"
        try:
            ref = task_image(task, config).ref
        except PayloadError as exc:
            record_error(conn, project_id, task_id, str(exc))
            return "failed"
        outcome = jobs.preannotate(rt, ref, config)
        if not outcome.ok:  # a bad image: reported per task, the run goes on
            log.warning("project %s task %s: %s", project_id, task_id, outcome.error)
            record_error(conn, project_id, task_id, outcome.error)
            return "failed"
        item = project_params.filter_item(json.loads(outcome.body), params)  # Extra params
        if item["model_version"] != version:  # the model was swapped mid-chunk
            version = item["model_version"]
            done = done_key(project_id, version)
        # an empty result is written too: "the model looked and found nothing" is an
        # answer, and it keeps Retrieve Predictions from asking again
        ls.create_prediction(task_id, item["result"], item["score"], version)
        store = label_store(rt)
        if store is not None:
            store.served.record_served_item(task_id, item, "preannotation")
        conn.sadd(done, task_id)
        conn.hdel(errors_key(project_id), task_id)
        return "written"
    finally:
        _release(conn, project_id, task_id, claim)


def _claim_key(project_id: int, task_id: int) -> str:
    return f"squeezesam:preannotate-claim:{project_id}:{task_id}"


def _claim(conn: redis.Redis, project_id: int, task_id: int) -> str | None:
    """Claim the task for this worker; steal the claim of a dead worker (crash restart)."""
    current = get_current_job()
    me = (current.worker_name if current else None) or f"inline-{uuid.uuid4().hex[:8]}"
    key = _claim_key(project_id, task_id)
    if conn.set(key, me, nx=True, ex=CLAIM_TTL):
        return me
    holder = (conn.get(key) or b"").decode()
    if holder == me or holder not in alive_workers(conn, PREANNOTATE):
        conn.set(key, me, ex=CLAIM_TTL)
        return me
    return None


def _release(conn: redis.Redis, project_id: int, task_id: int, claim: str) -> None:
    key = _claim_key(project_id, task_id)
    if (conn.get(key) or b"").decode() == claim:
        conn.delete(key)


def _finish_if_complete(conn: redis.Redis, project_id: int) -> None:
    for run in progress.read_progress(conn, project_id):
        if run.finished_at is None and run.total and run.done >= run.total:
            progress.progress_finish(conn, project_id)
