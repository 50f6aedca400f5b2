"""Fault injection with real processes and signals. Each test checks that every accepted
job got exactly one answer, that no arena leaked (in shoald and in the workers), and
that the service is ready afterwards."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import shoal
import shoal_test_models as models
from conftest import BUILD, running_models, worker_vm_size_mb


def memfds(pid):
    """Client arenas a process holds open (fds) and maps (mappings)."""
    fds = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds += "memfd:shoal-client" in os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        maps = sum(1 for line in f if "memfd:shoal-client" in line)
    return fds, maps


class Traffic:
    """Healthy requests from several clients in the background; counts every answer."""

    def __init__(self, daemon, model="add", clients=3):
        self.daemon, self.model = daemon, model
        self.stop_flag = threading.Event()
        self.sent = self.ok = 0
        self.errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(clients)]

    def _run(self, k):
        with self.daemon.client() as c:
            i = 0
            while not self.stop_flag.is_set():
                x = torch.full((8,), float(k * 10000 + i))
                with self.lock:
                    self.sent += 1
                try:
                    y = c.infer(self.model, x, timeout=30)
                    assert torch.equal(y, x * 2 + 1)
                    with self.lock:
                        self.ok += 1
                except Exception as e:  # noqa: BLE001 - every answer is counted
                    with self.lock:
                        self.errors.append(repr(e))
                i += 1
            c.ping()  # a stray second answer to any request would surface here

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), "a request never got an answer"
        assert self.errors == []
        assert self.ok == self.sent and self.ok > 0


def assert_clean(daemon, archives):
    """No arena left behind, ready again, serving."""
    deadline = time.time() + 20
    with daemon.client() as c:  # this client's own arena is the only one allowed
        while True:
            st = c.status()
            workers = [w["pid"] for w in st["workers"] if w["state"] != "restarting" and w["pid"] > 0]
            sup = memfds(daemon.proc.pid)
            worker_maps = [memfds(p)[1] for p in workers]
            clean = st["arenas"] == 1 and st["clients"] == 1 and sup[0] == 1 and not any(worker_maps)
            if clean and c.health()["ready"]:
                break
            if time.time() > deadline:
                raise AssertionError(f"not clean: status={st} shoald memfds={sup} worker maps={worker_maps}")
            time.sleep(0.1)
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0


@pytest.fixture
def loaded(make_daemon, archives):
    def make(fault_name, fault_path, args=(), workers=2):
        d = make_daemon(workers=workers, args=args)
        with d.client() as c:
            c.load("add", archives["add"])
            c.load(fault_name, fault_path)
        return d
    return make


@pytest.mark.parametrize("name,needle", [("crashy", "SIGSEGV"), ("aborts", "SIGABRT"),
                                         ("exits", "exit code 7")])
def test_worker_death(loaded, archives, tmp_path, name, needle):
    path = archives.get(name) or shoal.export(models.Aborts(), tmp_path / "aborts.pt")
    d = loaded(name, path)
    with Traffic(d):
        with d.client() as c:
            with pytest.raises(shoal.WorkerCrashed, match=needle):
                c.infer(name, -torch.ones(2))
    assert_clean(d, archives)


def test_infinite_loop_times_out_and_worker_is_replaced(loaded, archives, tmp_path):
    d = loaded("loops", shoal.export(models.Loops(), tmp_path / "loops.pt"), args=["--kill-grace-ms", "300"])
    with Traffic(d):
        with d.client() as c:
            before = c.status()["worker_restarts"]
            with pytest.raises(shoal.Timeout, match="passed its deadline"):
                c.infer("loops", torch.ones(1), timeout=0.5)
            deadline = time.time() + 10
            while c.status()["worker_restarts"] == before and time.time() < deadline:
                time.sleep(0.05)
            assert c.status()["worker_restarts"] == before + 1
    assert_clean(d, archives)
    assert "SIGTERM" in open(d.log_path).read()


def test_memory_hog_past_its_limit_is_answered(loaded, make_daemon, archives, tmp_path):
    # room for a worker as it is, the clients' arenas and 1 GiB; the hog asks for 2 GiB more
    limit = worker_vm_size_mb(make_daemon) + 4 * 256 + 1024
    d = loaded("hog", shoal.export(models.Hog(), tmp_path / "hog.pt"), args=["--worker-address-space-mb", str(limit)])
    with Traffic(d):
        with d.client() as c:
            with pytest.raises((shoal.ModelError, shoal.WorkerCrashed)) as e:
                c.infer("hog", torch.ones(1))
            assert "memory" in str(e.value).lower() or "SIG" in str(e.value)
    assert_clean(d, archives)


def worker_cgroups(daemon):
    """The memory cgroups shoald made for its workers (cgroup v1 or v2), by name."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype, opts = fields[fields.index("-") + 1], fields[-1].split(",")
            if fstype == "cgroup2" or (fstype == "cgroup" and "memory" in opts):
                mounts["v2" if fstype == "cgroup2" else "v1"] = (fields[3], fields[4])
    with open(f"/proc/{daemon.proc.pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            kind = "v2" if ctrls == "" else "v1" if "memory" in ctrls.split(",") else None
            if kind not in mounts:
                continue
            root, mount = mounts[kind]
            folder = mount + path[len(root.rstrip("/")):]
            parent = folder + f"/shoald-{daemon.proc.pid}" if kind == "v1" else os.path.dirname(folder)
            if os.path.isdir(parent) and any(n.startswith("worker-") for n in os.listdir(parent)):
                return sorted(n for n in os.listdir(parent) if n.startswith("worker-"))
    return []


@pytest.mark.parametrize("enforced_by", ["cgroup", "sampler"])
def test_a_worker_past_its_memory_limit_is_killed_and_its_job_told_why(loaded, archives, tmp_path, enforced_by):
    # The model holds 1.5 GiB for 10 s; its worker may have 700 MiB. A victim keeps being
    # served, the worker is replaced, the job is answered with the limit, model and job.
    args = ["--worker-memory-mb", "700"] + (["--no-worker-memory-cgroup"] if enforced_by == "sampler" else [])
    d = loaded("holds", shoal.export(models.HoldsMemory(1536), tmp_path / "holds.pt"), args=args)
    with d.client() as c:
        workers = c.status()["workers"]
        assert [w["memory_limit_mb"] for w in workers] == [700, 700]
        by = {w["memory_limit_by"] for w in workers}
        if enforced_by == "cgroup" and not by <= {"cgroup v1", "cgroup v2"}:
            pytest.skip(f"shoald can make no memory cgroup here (limits enforced by {by})")
        assert by == ({"sampler"} if enforced_by == "sampler" else by)
        if enforced_by == "cgroup":
            assert len(worker_cgroups(d)) == 2
        before = c.status()["worker_restarts"]
    with Traffic(d):
        with d.client() as c:
            with pytest.raises(shoal.WorkerCrashed) as e:
                c.infer("holds", torch.ones(1), timeout=60)
    message = str(e.value)
    assert "exceeding its memory limit" in message and "700 MiB" in message, message
    assert "model 'holds'" in message and re.search(r"job \d+", message), message
    assert ("shoald's sampler" if enforced_by == "sampler" else "cgroup v") in message, message
    assert_clean(d, archives)
    with d.client() as c:
        st = c.status()
        assert st["worker_restarts"] == before + 1
        holds = {m["name"]: m for m in st["models"]}["holds"]
        assert not holds["failed"] and holds["ready"]  # one client's job: the model stays
    if enforced_by == "cgroup":  # the dead worker's group is gone, its replacement has one
        deadline = time.time() + 10
        while len(worker_cgroups(d)) != 2 and time.time() < deadline:
            time.sleep(0.1)
        assert len(worker_cgroups(d)) == 2


def test_workers_have_a_memory_limit_by_default_relative_to_the_machine(make_daemon):
    with open("/proc/meminfo") as f:
        total_mib = next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemTotal:"))
    limits = {}
    for n in (1, 4):
        d = make_daemon(workers=n)
        d.worker_pids()
        with d.client() as c:
            workers = c.status()["workers"]
        d.stop()
        assert {w["memory_limit_by"] for w in workers} <= {"cgroup v1", "cgroup v2", "sampler"}, workers
        assert len({w["memory_limit_mb"] for w in workers}) == 1
        limits[n] = workers[0]["memory_limit_mb"]
    # 3/4 of what shoald may use, shared by the workers, at least 512 MiB
    assert 512 <= limits[1] <= total_mib * 3 / 4 + 1
    assert abs(limits[4] - max(512, limits[1] // 4)) <= 1, limits


def test_worker_memory_mb_0_turns_the_limit_off(make_daemon):
    d = make_daemon(workers=1, args=["--worker-memory-mb", "0"])
    d.worker_pids()
    with d.client() as c:
        w = c.status()["workers"][0]
    assert w["memory_limit_mb"] == 0 and w["memory_limit_by"] == ""


def test_python_exception(loaded, archives):
    d = loaded("raises", archives["raises"])
    with Traffic(d):
        with d.client() as c:
            with pytest.raises(shoal.ModelError, match="ValueError"):
                c.infer("raises", torch.ones(1))
    assert_clean(d, archives)


def test_outputs_past_the_workers_output_arenas(loaded, archives, tmp_path):
    # One worker: output arenas are per worker (and client), so both jobs must meet there.
    d = loaded("grow", shoal.export(models.Grow(), tmp_path / "grow.pt"),
               args=["--output-arena-mb", "1", "--output-arenas", "1"], workers=1)
    with Traffic(d):
        with d.client(arena_size=1 << 20) as c:
            held = c.infer("grow", torch.ones(1))
            with pytest.raises(shoal.ArenaFull):
                c.infer("grow", torch.ones(1))
            del held
    assert_clean(d, archives)


def test_worker_killed_from_outside_mid_job(loaded, archives):
    d = loaded("sleeps", archives["sleeps"])
    with Traffic(d):
        with d.client() as c:
            result = {}

            def run():
                try:
                    c.infer("sleeps", torch.tensor([5.0]))
                except shoal.Error as e:
                    result["e"] = e
            t = threading.Thread(target=run)
            t.start()
            deadline = time.time() + 10
            victim = None
            with d.client() as probe:
                while victim is None and time.time() < deadline:
                    for w in probe.status()["workers"]:
                        if "sleeps" in running_models(w):
                            victim = w["pid"]
                    time.sleep(0.02)
            os.kill(victim, signal.SIGKILL)
            t.join(10)
            assert isinstance(result["e"], shoal.WorkerCrashed)
            assert "SIGKILL" in result["e"].message
    assert_clean(d, archives)


def test_client_that_disconnects_mid_job(loaded, archives):
    d = loaded("sleeps", archives["sleeps"])
    code = ("import sys, torch; sys.path.insert(0, %r); import shoal; "
            "c = shoal.Client(%r); c.infer('sleeps', torch.tensor([1.0]))") % (os.path.join(BUILD, "python"), d.socket)
    with Traffic(d):
        p = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.time() + 20
        with d.client() as probe:
            while time.time() < deadline and not any(
                    "sleeps" in running_models(w) for w in probe.status()["workers"]):
                time.sleep(0.02)
        p.kill()  # gone while its job runs
        p.wait()
        time.sleep(1.5)  # the job finishes; its answer has nowhere to go
    assert_clean(d, archives)


def test_sigterm_during_load_answers_the_load_and_exits_cleanly(make_daemon, archives, tmp_path):
    slow = shoal.export(models.SlowLoad(3.0), tmp_path / "slow.pt")
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("add", archives["add"])
    answer = {}

    def load():
        with d.client() as c:
            try:
                c.load("slow", slow)
                answer["ok"] = True
            except shoal.Error as e:
                answer["error"] = e
    t = threading.Thread(target=load)
    t.start()
    time.sleep(0.7)
    d.proc.send_signal(signal.SIGTERM)
    t.join(20)
    assert not t.is_alive()
    assert isinstance(answer.get("error"), (shoal.Unavailable, shoal.WorkerCrashed)), answer
    assert d.proc.wait(20) == 0
    assert not os.path.exists(d.socket)
    # no worker outlives shoald
    time.sleep(0.3)
    out = subprocess.run(["pgrep", "-f", f"supervisor {d.proc.pid}"], capture_output=True, text=True).stdout
    assert out.strip() == ""


def test_sighup_during_load_changes_workers_without_dropping_jobs(make_daemon, archives, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("workers = 2\nadmin_group =\n")
    slow = shoal.export(models.SlowLoad(1.5), tmp_path / "slow.pt")
    d = make_daemon(workers=2, args=["--config", str(conf)])
    with d.client() as c:
        c.load("add", archives["add"])
    with Traffic(d):
        done = {}

        def load():
            with d.client() as c:
                c.load("slow", slow)
                done["ok"] = True
        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.3)
        conf.write_text("workers = 3\nadmin_group =\nmax_queue = 500\n")
        d.proc.send_signal(signal.SIGHUP)
        t.join(30)
        assert done.get("ok")
        d.wait_ready("add", workers=3)
        d.wait_ready("slow", workers=3)
    with d.client() as c:
        assert len(c.status()["workers"]) == 3
        assert float(c.infer("slow", torch.zeros(1))[0]) == 1.0
    assert "configuration reloaded" in open(d.log_path).read()
    # shrinking works too
    conf.write_text("workers = 1\nadmin_group =\n")
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    with d.client() as c:
        while len(c.status()["workers"]) != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert len(c.status()["workers"]) == 1
    assert_clean(d, archives)


def test_arena_and_mapping_counts_stay_flat_over_many_clients(make_daemon, archives):
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("add", archives["add"])
    for i in range(40):
        with d.client(arena_size=4 << 20) as c:
            y = c.infer("add", torch.full((1000,), float(i)))
            assert float(y[0]) == 2 * i + 1
            del y
    assert_clean(d, archives)
