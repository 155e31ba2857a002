"""The background writer: order kept, flush waits, a failing write never stops it,
a full queue drops instead of blocking."""

from __future__ import annotations

import threading

from squeezesam.backend.recorder import Recorder


def test_writes_run_in_order_and_flush_waits_for_them():
    recorder, seen = Recorder(), []
    for i in range(50):
        recorder.submit(lambda i=i: seen.append(i))
    assert recorder.flush(5.0)
    assert seen == list(range(50))


def test_a_failing_write_is_logged_and_the_next_one_still_runs(caplog):
    recorder, seen = Recorder(), []
    recorder.submit(lambda: 1 / 0)
    recorder.submit(lambda: seen.append("after"))
    assert recorder.flush(5.0)
    assert seen == ["after"]
    assert "ZeroDivisionError" in caplog.text


def test_a_full_queue_drops_new_records_instead_of_blocking_the_request():
    recorder, gate = Recorder(max_pending=2), threading.Event()
    recorder.submit(gate.wait)  # the writer is stuck on this one...
    accepted = [recorder.submit(lambda: None) for _ in range(5)]
    assert accepted.count(False) >= 2 and recorder.dropped == accepted.count(False)
    gate.set()
    assert recorder.flush(5.0)
