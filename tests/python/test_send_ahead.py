"""send_ahead_ms: with every interpreter busy, shoald sends a job to one of them ahead of its
turn, behind a short job, so it starts the moment that one ends (docs/architecture.md,
"Sent ahead"). Such a job has not started: a crash of its worker re-queues it instead of
failing it, its deadline can pass while it waits there (answered TIMEOUT and never run),
and status shows it as the interpreter's `next`. The tests raise send_ahead_ms to 5 s so
that a job is sent ahead behind one that sleeps; a quick call first gives the model the
short average a job is sent ahead behind."""
import time

import pytest
import torch

import shoal
import shoal_test_models as models


def wait_next(c, timeout=20):
    """Until an interpreter has a job sent ahead; returns (its running job, the next one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in c.status()["workers"]:
            for i in w["interpreters"]:
                if i["next"]:
                    return i["job"], i["next"]
        time.sleep(0.01)
    raise TimeoutError("no job was sent ahead")


def wait_running(c, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(i["job"] for w in c.status()["workers"] for i in w["interpreters"]):
            return
        time.sleep(0.01)
    raise TimeoutError("no job started")


def one_behind_another(a, b, name, archive, first, second, first_timeout=None, second_timeout=None, after=0.0):
    """Loads `archive` as `name`, starts `first` from client a, then, `after` seconds into its
    run, submits `second` from client b; returns both futures."""
    a.load(name, archive)
    a.infer(name, second)  # the model's jobs are short on average
    running = a.submit(name, first, timeout=first_timeout)
    wait_running(b)
    time.sleep(after)
    return running, b.submit(name, second, timeout=second_timeout)


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    return shoal.export(models.CountsCalls(), tmp_path_factory.mktemp("ahead") / "counts.pt")


@pytest.fixture(scope="module")
def crashes(tmp_path_factory):
    return shoal.export(models.SleepsThenCrashes(), tmp_path_factory.mktemp("ahead") / "crashes.pt")


AHEAD = ["--send-ahead-ms", "5000"]


def test_a_job_sent_ahead_waits_in_the_worker_and_runs_right_after(make_daemon, counts):
    d = make_daemon(workers=1, args=AHEAD)
    with d.client() as a, d.client() as b:
        first, second = one_behind_another(a, b, "counts", counts, torch.tensor([0.6]), torch.tensor([0.0]))
        running, nxt = wait_next(b)
        assert running["model"] == nxt["model"] == "counts" and nxt["id"] > running["id"]
        assert b.status()["queued"] == 0  # it left shoald's queue
        assert torch.equal(first.result(30), torch.tensor([2]))
        assert torch.equal(second.result(30), torch.tensor([3]))
        assert b.status()["jobs_failed"] == 0


@pytest.mark.parametrize("args", [["--send-ahead-ms", "0"], []], ids=["off", "default"])
def test_a_job_is_not_sent_ahead_when_off_or_behind_a_job_longer_than_send_ahead_ms(make_daemon, counts, args):
    # The default, 10 ms: the running job sleeps 0.6 s, so the next one waits in shoald's
    # queue (another slot could free first) although the model's average is short.
    d = make_daemon(workers=1, args=args)
    with d.client() as a, d.client() as b:
        # 0.1 s into its run: well past the default 10 ms, however busy the machine.
        first, second = one_behind_another(a, b, "counts", counts, torch.tensor([0.6]), torch.tensor([0.0]), after=0.1)
        time.sleep(0.2)
        st = b.status()
        assert st["queued"] == 1
        assert all(i["next"] is None for w in st["workers"] for i in w["interpreters"])
        assert torch.equal(first.result(30), torch.tensor([2]))
        assert torch.equal(second.result(30), torch.tensor([3]))


def test_a_job_sent_ahead_to_a_worker_that_crashes_is_run_by_its_replacement(make_daemon, crashes):
    d = make_daemon(workers=1, args=AHEAD)
    with d.client() as a, d.client() as b:
        doomed, victim = one_behind_another(a, b, "crashes", crashes, torch.tensor([0.6, -1.0]),
                                            torch.tensor([0.0, 1.0]))
        wait_next(b)
        with pytest.raises(shoal.WorkerCrashed, match="SIGSEGV"):
            doomed.result(30)
        # It never started on the dead worker: queued again, it runs on the new one.
        assert torch.equal(victim.result(60), torch.tensor([1.0, 2.0]))
        st = b.status()
        assert st["worker_restarts"] == 1 and st["jobs_failed"] == 1
    assert "queued again" in open(d.log_path).read()


def test_a_job_sent_ahead_whose_deadline_passes_is_answered_timeout_and_never_runs(make_daemon, counts):
    d = make_daemon(workers=1, args=AHEAD)
    with d.client() as a, d.client() as b:
        first, late = one_behind_another(a, b, "counts", counts, torch.tensor([1.5]), torch.tensor([0.0]),
                                         second_timeout=0.3)
        wait_next(b)
        t0 = time.monotonic()
        with pytest.raises(shoal.Timeout, match="queued in worker 0 behind another job"):
            late.result(30)
        assert time.monotonic() - t0 < 1.2  # answered at its deadline, not when its turn came
        assert torch.equal(first.result(30), torch.tensor([2]))
        # The worker skipped it (its deadline travelled with it): this is the third call.
        assert torch.equal(b.infer("counts", torch.tensor([0.0])), torch.tensor([3]))
        assert b.status()["worker_restarts"] == 0


def test_a_job_sent_ahead_of_a_job_killed_for_its_deadline_runs_on_the_replacement(make_daemon, counts):
    d = make_daemon(workers=1, args=AHEAD + ["--kill-grace-ms", "200"])
    with d.client() as a, d.client() as b:
        hung, victim = one_behind_another(a, b, "counts", counts, torch.tensor([3600.0]), torch.tensor([0.0]),
                                          first_timeout=0.5, second_timeout=60)
        wait_next(b)
        with pytest.raises(shoal.Timeout, match="while running"):
            hung.result(30)
        # The hung job's worker is killed after the grace; the job waiting behind it had not
        # started, so it runs on the replacement (its first call there).
        assert torch.equal(victim.result(60), torch.tensor([1]))
        assert b.status()["worker_restarts"] == 1
