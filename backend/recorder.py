"""Label-store writes that must not delay an answer, on one background thread.

A click's answer used to wait for two SQLite commits (the annotator's clicks and the
served regions: ~3.5 ms of a ~25 ms click on the 2-core machine, measured with
benchmarks/click_latency.py). Neither is needed by the answer: the clicks and served
regions are read when the annotation is submitted, minutes later. So the web process
hands them to this writer and answers at once.

One thread keeps the writes in arrival order. The queue is bounded: if the store
stalls, new records are dropped with a warning rather than growing memory or blocking
clicks (they are telemetry for training and the dashboard, never user data). Pending
records are written at interpreter exit (`flush` with a time limit).
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_PENDING = 10_000


class Recorder:
    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._queue: queue.Queue[Callable[[], Any] | threading.Event] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        atexit.register(self.flush, 10.0)

    def submit(self, write: Callable[[], Any]) -> bool:
        """Queue one write; False (and a warning) when the queue is full."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(write)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("label store writes are behind: record dropped (%d so far)", self.dropped)
            return False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                item()
            except Exception as exc:  # a failed write is logged, never kills the thread
                log.warning("label store write failed: %s: %s", type(exc).__name__, exc)
