"""The fine-tuning job (what the `train` queue runs; queued by training.py): labels ->
candidate -> gate -> maybe promote.

One run, in order:

1. take the training lock (Redis, with a TTL renewed while the run lives, so a killed
   train worker's lock expires by itself) and mark runs left "running" by a dead worker
   as failed;
2. catch up with Label Studio (`reconcile.reconcile`) when its URL and key are set; if it
   is down the run goes on with what the store holds (nothing collected is lost);
3. export the project's accepted labels to the dataset folder format
   (`<data dir>/training/p<project>/dataset`; images fetched once through the service's
   own fetcher and kept across runs). export_labels' md5 split is stable per image id,
   so the held-out `val` images are never trained on, in this run or any later one;
4. `models.finetune.finetune` from the active version's fp16 checkpoint (the shipped
   model's is models/weights/squeezesam_fp16.pt), replaying base data when present;
5. `models.finetune.gate` on the held-out split and the base guard set; the candidate is
   registered either way (its card says what the gate decided, so an operator can still
   `squeezesam models promote` it) and made active only if the gate says so;
6. one row in `training_runs` (store/runs.py) from start to finish: data
   size, duration, both models' metrics, decision and reason.

torch is imported inside `train_project` only: web and model-serving workers import
this module never, and the train worker only when a job runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from squeezesam.backend import export_labels
from squeezesam.backend.reconcile import LabelStudioSource, ReconcileError, reconcile
from squeezesam.backend.registry import Registry, model_version_of
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store
from squeezesam.backend.store.runs import (
    close_interrupted_runs,
    record_training_run,
    update_training_run,
)
from squeezesam.backend.training_progress import ProgressWriter

log = logging.getLogger(__name__)

LOCK_KEY = "squeezesam:train:lock"


class TrainingBusy(RuntimeError):
    """Another run holds the training lock."""


@dataclass(frozen=True)
class TrainRequest:
    """What to fine-tune: a project (None: all projects' labels), how long, and why."""

    project_id: int | None
    steps: int | None = None  # None: TRAIN_STEPS
    trigger: str = "manual"  # manual | start_training | schedule


@contextmanager
def training_lock(connection: redis.Redis, ttl: int, wait: float) -> Iterator[None]:
    """Hold LOCK_KEY for the block; a thread renews it every ttl/4 s.

    If the holder dies the key expires after at most `ttl` s, so `wait` >= ttl lets the
    next run go on after a killed worker."""
    lock = connection.lock(LOCK_KEY, timeout=ttl, thread_local=False)
    if not lock.acquire(blocking=True, blocking_timeout=wait):
        raise TrainingBusy(f"another fine-tuning run holds {LOCK_KEY}")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(max(1.0, ttl / 4)):
            try:
                lock.reacquire()
            except Exception as exc:  # Redis restarting: the next beat tries again
                log.warning("training lock renewal failed: %s", exc)

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        try:
            lock.release()
        except Exception as exc:  # expired meanwhile: nothing to release
            log.warning("training lock release: %s", exc)


def run_training_job(request: TrainRequest) -> dict[str, Any]:
    """The `train` queue's entry point (settings from the worker's environment)."""
    from squeezesam.backend.redis_conn import connect

    settings = Settings.from_env()
    store = Store.open(settings)
    try:
        with training_lock(connect(settings), settings.train_lock_ttl,
                           wait=settings.train_lock_ttl + 5):  # fmt: skip
            return train_project(settings, store, request)
    finally:
        store.close()


def _image_loader(settings: Settings) -> export_labels.ImageLoader:
    from squeezesam.backend.images import Fetcher, decode

    fetcher = Fetcher(settings)
    return lambda ref: decode(fetcher.fetch(ref), settings.image_max_pixels)


def _reconcile(settings: Settings, store: Store, project_id: int | None) -> str:
    if project_id is None or not (settings.label_studio_url and settings.label_studio_api_key):
        return "skipped"
    try:
        source = LabelStudioSource(settings.label_studio_url, settings.label_studio_api_key)
        counts = reconcile(store, source, project_id)
    except ReconcileError as exc:
        log.warning("training goes on with the stored labels: %s", exc)
        return f"failed: {exc}"
    return "ok " + ", ".join(f"{k}={v}" for k, v in counts.items() if v)


def train_project(settings: Settings, store: Store, request: TrainRequest) -> dict[str, Any]:
    """One run (the caller holds the training lock). Returns a summary dict."""
    registry = Registry(settings.registry_path, default_model=settings.model_file)
    close_interrupted_runs(store.engine)  # their worker died: we hold the lock now
    started, t0 = _now(), time.monotonic()
    current_version = model_version_of(registry.active_path())
    run_id = record_training_run(
        store.engine, project=request.project_id, started_at=started, status="running",
        current_version=current_version, reason=f"trigger: {request.trigger}",
    )  # fmt: skip

    def finish(status: str, decision: str, reason: str, **values: Any) -> dict[str, Any]:
        duration = round(time.monotonic() - t0, 1)
        update_training_run(store.engine, run_id, status=status, finished_at=_now(),
                                   duration_s=duration, decision=decision, reason=reason,
                                   **values)  # fmt: skip
        log.info("training run %d: %s (%s)", run_id, decision, reason)
        return {"run": run_id, "status": status, "decision": decision, "reason": reason,
                "duration_s": duration, **values}  # fmt: skip

    from rq import get_current_job

    progress = ProgressWriter(get_current_job(), run_id, request.steps or settings.train_steps)
    try:
        progress.phase("reconcile")
        reconciled = _reconcile(settings, store, request.project_id)
        scope = f"p{request.project_id}" if request.project_id is not None else "all"
        workdir = settings.data_path / "training" / scope
        dataset = workdir / "dataset"
        progress.phase("export")
        export_labels.export_folder(store, dataset, _image_loader(settings),
                                    request.project_id)  # fmt: skip
        run = RunContext(request, run_id, workdir, dataset, reconciled, current_version,
                         progress, _label_times(store, request.project_id))  # fmt: skip
        return _train_and_gate(settings, registry, run, finish)
    except Exception as exc:
        log.exception("training run %d failed", run_id)
        finish("failed", "none", f"{type(exc).__name__}: {exc}")
        raise


@dataclass(frozen=True)
class RunContext:
    """What `_train_and_gate` needs of the run `train_project` opened."""

    request: TrainRequest
    run_id: int
    workdir: Path
    dataset: Path
    reconciled: str
    current_version: str
    progress: ProgressWriter
    label_times: dict[str, dt.datetime]  # image id -> when its label was made


def _label_times(store: Store, project_id: int | None) -> dict[str, dt.datetime]:
    return {export_labels.image_id(a): a.created_at or a.updated_at
            for a in export_labels.select(store, project_id)}  # fmt: skip


def base_data_root(settings: Settings) -> Path:
    """TRAIN_BASE_DATA, else SQUEEZESAM_SHARED_DATA, else ../shared/data."""
    from squeezesam.models.data import default_data_root

    return Path(settings.train_base_data).expanduser() if settings.train_base_data \
        else default_data_root()  # fmt: skip


def guard_set(settings: Settings, base: Path | None, heldout: list, label_times: dict,
              ) -> tuple[list, str]:  # fmt: skip
    """(guard samples, which guard): the base data's guard set when base data is there;
    without it, the earliest-labelled half of the project's own held-out images (the
    candidate must not lose what the project's earlier labels showed); never silently
    none. The text goes to the run's record, its card and the dashboard."""
    from squeezesam.models.finetune import guard_samples

    if settings.train_guard_per_set <= 0:
        return [], "none (TRAIN_GUARD_PER_SET=0)"
    if base is not None:
        samples = guard_samples(base, settings.train_guard_per_set)
        return samples, f"base data {base} ({len(samples)} images)"
    oldest = sorted(heldout, key=lambda s: (label_times.get(s.image_id) or dt.datetime.max,
                                            s.image_id))  # fmt: skip
    samples = oldest[: max(1, len(oldest) // 2)]
    return samples, (f"project's earlier held-out labels ({len(samples)} of {len(heldout)} "
                     "held-out images; no base data: set TRAIN_BASE_DATA)")  # fmt: skip


def _train_and_gate(settings: Settings, registry: Registry, run: RunContext, finish,
                    ) -> dict[str, Any]:  # fmt: skip
    # torch and the training code: only here, inside the train worker's job
    from squeezesam.models.data import discover_sets, load_samples
    from squeezesam.models.finetune import finetune, gate

    request, run_id, workdir, current_version = (run.request, run.run_id, run.workdir,
                                                 run.current_version)  # fmt: skip
    train = load_samples(run.dataset, "train")
    heldout = load_samples(run.dataset, "val")
    data_size = len(train) + len(heldout)
    if not train or not heldout:
        return finish("finished", "none", f"not enough labels: {len(train)} train and "
                      f"{len(heldout)} held-out images (reconcile {run.reconciled})",
                      data_size=data_size)  # fmt: skip
    checkpoint = registry.checkpoint_path()
    if checkpoint is None:
        return finish("failed", "none", f"the active version {current_version} has no fp16 "
                      "checkpoint to fine-tune from", data_size=data_size)  # fmt: skip
    base = base_data_root(settings)
    has_base = bool(discover_sets(base)) if base.is_dir() else False
    if not has_base:
        log.warning(
            "no base data under %s (TRAIN_BASE_DATA): fine-tuning without replay; "
            "the guard set comes from the project's earlier held-out labels",
            base,
        )
    version = f"squeezesam-{'all' if request.project_id is None else f'p{request.project_id}'}" \
              f"-r{run_id}-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}"  # fmt: skip
    # half the cores: the interactive workers keep answering clicks during a run
    threads = max(1, (os.cpu_count() or 2) // 2)
    run.progress.phase("finetune")
    result = finetune(
        run.dataset, checkpoint, workdir / f"run{run_id}",
        steps=request.steps or settings.train_steps, batch=settings.train_batch,
        size=settings.train_size, replay_data=base if has_base else None,
        replay_fraction=settings.train_replay_fraction, threads=threads, version=version,
        on_step=run.progress.on_step,
    )  # fmt: skip
    guard, guard_text = guard_set(settings, base if has_base else None, heldout,
                                  run.label_times)  # fmt: skip
    run.progress.phase("gate")
    current_path = registry.active_path()
    decision = gate(result.int8, current_path, heldout, guard, settings.train_gate_clicks,
                    settings.train_guard_tolerance)  # fmt: skip
    metrics = {"candidate": decision.candidate, "current": decision.current}
    card = {
        "metrics": metrics, "data_size": data_size, "train_images": len(train),
        "heldout_images": len(heldout), "parent_version": current_version,
        "project": request.project_id, "steps": result.steps, "run": run_id,
        "decision": "promoted" if decision.promote else "rejected", "reason": decision.reason,
        "guard": guard_text,
    }  # fmt: skip
    run.progress.phase("register")
    registry.register(result.int8, result.version, card, checkpoint=result.checkpoint)
    if decision.promote:
        registry.promote(result.version)
    return finish("finished", card["decision"], decision.reason, data_size=data_size,
                  candidate_version=result.version, metrics=metrics,
                  guard=guard_text)  # fmt: skip


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
