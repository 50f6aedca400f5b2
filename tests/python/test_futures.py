"""Many jobs in flight on one connection (issue 15): Client.submit returns a
concurrent.futures.Future, infer_async awaits one, and infer is built on them. Every
future resolves exactly once, in whatever order shoald answers; a cancelled job's answer
gives its output blocks back; a lost connection fails everything pending with one clear
error."""
import asyncio
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import shoal
from conftest import BUILD, running_models, settle

N = 32
KIB256 = 64 * 1024  # float32 elements in 256 KiB


def output_bytes(c):
    return sum(w["output_bytes"] for w in c.status()["workers"])


class Resolutions:
    """Counts each future's done-callbacks: a future must resolve exactly once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = {}

    def watch(self, fut):
        def done(f):
            with self.lock:
                self.count[id(f)] = self.count.get(id(f), 0) + 1
        fut.add_done_callback(done)
        return fut

    def once_each(self, futs):
        return all(self.count.get(id(f)) == 1 for f in futs)


def test_32_jobs_in_flight_on_one_connection_each_get_their_own_result(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        seen = Resolutions()
        # Inputs of both kinds (copied, and arena-backed from empty()), each its own value.
        xs = []
        for k in range(N):
            x = c.empty((KIB256,)) if k % 2 else torch.empty(KIB256)
            x.fill_(float(k))
            xs.append(x)
        futs = [seen.watch(c.submit("add", x, timeout=60)) for x in xs]
        assert all(isinstance(f, cf.Future) for f in futs)
        # Nobody calls result(): the client's reader resolves them all.
        done, pending = cf.wait(futs, timeout=120)
        assert not pending
        ys = [f.result() for f in futs]
        for k, y in enumerate(ys):
            assert torch.equal(y, torch.full((KIB256,), 2.0 * k + 1)), f"job {k} got another job's result"
        assert len({y.data_ptr() for y in ys}) == N  # 32 distinct output blocks
        assert seen.once_each(futs)
        assert not c._conn._jobs  # nothing left waiting for an answer
        # Each result owns its block: all 32 are held now, and dropping them frees them all.
        assert output_bytes(c) >= N * KIB256 * 4
        del ys, futs, done, y
        settle(lambda: ((n := output_bytes(c)) == 0, f"{n} output bytes still held"))
        assert seen.once_each([])


def test_threads_sharing_a_client_are_not_held_back_by_a_slow_infer(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        c.load("sleeps", archives["sleeps"])
        events, wrong = [], []
        slow = threading.Thread(target=lambda: (c.infer("sleeps", torch.full((4,), 8.0), timeout=60),
                                                events.append("slow")))
        slow.start()
        settle(lambda: (any(running_models(w) == ["sleeps"] for w in c.status()["workers"]), "sleeps not running"))

        def run(t):  # on the other worker, while the slow one runs
            for i in range(20):
                v = float(t * 100 + i)
                y = c.infer("add", torch.full((64,), v), timeout=60)
                if not torch.equal(y, torch.full((64,), 2 * v + 1)):
                    wrong.append((t, i))
            events.append("fast")
        threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads + [slow]:
            t.join(120)
        assert not any(t.is_alive() for t in threads + [slow])
        assert not wrong
        assert events == ["fast"] * 4 + ["slow"]


def test_a_slow_job_submitted_first_does_not_hold_back_a_fast_one(daemon, archives):
    with daemon.client() as c:
        c.load("sleeps", archives["sleeps"])
        c.load("add", archives["add"])
        order = []
        slow = c.submit("sleeps", torch.full((4,), 8.0), timeout=60)  # one worker sleeps 8 s
        slow.add_done_callback(lambda f: order.append("slow"))
        fast = c.submit("add", torch.ones(4), timeout=60)              # the other answers at once
        fast.add_done_callback(lambda f: order.append("fast"))
        assert torch.equal(fast.result(), torch.full((4,), 3.0))
        assert torch.equal(slow.result(), torch.full((4,), 8.0))
        assert order == ["fast", "slow"]


def test_a_model_error_fails_only_its_own_future(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        c.load("raises", archives["raises"])
        futs = [c.submit("raises" if k % 3 == 0 else "add", torch.full((8,), float(k)), timeout=60) for k in range(N)]
        for k, f in enumerate(futs):
            if k % 3 == 0:
                e = f.exception(timeout=60)
                assert isinstance(e, shoal.ModelError), e
                assert "ValueError" in str(e) and "model 'raises'" in e.message
            else:
                assert torch.equal(f.result(timeout=60), torch.full((8,), 2.0 * k + 1))
        assert c.infer("add", torch.zeros(2)).tolist() == [1.0, 1.0]


def test_cancelled_jobs_leak_no_output_blocks(daemon, archives):
    with daemon.client() as c:
        c.load("sleeps", archives["sleeps"])
        c.load("add", archives["add"])
        free = [a.free_bytes() for a in c._arenas.values()]
        # Both workers sleep for 3 s, so the jobs below wait in shoald's queue and every
        # cancel() comes before its answer (1 s was not always enough on a GPU host running
        # 16 test files at once: every cancel came too late).
        busy = [c.submit("sleeps", torch.full((4,), 3.0), timeout=60) for _ in range(2)]
        futs = [c.submit("add", torch.full((KIB256,), float(k)), timeout=60) for k in range(N)]
        cancelled = [f.cancel() for f in futs[::2]]
        assert all(cancelled)
        assert all(f.cancelled() for f in futs[::2])
        with pytest.raises(cf.CancelledError):
            futs[0].result()
        kept = [f.result(timeout=60) for f in futs[1::2]]
        for k, y in zip(range(1, N, 2), kept):
            assert torch.equal(y, torch.full((KIB256,), 2.0 * k + 1))
        for f in busy:
            f.result(timeout=60)
        # The cancelled jobs' answers were read and their blocks released: the workers
        # hold exactly the kept results.
        held = len(kept) * KIB256 * 4
        settle(lambda: ((n := output_bytes(c)) == held, f"{n} output bytes held, {held} in the kept results"))
        del kept, y, futs, busy, f  # (the sleeps returned their inputs: views of our blocks)
        settle(lambda: ((n := output_bytes(c)) == 0, f"{n} output bytes still held"))
        # The inputs' blocks (copies in this client's arena) are all back too.
        settle(lambda: ([a.free_bytes() for a in c._arenas.values()] == free, "input blocks still held"))


def test_infer_async_runs_many_jobs_on_one_event_loop(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        c.load("sleeps", archives["sleeps"])

        async def main():
            ys = await asyncio.gather(*(c.infer_async("add", torch.full((16,), float(k)), timeout=60)
                                        for k in range(N)))
            # Cancelling the awaiting task cancels the job; its answer is dropped.
            task = asyncio.ensure_future(c.infer_async("sleeps", torch.full((4,), 0.5), timeout=60))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(shoal.ModelNotFound):
                await c.infer_async("ghost", torch.ones(1))
            return ys
        ys = asyncio.run(main())
        for k, y in enumerate(ys):
            assert torch.equal(y, torch.full((16,), 2.0 * k + 1))
        del ys, y
        settle(lambda: ((n := output_bytes(c)) == 0, f"{n} output bytes still held"))


def test_a_done_callback_may_infer_on_the_reading_thread(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        got = []
        f = c.submit("add", torch.ones(4), timeout=60)
        f.add_done_callback(lambda f: got.append(c.infer("add", f.result(), timeout=60)))
        f.result(timeout=60)
        settle(lambda: (len(got) == 1, "the callback's own infer did not finish"))
        assert torch.equal(got[0], torch.full((4,), 7.0))


def test_killing_shoald_fails_every_pending_future_once_with_a_clear_error(make_daemon, archives):
    d = make_daemon(workers=2)
    c = d.client()
    c.load("sleeps", archives["sleeps"])
    seen = Resolutions()
    futs = [seen.watch(c.submit("sleeps", torch.full((4,), 30.0), timeout=120)) for _ in range(8)]
    c.ping()  # answered after shoald read the jobs: 2 run, 6 wait in its queue
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    done, pending = cf.wait(futs, timeout=60)
    assert not pending
    for f in futs:
        e = f.exception()
        assert isinstance(e, shoal.Unavailable), e
        assert f"lost the connection to shoald at {d.socket} before it answered infer request" in e.message
        assert "(model 'sleeps')" in e.message and "resubmit" in e.message
    assert seen.once_each(futs)
    with pytest.raises(shoal.Unavailable, match="lost the connection"):
        c.submit("sleeps", torch.ones(1))
    with pytest.raises(shoal.Unavailable, match="lost the connection"):
        c.infer("sleeps", torch.ones(1))
    c.close()


def test_close_fails_the_jobs_still_in_flight(daemon, archives):
    c = daemon.client()
    c.load("sleeps", archives["sleeps"])
    futs = [c.submit("sleeps", torch.full((4,), 2.0), timeout=60) for _ in range(4)]
    c.close()
    for f in futs:
        e = f.exception(timeout=30)
        assert isinstance(e, shoal.Unavailable) and "the client was closed before shoald answered" in e.message
    with daemon.client() as other:  # shoald serves on
        other.load("add", archives["add"])
        assert other.infer("add", torch.zeros(1)).tolist() == [1.0]


def test_deadlines_hold_with_jobs_in_flight_while_shoald_is_stopped(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        before = c.submit("add", torch.full((4,), 5.0))
        before.result(timeout=60)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            early = c.submit("add", torch.full((4,), 6.0))  # no deadline: the reader blocks for its answer
            conn = c._conn
            settle(lambda: (conn._reader == conn._pump.ident, "the reader thread is not reading"))
            # Submitted while the reader waits with no deadline; nobody calls result(), and
            # it still fails by its deadline plus the margin.
            waits = c.submit("add", torch.ones(4), timeout=0.3)
            assert not cf.wait([waits], timeout=30).not_done
            e = waits.exception()
            assert isinstance(e, shoal.Timeout) and "did not answer infer request" in e.message
            # infer enforces its own deadline while another thread holds the reading role.
            t0 = time.monotonic()
            with pytest.raises(shoal.Timeout, match="did not answer infer request"):
                c.infer("add", torch.ones(4), timeout=0.5)
            assert time.monotonic() - t0 < 30
            with pytest.raises(cf.TimeoutError):  # result()'s own timeout leaves the job pending
                early.result(timeout=0.2)
            assert not early.done()
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        # The late answers are dropped; the job without a deadline gets its answer.
        assert torch.equal(early.result(timeout=60), torch.full((4,), 13.0))
        assert torch.equal(c.infer("add", torch.arange(3.0), timeout=30), torch.arange(3.0) * 2 + 1)
        del before, early
        settle(lambda: ((n := output_bytes(c)) == 0, f"{n} output bytes still held"))


_WAITS_THEN_GOES_ON = """
import sys
import torch
import shoal
c = shoal.Client(sys.argv[1])
c.infer("add", torch.zeros(2))  # a result dropped at once: its release starts the writer's thread
print("waiting", flush=True)
try:
    c.infer("sleeps", torch.full((1,), 60.0))
    print("answered", flush=True)
except KeyboardInterrupt:
    print("interrupted", "reading role free:", c._conn._reader is None, flush=True)
print(c.infer("add", torch.zeros(2)).tolist(), flush=True)
"""


def test_ctrl_c_stops_a_waiting_infer_and_the_client_goes_on(daemon, archives):
    c = daemon.client()
    c.load("sleeps", archives["sleeps"])
    c.load("add", archives["add"])
    env = dict(os.environ, PYTHONPATH=os.path.join(BUILD, "python"))
    child = subprocess.Popen([sys.executable, "-c", _WAITS_THEN_GOES_ON, daemon.socket], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "waiting\n"
        deadline = time.time() + 30  # until its job runs: the client is inside infer, waiting
        while not any("sleeps" in running_models(w) for w in c.status()["workers"]):
            assert time.time() < deadline, "the sleeps job never started"
            time.sleep(0.05)
        time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)  # a client deaf to Ctrl-C prints only after 60 s
    finally:
        child.kill()
        c.close()
    assert out.splitlines() == ["interrupted reading role free: True", "[1.0, 1.0]"], err
