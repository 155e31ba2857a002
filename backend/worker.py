"""The warm worker: one process, one ONNX session, many jobs.

rq's default worker forks a work horse per job, which would reload the model on every
click. `WarmWorker` is a `SimpleWorker` (jobs run in the worker process itself), and
`runtime()` loads the predictor, the image fetcher and the cache client once per
process, on first use (or at start-up, to keep the first click fast).

Liveness: each worker beats a heartbeat every second (queues.beat, from a daemon
thread); the web process (dispatch.py) reads it through queues.alive_workers to see
within seconds that the worker holding its job died, and re-enqueues the job.

Shutdown: rq 3 polls its command channel (pubsub thread) with a 60 s timeout and, on
exit, unsubscribes before stopping that thread; when the thread has already read the
unsubscribe reply it waits up to 60 s for a new subscription, and redis-py 8's
`PubSubWorkerThread.stop()` joins it without a timeout, so a SIGTERMed worker lingered
(measured: 2 of 8 idle workers still there after 20 s; `serve` in a container was then
SIGKILLed by `docker stop`). `WarmWorker.subscribe` polls every PUBSUB_POLL s instead:
the thread sees the stop within that, and a worker exits in about a second.

Model versions: the model served is the registry's active one (`Registry.active_path()`:
a promoted fine-tuned version, else SQUEEZESAM_MODEL_PATH). A second daemon thread polls
`Registry.watch_token()` (one stat + one tiny read) every MODEL_POLL_INTERVAL; when it
changes, the new session is loaded and warmed up *beside* the old one and only then is
`Runtime.predictor` replaced (one reference assignment). A job in flight keeps the
predictor it started with, so no click is dropped or answered by half a swap; the next
job gets the new one. A version that fails to load is logged and the old one stays.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis
from rq import SimpleWorker

from squeezesam.backend.images import Fetcher, ImageCache
from squeezesam.backend.queues import HEARTBEAT_INTERVAL, MODEL_QUEUES, beat, leave
from squeezesam.backend.queues import alive_workers as alive_workers  # docker healthchecks
from squeezesam.backend.redis_conn import connect
from squeezesam.backend.registry import Registry, model_registry
from squeezesam.backend.settings import Settings
from squeezesam.backend.shutdown import STOP_GRACE, exit_within
from squeezesam.models.predictor import Predictor

log = logging.getLogger(__name__)

PUBSUB_POLL = 0.5  # seconds: how long a stopping worker may wait for rq's pubsub thread


@dataclass
class Runtime:
    """Everything a job needs, built once per worker process."""

    settings: Settings
    predictor: Predictor  # replaced as a whole on a new active version, never mutated
    fetcher: Fetcher
    cache: ImageCache
    registry: Registry
    model_token: str  # the registry's watch token the predictor was loaded for


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def load_predictor(path: Path, settings: Settings) -> Predictor:
    """The served predictor: one place for the settings that shape every click."""
    return Predictor(
        path,
        threads=settings.model_threads or None,
        focus=settings.focus_view,
        zoom_in=settings.zoom_in,
        guided=settings.guided_filter,
        flip=settings.flip_average,
    )


def runtime(settings: Settings | None = None) -> Runtime:
    """The process-wide runtime; the model is loaded on the first call only."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = settings or Settings.from_env()
            registry = model_registry(settings)
            token = registry.watch_token()  # before reading the path: a change re-polls
            path = registry.active_path()
            predictor = load_predictor(path, settings)
            _runtime = Runtime(
                settings=settings,
                predictor=predictor,
                fetcher=Fetcher(settings),
                cache=ImageCache(connect(settings), settings),
                registry=registry,
                model_token=token,
            )
            _warm_up(predictor)
            log.info("model %s loaded (%s)", predictor.version, path)
        return _runtime


