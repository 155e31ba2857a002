"""Fine-tuning progress (issue 22): what the run writes into its rq job's meta, and how
`squeezesam train --wait` shows it (a bar on a terminal, plain lines in a log). The real
worker and the real `train --wait` are in test_training.py."""

from __future__ import annotations

import datetime as dt
import io

import redis
from rq import Queue

from squeezesam.backend.settings import Settings
from squeezesam.backend.training_job import guard_set
from squeezesam.backend.training_progress import (
    ProgressBar,
    ProgressWriter,
    describe,
    progress_of,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _steps(writer: ProgressWriter, n: int) -> None:
    writer.phase("finetune")
    for step in range(1, n + 1):
        writer.on_step(step, {"mask": 0.5 / step, "iou": 0.1, "cls": 0.2, "batch_iou": 0.7})


def test_the_run_writes_step_loss_and_eta_into_its_jobs_meta(redis_server):
    connection = redis.Redis.from_url(redis_server.url)
    job = Queue("train-progress-test", connection=connection).enqueue("builtins.print", "x")
    writer = ProgressWriter(job, run_id=4, steps=10)
    writer.phase("export")
    assert progress_of(job)["phase"] == "export"
    _steps(writer, 10)  # the last step is always saved, however fast the steps came
    seen = progress_of(job)
    assert (seen["run"], seen["phase"], seen["step"], seen["steps"]) == (4, "finetune", 10, 10)
    assert seen["loss"] == 0.05 and seen["eta_s"] == 0.0
    assert describe(seen).startswith("fine-tuning step 10/10 (100%), loss 0.05, ETA 0 s")
    job.delete()


def test_no_job_no_meta_and_no_error():
    _steps(ProgressWriter(None, run_id=1, steps=3), 3)  # `train --here`: nothing to write


def test_on_a_terminal_the_bar_is_one_line_rewritten_in_place():
    out = Terminal()
    bar = ProgressBar(out)
    for step in (0, 5, 10):
        bar.update({"run": 2, "phase": "finetune", "step": step, "steps": 10, "loss": 0.3,
                    "eta_s": 75.0})  # fmt: skip
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "[###############---------------] fine-tuning step 5/10 (50%), loss 0.3, " \
           "ETA 1 min 15 s" in text  # fmt: skip


def test_in_a_log_there_is_no_bar_only_a_line_per_phase_and_tenth():
    out = io.StringIO()
    bar = ProgressBar(out)
    bar.update({"run": 2, "phase": "export", "step": 0, "steps": 100})
    for step in range(1, 101):
        bar.update({"run": 2, "phase": "finetune", "step": step, "steps": 100, "loss": 0.3,
                    "eta_s": 100 - step})  # fmt: skip
    bar.update({"run": 2, "phase": "gate", "step": 100, "steps": 100})
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "run 2: exporting labels"
    assert len(lines) == 1 + 10 + 1 + 1  # export, 1..9 tenths and 100 %, step 1, gate
    assert lines[-1] == "run 2: evaluating the candidate (gate)"


class _Sample:
    def __init__(self, image_id: str) -> None:
        self.image_id = image_id


def test_without_base_data_the_guard_is_the_earliest_half_of_the_heldout_labels():
    heldout = [_Sample(f"p7_t{i}") for i in (5, 9, 2, 7)]
    times = {"p7_t5": dt.datetime(2026, 1, 3), "p7_t9": dt.datetime(2026, 1, 1),
             "p7_t2": dt.datetime(2026, 1, 4), "p7_t7": dt.datetime(2026, 1, 2)}  # fmt: skip
    samples, text = guard_set(Settings(), None, heldout, times)
    assert [s.image_id for s in samples] == ["p7_t9", "p7_t7"]
    assert text.startswith("project's earlier held-out labels (2 of 4 held-out images")
    assert "TRAIN_BASE_DATA" in text
    off, text = guard_set(Settings(train_guard_per_set=0), None, heldout, times)
    assert off == [] and text == "none (TRAIN_GUARD_PER_SET=0)"
