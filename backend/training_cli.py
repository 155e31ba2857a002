"""`squeezesam train` and `squeezesam train-scheduler`: fine-tuning from the command line.

`train` queues a run on the `train` queue (training.py) and can wait for it, or runs it
in this process with `--here` (still under the training lock); `train-scheduler` is the
loop that queues runs when enough new labels arrived. Heavy imports stay inside the
commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from rq.job import JobStatus

from squeezesam.backend.queues import TRAIN, alive_workers
from squeezesam.backend.settings import Settings
from squeezesam.backend.training import enqueue_training, scheduler_loop
from squeezesam.backend.training_progress import ProgressBar, progress_of

log = logging.getLogger(__name__)

WAIT_POLL = 1.0  # seconds between `train --wait`'s looks at the run's progress


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="queue a fine-tuning run on collected labels")
    train.add_argument("--project", type=int, help="Label Studio project id (default: all)")
    train.add_argument("--steps", type=int, help="optimizer steps (default TRAIN_STEPS)")
    train.add_argument("--wait", action="store_true", help="wait for the run and print it")
    train.add_argument(
        "--here", action="store_true",
        help="run in this process instead of on the train worker (still takes the lock)",
    )  # fmt: skip
    train.set_defaults(func=cmd_train)
    sched = subparsers.add_parser(
        "train-scheduler", help="queue runs when TRAIN_MIN_NEW_LABELS arrived (a loop)"
    )
    sched.set_defaults(func=cmd_scheduler)


def cmd_train(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.here:
        from squeezesam.backend.training_job import TrainRequest, run_training_job

        print(json.dumps(run_training_job(TrainRequest(args.project, args.steps, "manual"))))
        return 0
    from squeezesam.backend.redis_conn import connect

    connection = connect(settings)
    job = enqueue_training(connection, args.project, args.steps, "manual")
    print(f"job {job.id}")
    if not alive_workers(connection, TRAIN):
        log.warning("no train worker is running: start `squeezesam serve` or "
                    "`squeezesam worker --queues train`")  # fmt: skip
    if not args.wait:
        return 0
    bar = ProgressBar()  # stderr: a bar on a terminal, plain lines otherwise
    try:
        while (status := job.get_status(refresh=True)) not in (
            JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED,
        ):  # fmt: skip
            bar.update(progress_of(job))
            time.sleep(WAIT_POLL)
    finally:
        bar.close()
    if status != JobStatus.FINISHED:
        print(f"the run {status}: {job.latest_result().exc_string if job.latest_result() else ''}")
        return 1
    print(json.dumps(job.return_value()))
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level)
    scheduler_loop(settings)
    return 0