def refresh_model(rt: Runtime) -> bool:
    """Load the registry's active version if it changed; True when swapped.

    Load and warm up first, then swap the reference: jobs in flight keep the old
    predictor object (see the module doc)."""
    token = rt.registry.watch_token()
    if token == rt.model_token:
        return False
    path = rt.registry.active_path()
    try:
        predictor = load_predictor(path, rt.settings)
        _warm_up(predictor)
    except Exception as exc:  # a broken version must not take the worker down
        log.error("cannot load the newly active model %s: %s; keeping %s", path, exc,
                  rt.predictor.version)  # fmt: skip
        rt.model_token = token  # don't retry the same broken version every second
        return False
    old, rt.predictor, rt.model_token = rt.predictor.version, predictor, token
    log.warning("model switched: %s -> %s (%s)", old, predictor.version, path)
    return True


def _warm_up(predictor: Predictor) -> None:
    """One throw-away pass and the RLE encoder's import, before the first real click."""
    from label_studio_sdk.converter.brush import mask2rle  # ~1 s of imports

    from squeezesam.models.clicks import Click

    prepared = predictor.prepare(np.zeros((64, 64, 3), dtype=np.uint8))
    mask2rle(predictor.predict(prepared, [Click(32, 32, True)]).mask.astype(np.uint8))


class WarmWorker(SimpleWorker):
    """SimpleWorker + a liveness heartbeat thread (see module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._beating = threading.Event()
        self.follow_models = False  # set by run_worker on model-serving queues

    def subscribe(self) -> None:
        """rq's subscription to the worker's command channel (shutdown, stop a job), with
        a PUBSUB_POLL s poll instead of rq 3's 60 s (see the module doc: shutdown)."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        handler = getattr(self, "_pubsub_exception_handler", None)  # rq >= 2.1
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_POLL, daemon=True, exception_handler=handler
        )

    def request_stop(self, signum, frame) -> None:
        """rq's warm shutdown (finish the current job, then stop), bounded: a job still
        running STOP_GRACE s after SIGTERM (a fine-tuning run) is cut off (shutdown.py)."""
        exit_within(STOP_GRACE, f"worker {self.name}")
        super().request_stop(signum, frame)

    def _beat_forever(self, connection: redis.Redis) -> None:
        names = [q.name for q in self.queues]
        while not self._beating.is_set():
            try:
                beat(connection, self.name, names)
            except redis.RedisError as exc:  # Redis restarting: keep trying
                log.warning("liveness heartbeat failed: %s", exc)
            self._beating.wait(HEARTBEAT_INTERVAL)
        leave(connection, self.name, names)

    def _watch_models(self) -> None:
        rt = runtime()
        while not self._beating.wait(rt.settings.model_poll_interval):
            try:
                refresh_model(rt)
            except OSError as exc:  # registry folder briefly unreadable: try again
                log.warning("model registry check failed: %s", exc)

    def work(self, *args, **kwargs) -> bool:
        # redis-py clients are thread-safe: the thread takes its own pooled connection
        # while the worker's sits in BLPOP
        thread = threading.Thread(target=self._beat_forever, args=(self.connection,), daemon=True)
        thread.start()
        if self.follow_models:
            threading.Thread(target=self._watch_models, daemon=True).start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._beating.set()
            thread.join(timeout=2)


def run_worker(queues: list[str], settings: Settings, burst: bool = False) -> None:
    """Start a warm worker on `queues` (blocks). Loads the model before the first job."""
    connection = connect(settings)
    serving = any(q in MODEL_QUEUES for q in queues)
    if serving:
        runtime(settings)  # fail here, loudly, if the model cannot load
    # the `train` queue's jobs import torch themselves (backend/training_job.py); a worker on
    # it loads no ONNX model. rq's single train worker + the Redis lock there mean one
    # fine-tuning run at a time.
    worker = WarmWorker(queues, connection=connection)
    worker.follow_models = serving
    # maintenance (abandoned-job clean-up) more often than rq's 10 min default
    worker.maintenance_interval = 60
    # rq logs every job at INFO; per click that is noise (and time): quiet unless DEBUG
    level = settings.log_level if settings.log_level.upper() == "DEBUG" else "WARNING"
    worker.work(burst=burst, logging_level=level, with_scheduler=False)
