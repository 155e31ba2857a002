"""A bounded stop after SIGTERM for the web process and the workers.

`docker stop` (and serve's supervisor, `supervisor.CHILD_GRACE`) give a process a few
seconds after SIGTERM, then SIGKILL it. A clean exit is the rule (waitress's loop ends,
rq's warm shutdown finishes the current job); this is the bound on it: STOP_GRACE s
after the first SIGTERM the process exits by itself, after one warning naming what was
still running, instead of being killed from outside without a word. Cases seen in the
container smoke test: a trainer in the middle of a fine-tuning run (rq waits for the
job), a web process whose request threads were still waiting on jobs. A job cut off this
way is what a killed worker leaves: `queues.requeue_abandoned` requeues or fails it once
the worker's heartbeat is gone.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

# seconds from SIGTERM to the forced exit: under supervisor.CHILD_GRACE (6 s) so serve's
# supervisor never has to SIGKILL a child, and well under docker stop's 10 s
STOP_GRACE = 5.0
EXIT_STOPPED = 143  # 128 + SIGTERM: what a process ended by SIGTERM reports

_started = threading.Event()


def exit_within(seconds: float, what: str) -> None:
    """Start (once) a daemon timer that ends the process `seconds` from now."""
    if _started.is_set():
        return
    _started.set()

    def expire() -> None:
        running = sorted(
            t.name for t in threading.enumerate() if t is not threading.current_thread()
        )
        log.warning(
            "%s still running %.0f s after SIGTERM (threads: %s): exiting now",
            what, seconds, ", ".join(running),
        )  # fmt: skip
        logging.shutdown()
        os._exit(EXIT_STOPPED)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.name = "stop-bound"
    timer.start()
