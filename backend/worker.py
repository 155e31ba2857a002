"""The warm worker: one process, one ONNX session, many jobs.

rq's default worker forks a work horse per job, which would reload the model on every
click. `WarmWorker` is a `SimpleWorker` (jobs run in the worker process itself), and
`runtime()` loads the predictor, the image fetcher and the cache client once per
process, on first use (or at start-up, to keep the first click fast).

Liveness: rq notices a dead worker only after job timeout + 60 s. A click cannot wait
that long, so each worker also writes a heartbeat every second into a per-queue sorted
set (`alive_key`), from a daemon thread. The web process (dispatch.py) reads it to see
within seconds that the worker holding its job died, and re-enqueues the job.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import redis
from rq import SimpleWorker

from squeezesam.models.predictor import Predictor

from .images import Fetcher, ImageCache
from .redis_conn import connect
from .settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # seconds between liveness beats
HEARTBEAT_GRACE = 5.0  # a worker silent for this long is dead


def alive_key(queue_name: str) -> str:
    return f"squeezesam:alive:{queue_name}"


@dataclass
class Runtime:
    """Everything a job needs, built once per worker process."""

    settings: Settings
    predictor: Predictor
    fetcher: Fetcher
    cache: ImageCache


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime(settings: Settings | None = None) -> Runtime:
    """The process-wide runtime; the model is loaded on the first call only."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = settings or Settings.from_env()
            predictor = Predictor(settings.model_file, threads=settings.model_threads or None)
            _runtime = Runtime(
                settings=settings,
                predictor=predictor,
                fetcher=Fetcher(settings),
                cache=ImageCache(connect(settings), settings),
            )
            _warm_up(predictor)
            log.info("model %s loaded (%s)", predictor.version, settings.model_file)
        return _runtime


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

    def _beat_forever(self, connection: redis.Redis) -> None:
        keys = [alive_key(q.name) for q in self.queues]
        while not self._beating.is_set():
            try:
                with connection.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.zadd(key, {self.name: time.time()})
                    pipe.execute()
            except redis.RedisError as exc:  # Redis restarting: keep trying
                log.warning("liveness heartbeat failed: %s", exc)
            self._beating.wait(HEARTBEAT_INTERVAL)
        for key in keys:  # a clean exit says so at once
            connection.zrem(key, self.name)

    def work(self, *args, **kwargs) -> bool:
        # redis-py clients are thread-safe: the thread takes its own pooled connection
        # while the worker's sits in BLPOP
        thread = threading.Thread(target=self._beat_forever, args=(self.connection,), daemon=True)
        thread.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._beating.set()
            thread.join(timeout=2)


def alive_workers(connection: redis.Redis, queue_name: str) -> set[str]:
    """Names of workers on `queue_name` that beat within HEARTBEAT_GRACE."""
    cutoff = time.time() - HEARTBEAT_GRACE
    names = connection.zrangebyscore(alive_key(queue_name), cutoff, "+inf")
    return {n.decode() for n in names}


def run_worker(queues: list[str], settings: Settings, burst: bool = False) -> None:
    """Start a warm worker on `queues` (blocks). Loads the model before the first job."""
    connection = connect(settings)
    if "interactive" in queues or "preannotate" in queues:
        runtime(settings)  # fail here, loudly, if the model cannot load
    worker = WarmWorker(queues, connection=connection)
    # maintenance (abandoned-job clean-up) more often than rq's 10 min default
    worker.maintenance_interval = 60
    # rq logs every job at INFO; per click that is noise (and time): quiet unless DEBUG
    level = settings.log_level if settings.log_level.upper() == "DEBUG" else "WARNING"
    worker.work(burst=burst, logging_level=level, with_scheduler=False)


_versions: dict[tuple[str, float], str] = {}


def model_version(settings: Settings) -> str:
    """The version the workers serve, read from the model file's metadata (cached).

    The web process needs it for `/setup` and `/health` without running jobs; reading it
    costs one onnxruntime session load per model file change.
    """
    path = settings.model_file
    key = (str(path), path.stat().st_mtime if path.is_file() else -1.0)
    if key not in _versions:
        _versions[key] = Predictor(path, threads=1).version
    return _versions[key]
