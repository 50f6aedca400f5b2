"""A worker that dies (segfault, exit) fails only its own job, with WorkerCrashed, and is
replaced; other models and workers keep answering throughout."""
import threading
import time

import pytest
import torch

import shoal


def test_segfault_yields_worker_crashed_and_service_recovers(daemon, archives):
    with daemon.client() as c:
        c.load("crashy", archives["crashy"])
        c.load("add", archives["add"])
        pids_before = set(daemon.worker_pids())

    stop = threading.Event()
    other = {"ok": 0, "errors": []}

    def keep_asking():
        with daemon.client() as c:
            while not stop.is_set():
                try:
                    y = c.infer("add", torch.ones(4))
                    assert torch.equal(y, torch.full((4,), 3.0))
                    other["ok"] += 1
                except Exception as e:  # noqa: BLE001
                    other["errors"].append(repr(e))

    t = threading.Thread(target=keep_asking)
    t.start()
    try:
        time.sleep(0.2)
        with daemon.client() as c:
            start = time.monotonic()
            with pytest.raises(shoal.WorkerCrashed) as e:
                c.infer("crashy", -torch.ones(4))
            elapsed = time.monotonic() - start
            assert elapsed < 1.0
            msg = e.value.message
            assert "SIGSEGV" in msg and "'crashy'" in msg and "job" in msg
            # the crashed model answers again once its worker is replaced
            deadline = time.monotonic() + 20
            while True:
                try:
                    y = c.infer("crashy", torch.ones(4))
                    break
                except shoal.WorkerCrashed:
                    raise
                except shoal.Error:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            assert torch.equal(y, torch.full((4,), 2.0))
            daemon.wait_ready("crashy")
            pids_after = set(daemon.worker_pids())
            assert len(pids_before - pids_after) == 1  # exactly one worker was replaced
            assert c.status()["worker_restarts"] == 1
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    assert other["errors"] == []
    assert other["ok"] > 0


def test_os_exit_is_reported_with_exit_code(daemon, archives):
    with daemon.client() as c:
        c.load("exits", archives["exits"])
        with pytest.raises(shoal.WorkerCrashed, match="exit code 7"):
            c.infer("exits", torch.ones(1))


def test_worker_killed_from_outside_is_replaced(daemon, archives):
    import os
    import signal
    with daemon.client() as c:
        c.load("add", archives["add"])
        victim = daemon.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 20
        while victim in daemon.worker_pids() and time.time() < deadline:
            time.sleep(0.05)
        assert victim not in daemon.worker_pids()
        daemon.wait_ready("add")
        for _ in range(10):
            assert float(c.infer("add", torch.zeros(1))[0]) == 1.0


def test_sigterm_stops_the_daemon(make_daemon):
    d = make_daemon()
    assert d.stop() == 0
