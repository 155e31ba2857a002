"""The ML backend in one page: what happens on a click, a bulk request and a training request.

Backends built on Label Studio's SDK subclass `LabelStudioMLBase` and override `setup`,
`predict` and `fit`. This service is split into a web process and rq workers (the model
lives in the workers, so a click never waits for a model load), but the protocol is the
same; the names map as follows:

LabelStudioMLBase              -> here
- `setup()` (POST /setup)      -> `SqueezeSAMBackend.setup(label_config, extra_params,
                                  project)`: Extra params -> project_params.py
- `predict(tasks, context)`    -> `SqueezeSAMBackend.predict(tasks, label_config, context,
                                  project)`: one result item (JSON text) per task
- `ModelResponse(predictions)` -> `{"results": [...]}`, spliced by routes/predict.py
- `fit(event, data)`           -> `SqueezeSAMBackend.fit(payload)` (POST /webhook)
- `label_interface`, `parsed_label_config` -> `labelstudio.parse_label_config` ->
                                  `ProjectConfig`
- `self.model_version`         -> `registry.model_version` (the registry's active model)
- `get_local_path(url)`        -> `images.Fetcher`, in the worker (pixels cached in Redis;
                                  s3/gs/azure-blob URIs via cloud_storage.py)
- `self.get` / `self.set`      -> Redis: results_cache.py, progress.py
- training inside `fit`        -> the `train` queue: training.py -> training_job.py

Where each step lives: a click -> queues.py / dispatch.py -> worker.py -> jobs.py ->
models/predictor.py; a bulk request -> bulk.py (cached answers, one job per task,
hand-off to preannotate.py); a webhook -> webhooks.py -> the label store (store/), and
training.py or preannotate.py for what it asks to queue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from squeezesam.backend import bulk, jobs, project_params, webhooks
from squeezesam.backend.labelstudio import (
    PayloadError,
    ProjectConfig,
    parse_context,
    parse_label_config,
    task_image,
    task_regions,
)
from squeezesam.backend.metrics import observe_click
from squeezesam.backend.preannotate import enqueue_tasks
from squeezesam.backend.queues import INTERACTIVE
from squeezesam.backend.services import ServiceError, Services
from squeezesam.backend.store import StoreError
from squeezesam.backend.training import enqueue_training

log = logging.getLogger(__name__)


class SqueezeSAMBackend:
    """The ML-backend protocol over the queues and the label store (see the module doc)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def setup(self, label_config: Any, extra_params: Any = None, project: Any = None) -> str:
        """Check the labeling config (an unsupported one fails here, clearly) and the
        project's Extra params (project_params.py; kept for its pre-annotation); the
        model version Label Studio will see on our predictions."""
        config = parse_label_config(label_config)
        params = project_params.parse(extra_params, config)  # a bad key or value: 422
        project_id = bulk.project_id_of({"project": project}, [])
        if project_id is not None:
            self._save_params(project_id, params)
        return self.services.model_version()

    def _save_params(self, project_id: int, params: project_params.ProjectParams) -> None:
        try:
            project_params.save(self.services.dispatcher().redis, project_id, params)
        except (redis.RedisError, ServiceError) as exc:
            if params != project_params.DEFAULT:  # params set but not kept: say so
                msg = f"Extra params not saved: Redis unavailable ({exc})"
                raise ServiceError(msg, 503) from None
            log.warning("project %s: default Extra params not saved: %s", project_id, exc)

    def predict(
        self, tasks: Any, label_config: Any, context: Any = None, project: Any = None
    ) -> list[str]:
        """One result item (JSON text) per task.

        With a context (the annotator clicked or drew a box): one task, one mask, within
        INTERACTIVE_TIMEOUT. Without (a task opened, Retrieve Predictions): every task
        pre-annotated, from the cache or the `preannotate` queue, by PREANNOTATE_TIMEOUT.
        """
        if not isinstance(tasks, list) or not tasks:
            raise PayloadError("'tasks' must be a non-empty list", 422)
        config = parse_label_config(label_config)
        if context:
            try:
                return [self._click(tasks, context, config, project)]
            except (PayloadError, ServiceError) as exc:  # one warning per failed click
                task_id = tasks[0].get("id") if isinstance(tasks[0], dict) else None
                log.warning("click on task %s failed (%d): %s", task_id, exc.status, exc)
                raise
        return self._preannotate(tasks, config, label_config, project)

    def fit(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A webhook: annotations into the label store, within the request (a few ms);
        anything long is queued (Start Training -> a fine-tuning run, new tasks ->
        pre-annotation). Label Studio gives a webhook 1 s and never resends it."""
        try:
            answer = webhooks.handle_event(self.services.store(), payload)
        except StoreError as exc:  # the periodic reconcile catches up later
            log.error("webhook %s not stored: %s", payload.get("action"), exc)
            raise ServiceError(f"label store unavailable: {exc}", 503) from None
        if answer.get("train_requested"):
            connection = self.services.dispatcher().redis
            job = enqueue_training(connection, answer["project"], trigger="start_training")
            answer["job"] = job.id  # with a `job`, Label Studio records a train job
        if answer.get("tasks") and answer.get("project") is not None:
            project = payload.get("project")
            config = project.get("label_config") if isinstance(project, dict) else None
            answer["queued"] = enqueue_tasks(self.services.dispatcher(), self.services.settings,
                                             answer["project"], answer["tasks"],
                                             label_config=config)  # fmt: skip
        return answer

    # --- the two kinds of prediction ---------------------------------------------------------

    def _click(self, tasks: list, context: Any, config: ProjectConfig, project: Any) -> str:
        if len(tasks) != 1:
            raise PayloadError(f"an interactive request carries 1 task, got {len(tasks)}", 422)
        image_ref = task_image(tasks[0], config).ref
        prompt = parse_context(context, config)  # the one parse: prompt and click records
        spec = jobs.SegmentJob(
            image_ref,
            prompt,
            config,
            task_regions(tasks[0], config),  # a click on a pre-annotated object refines it
        )
        settings = self.services.settings
        started = time.perf_counter()
        outcome = self.services.dispatcher().run(
            INTERACTIVE, jobs.segment_click, spec, settings.interactive_timeout
        )
        observe_click(time.perf_counter() - started, outcome.status)
        if not outcome.ok:
            raise ServiceError(outcome.error, outcome.status)
        self.services.record_click(_click_project(prompt, project), tasks[0], prompt, outcome.body)
        return outcome.body

    def _preannotate(
        self, tasks: list, config: ProjectConfig, label_config: str, project: Any
    ) -> list[str]:
        project_id = bulk.project_id_of({"project": project}, tasks)
        dispatcher, version = self.services.dispatcher(), self.services.model_version()
        params = project_params.load(dispatcher.redis, project_id) or project_params.DEFAULT
        if not params.zero_click:  # the lead switched pre-annotation off: nothing stored
            return [bulk.skipped(version, project_params.OFF) for _ in tasks]
        items = bulk.answer(dispatcher, tasks, config, label_config, version, project_id)
        items = [project_params.filter_text(item, params) for item in items]
        self.services.record_served(tasks, items, "preannotation")
        return items


def _click_project(prompt: Any, project: Any) -> int | None:
    """The project the clicks are recorded under (None: not recorded, logged)."""
    if not prompt.records:
        return None
    try:
        return webhooks.project_id_of(project)
    except Exception as exc:  # recording must never fail a click
        log.warning("clicks not recorded: %s: %s", type(exc).__name__, exc)
        return None
