"""A SIGTERMed `squeezesam serve` (and each worker) exits well within `docker stop`'s 10 s.

The root cause of serve's slow stops: rq 3 stops its pubsub thread after unsubscribing,
and when that thread has already read the unsubscribe reply it waits up to 60 s (its poll
timeout) for a new subscription while redis-py 8's `PubSubWorkerThread.stop()` joins it
without a timeout. So an idle worker sometimes lingered for up to a minute (2 of 8 here);
serve waited up to 10 s for its children and then closed Redis, and `docker stop`
SIGKILLed the container. Now the workers poll every PUBSUB_POLL s (worker.py) and the
supervisor is bounded (SIGTERM, CHILD_GRACE s, SIGKILL, then Redis: supervisor.py). The
lingering was a race, so each test repeats the stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import redis

from squeezesam.backend.queues import alive_workers
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.supervisor import CHILD_GRACE, KILL_WAIT, REDIS_GRACE, Supervisor

from .conftest import free_port

SERVE_STOP_LIMIT = 8.0  # seconds: docker stop sends SIGKILL after 10
WORKER_STOP_LIMIT = 3.0  # seconds: an idle worker has nothing to finish


def clean_env(tmp_path, model_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BASIC_AUTH", "WEBHOOK", "REDIS_URL", "SQUEEZESAM_"))}  # fmt: skip
    return env | {"SQUEEZESAM_DATA_DIR": str(tmp_path / "data"),
                  "SQUEEZESAM_REGISTRY_DIR": str(tmp_path / "registry"),
                  "SQUEEZESAM_MODEL_PATH": str(model_path), "SQUEEZESAM_MODEL_THREADS": "1",
                  "LOG_LEVEL": "INFO"}  # fmt: skip


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited during start-up"
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("serve did not answer /health")


def sigterm_and_time(proc: subprocess.Popen) -> float:
    """SIGTERM `proc` and return the seconds until it exited (at most 30 s waited)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return time.monotonic() - t0


