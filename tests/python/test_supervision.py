"""Overload, crash loops, opt-in retries, recycling, health and the zygote; options from the
command line and the file, and what SIGHUP does with them."""
import os
import signal
import subprocess
import threading
import time

import pytest
import torch

import shoal
import shoal_test_models as models
from conftest import BUILD, crash_from_two_clients, running_models

SHOALD = os.path.join(BUILD, "bin", "shoald")


def test_full_queue_answers_overloaded_with_a_hint(make_daemon, archives):
    d = make_daemon(workers=1, args=["--max-queue", "2"])
    with d.client() as c:
        c.load("sleeps", archives["sleeps"])
    results = []
    lock = threading.Lock()

    def ask():
        with d.client() as c:
            try:
                c.infer("sleeps", torch.tensor([0.3]))
                r = "ok"
            except shoal.Overloaded as e:
                r = e
            with lock:
                results.append(r)
    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    overloaded = [r for r in results if isinstance(r, shoal.Overloaded)]
    assert len(results) == 8
    assert 1 <= results.count("ok") <= 4 and len(overloaded) >= 4
    assert all(e.retry_after and e.retry_after > 0 for e in overloaded)
    assert "'sleeps' has 2 jobs queued" in overloaded[0].message


def test_crash_loop_marks_the_model_failed(public_daemon, archives):
    # Crashes from two different clients (users) within the window: the model is broken
    # for everyone, not just for one client's inputs.
    d = public_daemon(workers=2, args=["--crash-loop-limit", "2"])
    with d.client() as c:
        c.load("crashy", archives["crashy"])
        c.load("add", archives["add"])
        crash_from_two_clients(d.socket, c, "crashy")
        with pytest.raises(shoal.Unavailable, match="marked failed: it crashed 2 workers for 2 different clients"):
            c.infer("crashy", torch.ones(1))
        m = {x["name"]: x for x in c.models()}
        assert m["crashy"]["failed"] and "SIGSEGV" in m["crashy"]["last_error"]
        st = {x["name"]: x for x in c.status()["models"]}  # `shoal status` shows it too
        assert st["crashy"]["failed"] and st["crashy"]["last_error"] == m["crashy"]["last_error"]
        # replacements do not load it again; the other model serves
        d.wait_ready("add")
        h = c.health()
        assert h["models"] == {"add": True, "crashy": False} and not h["ready"]
        assert all("crashy" not in w["models"] for w in c.status()["workers"])
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0
        # loading it again clears the mark
        c.load("crashy", archives["crashy"])
        assert float(c.infer("crashy", torch.ones(1))[0]) == 2.0
        assert c.health()["ready"]


@pytest.fixture
def shared_folder():
    """A folder the next worker finds the marker in: a root shoald's workers run as a user
    of their own, and pytest's folders are root's alone."""
    import shutil
    import tempfile
    from pathlib import Path
    folder = tempfile.mkdtemp(prefix="shoal-shared-", dir="/tmp")
    os.chmod(folder, 0o777)
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def test_retries_rerun_a_job_once_when_asked(make_daemon, tmp_path, shared_folder):
    marker = shared_folder / "crashed-once"
    # Landlock would refuse it too (model code writes only its worker's private folder).
    d = make_daemon(workers=1, args=["--no-landlock"])
    path = shoal.export(models.CrashOnce(str(marker)), tmp_path / "once.pt")
    with d.client() as c:
        c.load("once", path)
        y = c.infer("once", torch.zeros(2), retries=1)  # first run crashes, the re-run works
        assert torch.equal(y, torch.ones(2))
        assert c.status()["worker_restarts"] == 1
        marker.unlink()
        d.wait_ready("once")
        with pytest.raises(shoal.WorkerCrashed):
            c.infer("once", torch.zeros(2))  # by default a crash is reported, not retried
        with pytest.raises(shoal.BadRequest, match="retries must be 0 or 1"):
            c.infer("once", torch.zeros(2), retries=5)


def test_a_job_that_crashes_twice_is_not_retried_again(make_daemon, archives):
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("crashy", archives["crashy"])
        with pytest.raises(shoal.WorkerCrashed, match="crashed a worker before too"):
            c.infer("crashy", -torch.ones(1), retries=1)
        assert c.status()["worker_restarts"] == 2


def test_workers_are_recycled_after_max_jobs(make_daemon, archives):
    d = make_daemon(workers=1, args=["--max-jobs-per-worker", "3"])
    with d.client() as c:
        c.load("add", archives["add"])
        pids = set()
        for i in range(10):
            pids.add(c.status()["workers"][0]["pid"])
            assert float(c.infer("add", torch.full((1,), float(i)))[0]) == 2 * i + 1
        assert len(pids) >= 3
        assert c.status()["jobs_failed"] == 0


