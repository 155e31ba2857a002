"""`squeezesam serve`'s supervisor: starts the children, restarts the ones that die, and
stops them all on SIGTERM/SIGINT within `docker stop`'s 10 s.

Stopping is bounded: SIGTERM to every child, up to CHILD_GRACE s for them to exit (a
worker finishes its click and leaves; `web` writes its pending click records), SIGKILL
for any still there, then the caller closes the embedded Redis (REDIS_GRACE): about
6 + 1 + 2 s at the very worst, about 1-2 s as measured. Before, the supervisor waited up
to 10 s for its children alone, and then closed Redis, so a worker that lingered made
`docker stop` SIGKILL the container (the lingering itself: worker.py, `subscribe`).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time

log = logging.getLogger("squeezesam.serve")

RESTART_DELAY = 1.0  # seconds before restarting a dead child (no busy crash loop)
EXIT_PORT_BUSY = 3  # `web` could not bind its port: `serve` stops instead of restarting it
CHILD_GRACE = 6.0  # seconds between SIGTERM and SIGKILL for the children
KILL_WAIT = 1.0  # seconds for the SIGKILLed to be reaped
REDIS_GRACE = 2.0  # seconds for the embedded Redis to exit on SIGTERM (then SIGKILL)


class Supervisor:
    """Starts the children, restarts the ones that die, stops them all on a signal."""

    def __init__(self, commands: list[list[str]], env: dict[str, str]) -> None:
        self.commands = commands
        self.env = env
        self.children: list[subprocess.Popen | None] = [None] * len(commands)
        self.stopping = False

    def _start(self, i: int) -> None:
        self.children[i] = subprocess.Popen(self.commands[i], env=self.env)
        log.info("started %s (pid %d)", " ".join(self.commands[i][3:]), self.children[i].pid)

    def run(self) -> int:
        def stop(signum, _frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for i in range(len(self.commands)):
            self._start(i)
        while not self.stopping:
            time.sleep(0.2)
            for i, child in enumerate(self.children):
                if child is not None and child.poll() is not None and not self.stopping:
                    if child.returncode == EXIT_PORT_BUSY:  # taken since serve checked it
                        return EXIT_PORT_BUSY
                    log.warning("%s exited with %s: restarting", child.args[3], child.returncode)
                    time.sleep(RESTART_DELAY)
                    self._start(i)
        return 0

    def stop(self, grace: float = CHILD_GRACE) -> None:
        """SIGTERM every child, wait up to `grace` s in all, SIGKILL the stragglers."""
        self.stopping = True
        running = [c for c in self.children if c is not None and c.poll() is None]
        for child in running:
            child.terminate()
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in running:
            if child.poll() is None:
                log.warning("%s did not exit %.0f s after SIGTERM: SIGKILL",
                            " ".join(child.args[3:]), grace)  # fmt: skip
                child.kill()
        for child in running:
            try:
                child.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:  # unkillable (D state): serve exits anyway
                log.error("pid %d still there after SIGKILL", child.pid)