def kill_if_alive(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("attempt", range(3))
def test_serve_exits_within_8_s_of_sigterm_without_killing_a_child(attempt, tmp_path, model_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "squeezesam.backend.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            env=clean_env(tmp_path, model_path), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_healthy(port, proc)
            time.sleep(3)  # every worker idle in its dequeue, the model loaded
            took = sigterm_and_time(proc)
        finally:
            kill_if_alive(proc)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert took < SERVE_STOP_LIMIT, f"serve took {took:.1f} s to stop\n{text[-3000:]}"
    assert "SIGKILL" not in text, text[-3000:]  # every child exited on SIGTERM


@pytest.mark.parametrize("attempt", range(2))
def test_idle_workers_exit_within_3_s_of_sigterm(attempt, tmp_path, model_path):
    server = EmbeddedRedis(tmp_path / "redis", watchdog=False)
    env = clean_env(tmp_path, model_path) | {"REDIS_URL": server.url}
    queues = ["interactive", "preannotate", "train"]
    procs = [subprocess.Popen([sys.executable, "-m", "squeezesam.backend.cli", "worker",
                               "--queues", q], env=env) for q in queues]  # fmt: skip
    try:
        connection = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 120
        while not all(alive_workers(connection, q) for q in queues):
            assert time.monotonic() < deadline, "the workers did not start"
            assert all(p.poll() is None for p in procs), "a worker exited during start-up"
            time.sleep(0.2)
        time.sleep(3)  # idle in the dequeue (BLMOVE), the pubsub thread polling
        t0 = time.monotonic()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        took = {}
        for queue, proc in zip(queues, procs, strict=True):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            took[queue] = time.monotonic() - t0
        slow = {q: f"{t:.1f} s" for q, t in took.items() if t > WORKER_STOP_LIMIT}
        assert not slow, f"workers still there after SIGTERM: {slow}"
        assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    finally:
        for proc in procs:
            kill_if_alive(proc)
        server.close()


def test_the_supervisor_kills_a_child_that_ignores_sigterm_after_its_grace():
    """The bound itself: a child that ignores SIGTERM is SIGKILLed after CHILD_GRACE s,
    and one that exits at once is not waited on longer."""
    stubborn = [sys.executable, "-c", "import signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(60)"]  # fmt: skip
    polite = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor([stubborn, polite], dict(os.environ))
    supervisor._start(0)
    supervisor._start(1)
    time.sleep(3)  # the stubborn one has installed its SIG_IGN
    t0 = time.monotonic()
    supervisor.stop(grace=2.0)
    took = time.monotonic() - t0
    assert 1.9 < took < 2.0 + 1.5, took
    stubborn_proc, polite_proc = supervisor.children
    assert stubborn_proc.returncode == -signal.SIGKILL
    assert polite_proc.returncode == -signal.SIGTERM
    assert CHILD_GRACE + KILL_WAIT + REDIS_GRACE < 10.0  # all inside docker stop's 10 s


def test_a_worker_busy_with_a_long_job_exits_within_its_stop_grace(tmp_path, model_path):
    """rq's warm shutdown waits for the current job (a fine-tuning run takes minutes);
    the bound (shutdown.STOP_GRACE) ends the worker before docker stop's SIGKILL, with a
    warning naming what was still running."""
    from rq import Queue

    from squeezesam.backend.shutdown import EXIT_STOPPED, STOP_GRACE

    server = EmbeddedRedis(tmp_path / "redis", watchdog=False)
    env = clean_env(tmp_path, model_path) | {"REDIS_URL": server.url}
    log_path = tmp_path / "worker.log"
    connection = redis.Redis.from_url(server.url)
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "squeezesam.backend.cli", "worker",
                                 "--queues", "train"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        job = Queue("train", connection=connection).enqueue("time.sleep", 120)
        deadline = time.monotonic() + 120
        while job.get_status(refresh=True) != "started":
            assert time.monotonic() < deadline, "the job did not start"
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
        took = sigterm_and_time(proc)
    finally:
        kill_if_alive(proc)
        server.close()
    text = log_path.read_text()
    assert STOP_GRACE - 0.5 < took < STOP_GRACE + 2.0, (took, text[-3000:])
    assert proc.returncode == EXIT_STOPPED, text[-3000:]
    assert "after SIGTERM" in text, text[-3000:]


def run_timed(code: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `code` in a fresh interpreter; its result and how long it took."""
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    return result, time.monotonic() - t0


def stuck_web(setup: str = "", then: str = "sys.exit(0)\n") -> str:
    """A script for a web process whose request thread is stuck for 60 s when SIGTERM's
    bound starts (`exit_within(0.5, 'web')`): `setup` runs before the thread starts,
    `then` after the bound (by default SIGTERM's sys.exit)."""
    return (
        "import logging, sys, threading, time\n"
        "from squeezesam.backend.shutdown import exit_within\n"
        "logging.basicConfig(level=logging.INFO)\n"
        + setup
        + "threading.Thread(target=time.sleep, args=(60,), name='stuck-request').start()\n"
        "exit_within(0.5, 'web')\n" + then
    )


def test_the_stop_bound_ends_a_process_held_by_a_non_daemon_thread():
    """What a web process stuck in a request thread looks like: SIGTERM's sys.exit would
    wait for that thread forever; the bound ends it after its grace."""
    result, took = run_timed(stuck_web())
    assert result.returncode == 143 and took < 10, (took, result.stderr)
    assert "web still running 0 s after SIGTERM (threads: " in result.stderr
    assert "stuck-request" in result.stderr


def test_the_stop_bound_holds_while_a_thread_holds_the_log_handler_lock():
    """A thread stuck inside a log write (stderr a pipe nobody drains: seen as a web
    container SIGKILLed with no line after SIGTERM) holds the handler's lock; the bound's
    warning does not go through `logging`, so the process still exits, and says why."""
    # as a thread blocked in handler.emit() holds it
    result, took = run_timed(stuck_web(setup="logging.getLogger().handlers[0].acquire()\n"))
    assert result.returncode == 143 and took < 10, (took, result.stderr)
    assert "web still running 0 s after SIGTERM" in result.stderr, result.stderr


def test_a_process_whose_python_timer_cannot_run_is_ended_by_the_backstop():
    """The C-level backstop (faulthandler) needs no GIL: a main thread that never gives
    the GIL back (a C call holding it) is still ended BACKSTOP s after the bound, with
    every thread's stack on stderr to show where it was stuck."""
    # the main thread keeps the GIL: the Python timer never runs
    code = stuck_web(then="sys.setswitchinterval(1e6)\nwhile True:\n    pass\n")
    from squeezesam.backend.shutdown import BACKSTOP, STOP_GRACE
    from squeezesam.backend.supervisor import CHILD_GRACE

    assert STOP_GRACE + BACKSTOP < CHILD_GRACE  # the stacks reach the log before serve's SIGKILL

    result, took = run_timed(code)
    assert result.returncode == 1 and took < 0.5 + BACKSTOP + 3, (took, result.stderr)
    assert "Timeout" in result.stderr and "File " in result.stderr, result.stderr