def test_health_tracks_readiness(make_daemon, archives):
    import os
    import signal
    d = make_daemon(workers=1)
    with d.client() as c:
        h = c.health()
        assert h == {"live": True, "ready": True, "stopping": False, "models": {}}
        c.load("add", archives["add"])
        assert c.health()["ready"]
        os.kill(d.worker_pids()[0], signal.SIGKILL)
        # readiness goes false as soon as the only worker is gone, and comes back
        saw_not_ready = False
        deadline = time.time() + 20
        while time.time() < deadline:
            h = c.health()
            saw_not_ready = saw_not_ready or not h["ready"]
            if saw_not_ready and h["ready"]:
                break
            time.sleep(0.002)
        assert saw_not_ready and h["ready"]


def test_replacements_come_from_the_zygote(make_daemon, archives):
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("crashy", archives["crashy"])
        zygote = c.status()["zygote"]
        assert zygote > 0
        with pytest.raises(shoal.WorkerCrashed):
            c.infer("crashy", -torch.ones(1))
        d.wait_ready("crashy")
        # the replacement is a child of shoald (reparented), forked by the zygote
        for w in c.status()["workers"]:
            with open(f"/proc/{w['pid']}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[1]) == d.proc.pid
            with open(f"/proc/{w['pid']}/cmdline") as f:
                assert "--zygote" in f.read()
    assert "forked by the zygote" in open(d.log_path).read()


# ---- options: one table for the file and the command line; reload keeps the overrides ----

def test_a_bad_value_is_refused_alike_from_the_file_and_the_command_line(tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("workers = 1\nmax_queue = lots\n")
    by_file = subprocess.run([SHOALD, "--config", str(conf)], capture_output=True, text=True, timeout=30)
    by_flag = subprocess.run([SHOALD, "--max-queue", "lots"], capture_output=True, text=True, timeout=30)
    why = "max_queue takes an integer in [0, 16777216], not 'lots'"
    assert (by_file.returncode, by_file.stderr) == (2, f"shoald: {conf}:2: {why}\n")
    assert (by_flag.returncode, by_flag.stderr) == (2, f"shoald: --{why.replace('_', '-', 1)}\n")
    r = subprocess.run([SHOALD, "--max-queu", "1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unrecognised option '--max-queu'" in r.stderr
    r = subprocess.run([SHOALD, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    words = " ".join(r.stdout.split())  # Boost wraps lines to fit its columns
    assert "--max-queue N" in words and "--unload-grace-ms MS" in words and "default 1024" in words


def _wait_log(d, text, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in open(d.log_path).read():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in the log:\n{open(d.log_path).read()}")


def _running_and_queued(d, model, seconds):
    """With one worker: a job of `model` that runs `seconds`, and one queued behind it.
    Returns their threads and results ("running", "queued")."""
    results = {}

    def ask(key, s):
        with d.client() as c:
            try:
                results[key] = float(c.infer(model, torch.tensor([s]))[0])
            except shoal.Error as e:
                results[key] = e
    threads = [threading.Thread(target=ask, args=("running", seconds)),
               threading.Thread(target=ask, args=("queued", 0.0))]
    with d.client() as c:
        for t, busy in zip(threads, (lambda st: any(running_models(w) for w in st["workers"]),
                                     lambda st: st["queued"] == 1)):
            t.start()
            deadline = time.time() + 10
            while not busy(c.status()) and time.time() < deadline:
                time.sleep(0.02)
    return threads, results


def test_command_line_overrides_survive_sighup_and_reloaded_settings_apply(make_daemon, archives, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("admin_group =\nmax_queue = 100\nunload_grace_ms = 5000\nlog_level = info\n")
    d = make_daemon(workers=1, args=["--config", str(conf), "--max-queue", "1"])
    with d.client() as c:
        c.load("s", archives["sleeps"])
        threads, _ = _running_and_queued(d, "s", 0.5)
        with pytest.raises(shoal.Overloaded, match="'s' has 1 jobs queued"):
            c.infer("s", torch.tensor([0.0]))
        for t in threads:
            t.join(10)

    conf.write_text("admin_group =\nmax_queue = 100\nunload_grace_ms = 200\nlog_level = warn\nzygote = no\n")
    d.proc.send_signal(signal.SIGHUP)
    _wait_log(d, "SIGHUP: zygote (yes -> no) takes effect only when shoald restarts")
    with d.client() as c:
        threads, results = _running_and_queued(d, "s", 1.5)
        with pytest.raises(shoal.Overloaded, match="'s' has 1 jobs queued"):  # --max-queue 1 still wins
            c.infer("s", torch.tensor([0.0]))
        c.unload("s")
        for t in threads:
            t.join(10)
    assert results["running"] == 1.5
    assert isinstance(results["queued"], shoal.Unavailable)
    assert "200 ms grace period" in results["queued"].message  # the reloaded unload_grace_ms
    log = open(d.log_path).read()
    assert "model 's' loaded" in log
    assert "model 's' unloaded" not in log and "configuration reloaded" not in log  # log_level = warn

    conf.write_text("admin_group =\nlog_level = info\n")
    d.proc.send_signal(signal.SIGHUP)
    _wait_log(d, "configuration reloaded")
