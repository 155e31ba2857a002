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

import faulthandler
import os
import threading
import time

# seconds from SIGTERM to the forced exit: under supervisor.CHILD_GRACE (6 s) so serve's
# supervisor never has to SIGKILL a child, and well under docker stop's 10 s
STOP_GRACE = 5.0
EXIT_STOPPED = 143  # 128 + SIGTERM: what a process ended by SIGTERM reports
# seconds after STOP_GRACE for the C-level backstop (faulthandler), which exits with 1
# after dumping every thread's stack to stderr: STOP_GRACE + BACKSTOP stays under serve's
# supervisor.CHILD_GRACE (6 s), so the stacks reach the log before any SIGKILL
BACKSTOP = 0.8

_started = threading.Event()


def exit_within(seconds: float, what: str) -> None:
    """Start (once) a daemon timer that ends the process `seconds` from now.

    The expiry takes no lock the rest of the process may hold: its warning is written
    straight to file descriptor 2 (not through `logging`, whose handler lock a thread
    stuck writing to a full stderr pipe would hold forever) and the exit is `os._exit`.
    A second, C-level bound (`faulthandler`, its own watchdog thread, no GIL needed)
    dumps every thread's stack and exits BACKSTOP s later, should the Python timer
    itself never get to run."""
    if _started.is_set():
        return
    _started.set()

    def expire() -> None:
        running = sorted(
            t.name for t in threading.enumerate() if t is not threading.current_thread()
        )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        _write_stderr(
            f"{stamp} {os.getpid()} {__name__} WARNING {what} still running {seconds:.0f} s "
            f"after SIGTERM (threads: {', '.join(running)}): exiting now\n"
        )
        os._exit(EXIT_STOPPED)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.name = "stop-bound"
    timer.start()
    faulthandler.dump_traceback_later(seconds + BACKSTOP, exit=True)


def _write_stderr(text: str) -> None:
    """Best effort, never blocking: a stderr pipe nobody drains must not hold the exit."""
    try:
        os.set_blocking(2, False)
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass
