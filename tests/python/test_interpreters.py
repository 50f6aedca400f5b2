"""Several interpreters per worker (shoald --interpreters K): every slot gives the eager
answer, jobs run on K interpreters of one process at once, a crash costs the worker's K
jobs and nothing else, the copies are cached and cleaned up, and an unsupported setup is
refused at start-up."""
import os
import signal
import subprocess
import threading
import time

import pytest
import torch

import shoal
import shoal_test_models as models
from conftest import BUILD, Daemon, running_models
from test_weight_sharing import rollup


@pytest.fixture(scope="module", autouse=True)
def interpreters_supported(tmp_path_factory):
    """K > 1 must work with torch 1.x (Debian's, CI's). Where the start-up check refuses a
    newer torch, the tests that need K > 1 skip with its reason (the refusal has its own
    test below)."""
    out = subprocess.run([os.path.join(BUILD, "bin", "shoal-worker"), "--check-interpreters", "2",
                          "--interpreter-cache", str(tmp_path_factory.mktemp("check"))],
                         capture_output=True, text=True, timeout=300)
    ok = out.returncode == 0
    if not ok and not torch.__version__.startswith("1."):
        return out.stdout + out.stderr[-2000:]
    assert ok, out.stdout + out.stderr
    return None


@pytest.fixture
def needs_k(interpreters_supported):
    if interpreters_supported is not None:
        pytest.skip(f"K > 1 refused with torch {torch.__version__}: {interpreters_supported}")


def start(tmp_path, workers, k, *args):
    tmp_path.mkdir(exist_ok=True)
    return Daemon(tmp_path, workers, ["--interpreters", str(k), *args])


def wait_busy(d, n, timeout=20):
    """Until `n` interpreters run a job; returns status()["workers"]."""
    deadline = time.time() + timeout
    with d.client() as c:
        while time.time() < deadline:
            workers = c.status()["workers"]
            if sum(len(running_models(w)) for w in workers) >= n:
                return workers
            time.sleep(0.02)
    raise TimeoutError(f"{n} interpreters never ran jobs at once")


def in_threads(fns):
    results = [None] * len(fns)

    def run(i):
        try:
            results[i] = fns[i]()
        except Exception as e:  # noqa: BLE001 - returned to the test
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.parametrize("k", [2, 4])
def test_outputs_equal_eager_under_many_concurrent_clients(tmp_path, archives, k, needs_k):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    resnet_path = shoal.export(resnet, tmp_path / "resnet18.pt")
    branchy = models.Branchy().eval()
    x_img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want_img = resnet(x_img)
    d = start(tmp_path / "d", 1, k)
    try:
        with d.client() as c:
            c.load("resnet18", resnet_path)
            c.load("branchy", archives["branchy"])
            st = c.status()["workers"]
            assert [len(w["interpreters"]) for w in st] == [k]
            assert st[0]["pss_kb"] > 0
        failures = []
        seen_interpreters = set()

        def client(n):
            with d.client() as c:
                for i in range(12):
                    if i % 3 == 0:
                        y = c.infer("resnet18", x_img)
                        if float((y - want_img).abs().max()) > 1e-5:
                            failures.append(("resnet18", n, i))
                    else:
                        x = torch.randn(3, 16)
                        x[0, 0] = float(i % 4) - 1.5  # different loop lengths
                        with torch.no_grad():
                            want = branchy(x)
                        y = c.infer("branchy", x)
                        ok = (torch.allclose(y["logits"], want["logits"], atol=1e-5)
                              and torch.allclose(y["extra"][0], want["extra"][0], atol=1e-5)
                              and y["extra"][1] == want["extra"][1])
                        if not ok:
                            failures.append(("branchy", n, i))

        def watch():
            with d.client() as c:
                while any(t.is_alive() for t in threads):
                    for w in c.status()["workers"]:
                        for it in w["interpreters"]:
                            if it["job"]:
                                seen_interpreters.add(it["index"])
                    time.sleep(0.005)

        threads, results = in_threads([lambda n=n: client(n) for n in range(2 * k)])
        watcher = threading.Thread(target=watch)
        watcher.start()
        for t in threads:
            t.join()
        watcher.join()
        assert [r for r in results if r is not None] == []
        assert failures == []
        assert len(seen_interpreters) >= 2  # jobs really ran on several interpreters
        with d.client() as c:
            st = c.status()
            assert st["jobs_done"] >= 2 * k * 12 and st["jobs_failed"] == 0
    finally:
        d.stop()


def test_k_interpreters_run_k_jobs_of_one_worker_at_once(tmp_path, archives, needs_k):
    d = start(tmp_path / "d", 1, 3)
    try:
        with d.client() as c:
            c.load("sleeps", archives["sleeps"])
        threads, results = in_threads(
            [lambda: d.client().infer("sleeps", torch.tensor([1.5])) for _ in range(3)])
        workers = wait_busy(d, 3)
        assert sorted(i["index"] for i in workers[0]["interpreters"] if i["job"]) == [0, 1, 2]
        assert workers[0]["state"] == "busy"
        for t in threads:
            t.join()
        assert all(torch.equal(r, torch.tensor([1.5])) for r in results)
    finally:
        d.stop()


def test_crash_answers_the_jobs_of_all_three_interpreters_and_spares_the_other_worker(tmp_path, archives, needs_k):
    d = start(tmp_path / "d", 2, 3)
    try:
        with d.client() as c:
            c.load("sleeps", archives["sleeps"])
            c.load("crashy", archives["crashy"])
            pids_before = {w["slot"]: w["pid"] for w in c.status()["workers"]}
        sleepers, sleep_results = in_threads(
            [lambda: d.client().infer("sleeps", torch.tensor([2.0])) for _ in range(5)])
        workers = wait_busy(d, 5)
        victim = next(w for w in workers if len(running_models(w)) == 2)
        survivor = next(w for w in workers if w is not victim)
        with d.client() as c:
            with pytest.raises(shoal.WorkerCrashed) as crash:
                c.infer("crashy", torch.tensor([-1.0]))
        assert "SIGSEGV" in crash.value.message
        assert "interpreter" in crash.value.message and "crashy" in crash.value.message
        for t in sleepers:
            t.join()
        crashed = [r for r in sleep_results if isinstance(r, shoal.WorkerCrashed)]
        served = [r for r in sleep_results if isinstance(r, torch.Tensor)]
        assert len(crashed) == 2 and len(served) == 3  # the victim's two, the survivor's three
        for e in crashed:
            assert "SIGSEGV" in e.message and "sleeps" in e.message
        deadline = time.time() + 30
        with d.client() as c:
            while time.time() < deadline:
                now = {w["slot"]: w for w in c.status()["workers"]}
                if now[victim["slot"]]["pid"] > 0 and now[victim["slot"]]["pid"] != victim["pid"] and \
                        "sleeps" in now[victim["slot"]]["models"]:
                    break
                time.sleep(0.05)
            assert now[victim["slot"]]["pid"] != pids_before[victim["slot"]]  # replaced
            assert now[survivor["slot"]]["pid"] == pids_before[survivor["slot"]]  # untouched
            assert len(now[victim["slot"]]["interpreters"]) == 3
            assert c.status()["worker_restarts"] == 1
            # all six slots serve again
            threads, results = in_threads(
                [lambda: d.client().infer("sleeps", torch.tensor([0.5])) for _ in range(6)])
            wait_busy(d, 6)
            for t in threads:
                t.join()
            assert all(isinstance(r, torch.Tensor) for r in results)
    finally:
        d.stop()


def test_each_timed_out_job_gets_its_worker_killed_even_when_another_one_finishes(tmp_path, archives, needs_k):
    # A never returns; B passes its deadline later but then finishes. A's kill must not be
    # forgotten because B's grace period came after it.
    d = start(tmp_path / "d", 1, 2, "--kill-grace-ms", "800")
    try:
        with d.client() as c:
            c.load("loops", shoal.export(models.Loops(), tmp_path / "loops.pt"))
            c.load("sleeps", archives["sleeps"])
            pid = c.status()["workers"][0]["pid"]
        threads, results = in_threads([
            lambda: d.client().infer("loops", torch.ones(1), timeout=0.5),
            lambda: (time.sleep(0.1), d.client().infer("sleeps", torch.tensor([1.0]), timeout=0.6))[1],
        ])
        for t in threads:
            t.join()
        assert all(isinstance(r, shoal.Timeout) for r in results)
        deadline = time.time() + 20
        with d.client() as c:
            while time.time() < deadline and c.status()["worker_restarts"] == 0:
                time.sleep(0.05)
            assert c.status()["worker_restarts"] == 1
            d.wait_ready("sleeps")
            assert c.status()["workers"][0]["pid"] != pid
            assert torch.equal(c.infer("sleeps", torch.tensor([0.0])), torch.tensor([0.0]))
    finally:
        d.stop()


def test_weights_are_shared_by_the_interpreters_of_a_worker(tmp_path, archives, needs_k):
    net = models.BigWeights(100)
    path = shoal.export(net, tmp_path / "big.pt")
    x = torch.randn(1, net.n)
    with torch.no_grad():
        want = net(x)
    del net
    d = start(tmp_path / "d", 1, 2)
    try:
        with d.client() as c:
            c.load("add", archives["add"])
            pid = c.status()["workers"][0]["pid"]
            before = rollup(pid)
            c.load("big", path)
        threads, results = in_threads([lambda: d.client().infer("big", x) for _ in range(6)])
        for t in threads:
            t.join()
        assert all(float((y - want).abs().max()) <= 1e-4 for y in results)
        after = rollup(pid)
        # 100 MB of weights in two interpreters: mapped from the archive, not copied.
        assert after["Anonymous"] - before["Anonymous"] < 40 * 1024
        assert after["Private_Dirty"] - before["Private_Dirty"] < 40 * 1024
    finally:
        d.stop()


def test_copies_are_reused_after_a_crash_of_shoald_and_removed_by_a_clean_stop(tmp_path, needs_k):
    cache = tmp_path / "cache"
    d = start(tmp_path / "d1", 1, 2, "--interpreter-cache", str(cache))
    d.worker_pids()
    copies = sorted(p for p in cache.rglob("*.so"))
    assert any("libpython" in p.name for p in copies) and any("torch._C" in p.name for p in copies)
    assert {p.relative_to(cache).parts[0] for p in copies} == {"0", "1"}  # one folder per interpreter
    mtimes = {p: p.stat().st_mtime_ns for p in copies}
    d.proc.send_signal(signal.SIGKILL)  # no clean stop: the copies stay
    d.proc.wait()
    d.log.close()
    assert cache.exists()
    d = start(tmp_path / "d2", 1, 2, "--interpreter-cache", str(cache))
    try:
        with d.client() as c:
            assert len(c.status()["workers"][0]["interpreters"]) == 2
        assert {p: p.stat().st_mtime_ns for p in copies} == mtimes  # reused, not rewritten
    finally:
        assert d.stop() == 0
    assert not cache.exists()


def test_unsupported_setup_is_refused_at_start_up_with_the_reason(tmp_path):
    env = dict(os.environ, SHOAL_PATCHELF="/bin/false")  # the copies cannot be made
    proc = subprocess.run(
        [os.path.join(BUILD, "bin", "shoald"), "--socket", str(tmp_path / "s.sock"), "--interpreters", "2"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    err = proc.stdout + proc.stderr
    assert "--interpreters 2 is not supported here (torch " in err
    assert "/bin/false" in err and "private library copies" in err
    assert "--interpreters 1" in err
    assert not (tmp_path / "s.sock").exists()


def test_interpreters_one_needs_no_copies(tmp_path, archives):
    d = start(tmp_path / "d", 1, 1, "--interpreter-cache", str(tmp_path / "cache"))
    try:
        with d.client() as c:
            c.load("add", archives["add"])
            assert torch.equal(c.infer("add", torch.ones(3)), torch.full((3,), 3.0))
            assert len(c.status()["workers"][0]["interpreters"]) == 1
        assert not (tmp_path / "cache").exists()
    finally:
        d.stop()
