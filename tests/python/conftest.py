"""Fixtures: a real shoald on a temporary socket, and archives of the test models.

SHOAL_BUILD_DIR (set by ctest) names the build tree: bin/shoald and python/shoal."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
BUILD = os.path.abspath(BUILD)
sys.path.insert(0, os.path.join(BUILD, "python"))
MODELS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "models"))
sys.path.insert(0, MODELS)

import shoal  # noqa: E402


class Daemon:
    def __init__(self, tmp, workers=2, args=(), preexec_fn=None):
        self.socket = str(tmp / "shoal.sock")
        self.log_path = tmp / "shoald.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "bin", "shoald"), "--socket", self.socket, "--workers", str(workers),
             *args], stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoald exited: {open(self.log_path).read()}")
            if os.path.exists(self.socket):
                try:
                    shoal.Client(self.socket).close()
                    return
                except shoal.Unavailable:
                    pass
            time.sleep(0.05)
        raise RuntimeError("shoald did not come up")

    def client(self, **kw):
        return shoal.Client(self.socket, **kw)

    def worker_pids(self):
        """Every worker's pid, once each is known: a worker forked by the zygote shows pid -1
        until the zygote reports it, and os.kill(-1, ...) would signal every process."""
        deadline = time.time() + 30
        with self.client() as c:
            while True:
                pids = [w["pid"] for w in c.status()["workers"]]
                if all(p > 0 for p in pids) or time.time() > deadline:
                    assert all(p > 0 for p in pids), f"worker pids not known: {pids}"
                    return pids
                time.sleep(0.01)

    def wait_ready(self, model, workers=None, timeout=30):
        """Until `model` is loaded in `workers` workers (all by default)."""
        deadline = time.time() + timeout
        with self.client() as c:
            while time.time() < deadline:
                st = c.status()["workers"]
                n = sum(1 for w in st if model in w["models"] and w["state"] != "restarting")
                if n >= (workers or len(st)):
                    return
                time.sleep(0.05)
        raise TimeoutError(f"model {model} not ready in time")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def settle(check, timeout=15):
    """Polls `check()` (returns (ok, what)) until ok; asserts with the last `what`."""
    deadline = time.monotonic() + timeout
    while True:
        ok, what = check()
        if ok or time.monotonic() > deadline:
            assert ok, what
            return
        time.sleep(0.1)


def running_models(worker):
    """Models of the jobs a worker (an entry of status()["workers"]) runs now, one per busy
    interpreter."""
    return [i["job"]["model"] for i in worker["interpreters"] if i["job"]]


def worker_vm_size_mb(make_daemon):
    """The address space of a worker of this build, in MiB (limits are set relative to it)."""
    d = make_daemon(workers=1)
    with d.client() as c:
        deadline = time.time() + 30
        while (pid := c.status()["workers"][0]["pid"]) <= 0 and time.time() < deadline:
            time.sleep(0.05)  # the zygote is still forking it
        with open(f"/proc/{pid}/status") as f:
            size = next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmSize:"))
    d.stop()
    return size


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def make_daemon(tmp_path):
    made = []

    def make(workers=2, args=(), preexec_fn=None):
        sub = tmp_path / f"d{len(made)}"
        sub.mkdir()
        d = Daemon(sub, workers, args, preexec_fn)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


@pytest.fixture(scope="session")
def archives(tmp_path_factory):
    """Archives of the small test models, exported once per session."""
    import shoal_test_models as m
    out = tmp_path_factory.mktemp("archives")
    paths = {}
    for name, obj in {"branchy": m.Branchy(), "add": m.AddConst(1.0), "identity": m.Identity(),
                      "crashy": m.Crashy(), "raises": m.Raises(), "exits": m.Exits(),
                      "sleeps": m.Sleeps()}.items():
        paths[name] = shoal.export(obj, out / f"{name}.pt")
    return paths


NOBODY = 65534
_PUBLIC_PYTHON = []


def _public_python():
    """The build's shoal package, copied where any user can import it (a checkout under
    /root is not)."""
    if not _PUBLIC_PYTHON:
        import shutil
        folder = tempfile.mkdtemp(prefix="shoal-python-", dir="/tmp")
        os.chmod(folder, 0o755)
        shutil.copytree(os.path.join(BUILD, "python", "shoal"), os.path.join(folder, "shoal"))
        import atexit
        atexit.register(shutil.rmtree, folder, True)
        _PUBLIC_PYTHON.append(folder)
    return _PUBLIC_PYTHON[0]


@pytest.fixture
def public_daemon():
    """A daemon whose socket another user can reach (pytest's tmp folders are 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test runs a client as another user")
    import shutil
    made = []

    def make(workers=2, args=()):
        folder = tempfile.mkdtemp(prefix="shoal-public-", dir="/tmp")
        os.chmod(folder, 0o755)
        d = Daemon(Path(folder), workers, args)
        made.append((d, folder))
        return d
    yield make
    for d, folder in made:
        d.stop()
        shutil.rmtree(folder, ignore_errors=True)


def ensure_user(name, groups=()):
    """The uid of local user `name` (created, with no home, if missing), a member of
    `groups` (created if missing)."""
    import grp
    import pwd
    for g in groups:
        try:
            grp.getgrnam(g)
        except KeyError:
            subprocess.run(["groupadd", g], check=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    if groups:
        subprocess.run(["usermod", "-a", "-G", ",".join(groups), name], check=True)
    return pwd.getpwnam(name).pw_uid


def run_as(uid, socket, code, timeout=120, background=False, gid=None, groups=()):
    """Runs `code` as `uid` (group `gid`, default `uid`; supplementary groups exactly
    `groups`, gids) in a fresh interpreter, with torch and shoal imported and `c` a client
    connected to `socket`; its CompletedProcess, or with background=True its Popen."""
    prelude = (f"import sys; sys.path.insert(0, {_public_python()!r})\n"
               "import torch, shoal\n"
               f"c = shoal.Client({socket!r})\n")
    argv = [sys.executable, "-c", prelude + code]
    who = dict(user=uid, group=uid if gid is None else gid, extra_groups=list(groups), cwd="/", text=True)
    if background:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **who)
    return subprocess.run(argv, capture_output=True, timeout=timeout, **who)


def crash_from_two_clients(socket, c, model):
    """Crashes a worker with a job of `model` from this process (client `c`) and one from
    user nobody: two clients' crashes, which mark the model failed when crash_loop_limit is 2
    (the daemon must be reachable by nobody: public_daemon)."""
    import torch
    with pytest.raises(shoal.WorkerCrashed):
        c.infer(model, -torch.ones(1))
    other = run_as(NOBODY, socket, f"""
try:
    c.infer({model!r}, -torch.ones(1))
except shoal.WorkerCrashed:
    print("crashed")
""")
    assert other.stdout.strip() == "crashed", other.stderr

