"""A fine-tuning run's progress: written into its rq job's meta by the run itself
(training_job.py), read by `squeezesam train --wait` (a progress bar on stderr) and by the
dashboard (the running run's row).

    job.meta["progress"] = {"run": 12, "phase": "finetune", "step": 120, "steps": 300,
                            "loss": 0.41, "eta_s": 130.0, "updated": <unix time>}

Phases in order: reconcile, export, finetune (step, loss, ETA), gate, register. `loss` is
the mask loss of the latest step (`models.train.train_step`'s "mask"); the ETA is the
fine-tuning steps left at the mean step time so far (export and gate not included).
The meta is saved at most once every SAVE_EVERY s (and at every phase change), so a
fast run does not spend its time writing to Redis.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import redis
from rq.job import Job
from rq.registry import StartedJobRegistry

from squeezesam.backend.queues import TRAIN

log = logging.getLogger(__name__)

SAVE_EVERY = 1.0  # seconds between meta writes during fine-tuning
PHASES = ("reconcile", "export", "finetune", "gate", "register")


class ProgressWriter:
    """The run's side: `phase(name)` at each phase, `on_step` as finetune's hook."""

    def __init__(self, job: Job | None, run_id: int, steps: int) -> None:
        self.job = job  # None outside a worker (`train --here`): nothing to write
        self.state: dict[str, Any] = {"run": run_id, "phase": "reconcile", "step": 0,
                                      "steps": steps, "loss": None, "eta_s": None}  # fmt: skip
        self.started: float | None = None
        self.saved = 0.0

    def phase(self, name: str) -> None:
        self.state["phase"] = name
        if name == "finetune":  # the ETA's clock (data loading counts as step time)
            self.started = time.monotonic()
        self._save()

    def on_step(self, step: int, losses: dict[str, float]) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        steps = self.state["steps"]
        per_step = (now - self.started) / step
        self.state.update(phase="finetune", step=step, loss=round(float(losses["mask"]), 4),
                          eta_s=round(per_step * max(0, steps - step), 1))  # fmt: skip
        if now - self.saved >= SAVE_EVERY or step >= steps:
            self._save()

    def _save(self) -> None:
        self.saved = time.monotonic()
        if self.job is None:
            return
        self.job.meta["progress"] = dict(self.state, updated=time.time())
        try:
            self.job.save_meta()
        except redis.RedisError as exc:  # progress is for watching: the run goes on
            log.warning("training progress not saved: %s", exc)


def progress_of(job: Job) -> dict[str, Any] | None:
    """The job's latest progress (re-read from Redis), None before the run wrote any."""
    try:
        meta = job.get_meta(refresh=True)
    except Exception:  # the job's key expired or Redis hiccupped: no progress to show
        return None
    progress = meta.get("progress")
    return progress if isinstance(progress, dict) else None


def running_progress(connection: redis.Redis) -> dict[int, dict[str, Any]]:
    """Progress of every started fine-tuning job, by its run id (the dashboard's rows)."""
    ids = StartedJobRegistry(TRAIN, connection=connection).get_job_ids()
    out = {}
    for job in Job.fetch_many(ids, connection=connection):
        progress = (job.meta or {}).get("progress") if job is not None else None
        if isinstance(progress, dict) and isinstance(progress.get("run"), int):
            out[progress["run"]] = progress
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def describe(progress: dict[str, Any]) -> str:
    """One line: `fine-tuning step 120/300 (40%), loss 0.4100, ETA 2 min 10 s`."""
    phase = progress.get("phase", "")
    if phase != "finetune" or not progress.get("steps"):
        return {"reconcile": "catching up with Label Studio", "export": "exporting labels",
                "gate": "evaluating the candidate (gate)", "register": "registering the "
                "candidate"}.get(phase, phase or "starting")  # fmt: skip
    step, steps = progress["step"], progress["steps"]
    loss = progress.get("loss")
    return (f"fine-tuning step {step}/{steps} ({100 * step // steps}%), "
            f"loss {loss if loss is not None else '?'}, "
            f"ETA {_duration(progress.get('eta_s'))}")  # fmt: skip


class ProgressBar:
    """`train --wait`'s display on stderr.

    On a terminal: one line rewritten in place (a bar, step, loss, ETA). Not a terminal
    (CI logs, `2> file`): no bar and no carriage returns, one plain line at each phase
    change and every 10 % of the steps, so a log stays readable and short."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last: tuple | None = None
        self.drawn = False

    def update(self, progress: dict[str, Any] | None) -> None:
        if not progress:
            return
        phase, step, steps = progress.get("phase"), progress.get("step", 0), progress.get("steps")
        if self.tty:
            self.stream.write("\r" + self._bar(progress) + "\x1b[K")
            self.drawn = True
        else:
            decile = (10 * step // steps) if phase == "finetune" and steps else None
            if (phase, decile) == self.last:
                return
            self.last = (phase, decile)
            self.stream.write(f"run {progress.get('run')}: {describe(progress)}\n")
        self.stream.flush()

    def _bar(self, progress: dict[str, Any]) -> str:
        steps = progress.get("steps") or 0
        done = progress.get("step", 0) if progress.get("phase") == "finetune" else (
            steps if progress.get("phase") in ("gate", "register") else 0)  # fmt: skip
        filled = self.WIDTH * done // steps if steps else 0
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"run {progress.get('run')} [{bar}] {describe(progress)}"

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
