"""What the web process's routes share: one `Services` object built by `create_app`.

It holds the settings and opens, on first use, the queue dispatcher (Redis) and the
label store, so the app starts and `/health` answers even while Redis or the database
is not reachable yet; a route that needs one of them answers 503 naming it. It also
records, off the request path, what an answer served (`Recorder`).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from squeezesam.backend.dispatch import Dispatcher
from squeezesam.backend.labelstudio import Prompt
from squeezesam.backend.recorder import Recorder
from squeezesam.backend.redis_conn import connect
from squeezesam.backend.registry import model_registry, model_version
from squeezesam.backend.settings import ConfigError, Settings
from squeezesam.backend.store import Store, StoreError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service cannot answer now; `status` is the HTTP status (503, 504...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # clicks and served regions are written after the answer, off the request path
        self.recorder = Recorder()
        self._dispatcher: Dispatcher | None = None
        self._store: Store | None = None
        self._store_lock = threading.Lock()

    # --- opened on first use -------------------------------------------------------------

    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:  # connect on first use: /health works without Redis
            try:
                self._dispatcher = Dispatcher(connect(self.settings), self.settings)
            except ConfigError as exc:  # REDIS_URL not set
                raise ServiceError(str(exc), 503) from None
        return self._dispatcher

    def store(self) -> Store:
        # opened in the background at start (open_store_early); a request that comes first
        # waits for that open instead of starting a second one. /health never needs it.
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    try:
                        opened = Store.open(self.settings)
                        opened.warm_up()
                    except StoreError as exc:
                        log.error("label store unavailable: %s", exc)
                        raise ServiceError(f"label store unavailable: {exc}", 503) from None
                    self._store = opened
        return self._store

    def store_or_none(self) -> Store | None:
        """The store for background writes, which never fail an answer: None when it
        cannot be opened (store() has logged why)."""
        try:
            return self.store()
        except ServiceError:
            return None

    def open_store_early(self) -> None:
        """Label Studio gives a webhook 1 s: the first one must not pay for opening the
        store (engine, create_all, column checks, first queries). A failure here is
        logged; the first request that needs the store tries again."""

        def open_store() -> None:
            self.store_or_none()

        threading.Thread(target=open_store, name="store-open", daemon=True).start()

    # --- the model version -----------------------------------------------------------------

    def model_version(self) -> str:
        try:
            return model_version(self.settings)
        except FileNotFoundError:
            msg = f"model file not found: {self.settings.model_path}"
            raise ServiceError(msg, 503) from None

    def model_versions(self) -> list[str]:
        """Every registered version (fine-tuned ones, promoted or not), oldest first."""
        return [m.version for m in model_registry(self.settings).list()]

    # --- written after the answer ----------------------------------------------------------

    def record_click(self, project: int | None, task: Any, prompt: Prompt, answer: str) -> None:
        """Keep the annotator's clicks (for later click-level training) and the region
        served for them, written in the background: the answer is parsed there, once,
        not on the click's path. A store failure is logged and never fails the click."""
        records = prompt.records if project is not None else ()
        task_id = task.get("id")

        def write() -> None:
            item = json.loads(answer)
            opened = self.store_or_none()
            if opened is None:
                return
            if records:
                try:
                    opened.served.record_clicks(project, int(task_id), records,
                                         model_version=item.get("model_version"))  # fmt: skip
                except Exception as exc:
                    log.warning("clicks not recorded: %s: %s", type(exc).__name__, exc)
            opened.served.record_served_item(task_id, item, "click")

        self.recorder.submit(write)

    def record_served(self, tasks: list, items: list[str], kind: str) -> None:
        """Remember the regions served per task (the start of an annotation: the label
        store compares it with the final masks), in the background; never fails the
        answer."""
        served = [
            (task.get("id"), item)
            for task, item in zip(tasks, items, strict=False)
            if isinstance(task, dict) and '"result"' in item  # skipped items carry none
        ]
        if not served:
            return

        def write() -> None:
            opened = self.store_or_none()
            if opened is None:
                return
            for task_id, item in served:
                opened.served.record_served_item(task_id, item, kind)

        self.recorder.submit(write)
