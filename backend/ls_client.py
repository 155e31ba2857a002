"""Label Studio's REST API for background pre-annotation, via label-studio-sdk 2.x.

Every call retries transient failures (connection errors, timeouts, HTTP 5xx and 429)
with exponential backoff, for at most PREANNOTATE_RETRY_SECONDS, then raises
`LabelStudioUnavailable`: the job fails, rq retries it, and its tasks stay not-done.
Client errors (4xx) are not retried: retrying a 403 helps nobody.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from squeezesam.backend.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY, MAX_DELAY = 0.5, 30.0
REQUEST_TIMEOUT = 30.0  # seconds per HTTP call (the SDK's default is 60)


class LabelStudioUnavailable(RuntimeError):
    """Label Studio stayed down or failing for PREANNOTATE_RETRY_SECONDS."""


class TaskGone(LookupError):
    """The task no longer exists in Label Studio (deleted after it was queued)."""


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, httpx.TransportError):  # connect/read errors and timeouts
        return True
    status = _status(exc)
    return status is not None and (status >= 500 or status == 429)


class LabelStudioClient:
    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep) -> None:
        from label_studio_sdk import LabelStudio  # heavy import: only where it is used

        if not settings.label_studio_url:
            raise LabelStudioUnavailable("LABEL_STUDIO_URL is not set")
        self.client = LabelStudio(
            base_url=settings.label_studio_url.rstrip("/"),
            api_key=settings.label_studio_api_key,
            timeout=REQUEST_TIMEOUT,
        )
        self.budget = settings.preannotate_retry_seconds
        self.sleep = sleep

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn(), retried with backoff while Label Studio is down or failing."""
        deadline = time.monotonic() + self.budget
        delay = FIRST_DELAY
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LabelStudioUnavailable(
                        f"Label Studio {what} kept failing for {self.budget:.0f} s: "
                        f"{type(exc).__name__} {_status(exc) or ''}".rstrip()
                    ) from exc
                log.warning("Label Studio %s failed (%s); retrying in %.1f s", what, exc, delay)
                self.sleep(min(delay, left))
                delay = min(delay * 2, MAX_DELAY)

    def label_config(self, project_id: int) -> str:
        project = self.call("get project", lambda: self.client.projects.get(id=project_id))
        return project.label_config or ""

    def get_task(self, task_id: int) -> dict[str, Any]:
        """The task with its predictions (and annotations), as plain JSON."""

        def get() -> Any:
            try:
                return self.client.tasks.get(id=str(task_id))
            except Exception as exc:
                if _status(exc) == 404:
                    raise TaskGone(f"task {task_id} no longer exists") from None
                raise

        return _plain(self.call(f"get task {task_id}", get))

    def iter_tasks(self, project_id: int, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every task of the project with its predictions, page by page (each retried)."""
        page = 1
        while True:
            try:
                pager = self.call(
                    f"list tasks page {page}",
                    lambda page=page: self.client.tasks.list(
                        project=project_id, fields="all", page=page, page_size=page_size
                    ),
                )
            except Exception as exc:
                if page > 1 and _status(exc) == 404:  # DRF: past the last page
                    return
                raise
            items = pager.items or []
            for task in items:
                yield _plain(task)
            if len(items) < page_size:
                return
            page += 1

    def ml_extra_params(self, project_id: int) -> list[Any]:
        """The non-empty Extra params of the project's ML backends (`GET /api/ml`)."""
        backends = self.call("list ML backends", lambda: self.client.ml.list(project=project_id))
        return [b.extra_params for b in backends or [] if b.extra_params not in (None, "", {})]

    def create_prediction(
        self, task_id: int, result: list[dict], score: float, model_version: str
    ) -> None:
        self.call(
            f"create prediction for task {task_id}",
            lambda: self.client.predictions.create(
                task=task_id, result=result, score=score, model_version=model_version
            ),
        )


def _plain(obj: Any) -> dict[str, Any]:
    # mode="json": plain JSON types, as a webhook or /predict would carry them
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else dict(obj)


def has_prediction(task: dict[str, Any], model_version: str) -> bool:
    """Does Label Studio already hold a prediction of this model version for the task?"""
    predictions = task.get("predictions") or []
    return any(isinstance(p, dict) and p.get("model_version") == model_version for p in predictions)
