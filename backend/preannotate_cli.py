"""`squeezesam preannotate --project ID [--limit N]`: pre-annotate a whole project.

Lists the project's tasks (label-studio-sdk), queues the ones without a prediction of
the current model version on `preannotate`, and shows a progress bar until they are
written back to Label Studio. With REDIS_URL (a running `squeezesam serve` or workers)
the service's workers do the work; without it, or with `--inline`, this process starts
an embedded Redis and works through the queue itself. Safe to run again after a crash:
done tasks are skipped, nothing is written twice (see preannotate.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser("preannotate", help="pre-annotate a whole Label Studio project")
    cmd.add_argument("--project", type=int, required=True, help="Label Studio project id")
    cmd.add_argument("--limit", type=int, default=None, help="at most N tasks")
    cmd.add_argument(
        "--inline", action="store_true", help="do the work in this process (no workers needed)"
    )
    cmd.set_defaults(func=cmd_preannotate)


def cmd_preannotate(args: argparse.Namespace) -> int:
    from squeezesam.backend.settings import ConfigError, Settings

    settings = Settings.from_env()
    if not settings.label_studio_url:
        raise ConfigError(
            "LABEL_STUDIO_URL is not set: the tasks are read from and the predictions "
            "written to Label Studio (set it and LABEL_STUDIO_API_KEY)"
        )
    embedded = None
    if not settings.redis_url:
        from squeezesam.backend.redis_conn import EmbeddedRedis

        embedded = EmbeddedRedis()
        settings = dataclasses.replace(settings, redis_url=embedded.url)
        args.inline = True
    try:
        return _run(args, settings)
    finally:
        if embedded is not None:
            embedded.close()


def _run(args: argparse.Namespace, settings) -> int:
    from tqdm import tqdm

    from squeezesam.backend import progress, project_params
    from squeezesam.backend.ls_client import LabelStudioClient
    from squeezesam.backend.preannotate import run_status
    from squeezesam.backend.preannotate_job import plan
    from squeezesam.backend.queues import PREANNOTATE
    from squeezesam.backend.redis_conn import connect
    from squeezesam.backend.registry import model_version
    from squeezesam.backend.worker import run_worker

    conn = connect(settings)
    version = model_version(settings)
    queued = plan(LabelStudioClient(settings), conn, settings, args.project, version, args.limit)
    params = project_params.load(conn, args.project)  # the lead's Extra params
    if params is not None and not params.zero_click:
        print(f"project {args.project}: {project_params.OFF}; nothing queued")
        return 0
    print(f"project {args.project}: {queued} tasks queued (model {version})")
    stop = threading.Event()

    def show() -> None:
        with tqdm(total=queued, unit="task", desc=f"project {args.project}") as bar:
            while not stop.is_set():
                runs = progress.read_progress(conn, args.project)
                if runs:
                    bar.total = runs[0].total
                    bar.n = runs[0].done
                    bar.set_postfix(failed=runs[0].failed)
                    bar.refresh()
                    if runs[0].state == "finished":
                        return
                stop.wait(0.5)

    if queued:
        bar = threading.Thread(target=show, daemon=True)
        bar.start()
        if args.inline:
            # rq installs signal handlers: the worker runs in the main thread, the bar aside
            run_worker([PREANNOTATE], settings, burst=True)
            time.sleep(0.6)  # one more refresh of the bar
            stop.set()
        bar.join()
    status = run_status(conn, args.project)
    print(f"done {status.get('done', 0)}/{status.get('total', 0)}, failed {status.get('failed', 0)}"
          f", {status.get('rate', 0)} tasks/s")  # fmt: skip
    for error in status["errors"][:20]:
        print(f"  task {error['task']}: {error['error']}")
    return 1 if status.get("failed") else 0
