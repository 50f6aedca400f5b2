"""Landlock from inside a worker (the model `Confined`): model code writes only its private
temporary folder, reads the installation but no archive by path, and (ABI 6) neither
signals nor reaches abstract Unix sockets outside its worker; a victim client is served
all along. Skipped where the kernel has no Landlock."""
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest
import torch

import shoal
import shoal_test_models as models


def landlock_abi():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, VERSION)
    return max(abi, 0)


ABI = landlock_abi()
pytestmark = pytest.mark.skipif(ABI == 0, reason="this kernel has no Landlock (Linux 5.13+, lsm=...,landlock)")


@pytest.fixture
def public_folder():
    """A fresh folder outside everything workers may read (/srv, else /root), readable by
    everyone by its mode, holding `secret`."""
    base = "/srv" if os.access("/srv", os.W_OK) else os.path.expanduser("~")
    folder = tempfile.mkdtemp(prefix="shoal-landlock-", dir=base)
    os.chmod(folder, 0o755)
    with open(os.path.join(folder, "secret"), "w") as f:
        f.write("not for model code\n")
    os.chmod(os.path.join(folder, "secret"), 0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Victim:
    """A client that infers on `add` until stopped; every answer must be right."""

    def __init__(self, d, retries=0):
        self.d, self.retries, self.served, self.errors = d, retries, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        with self.d.client() as c:
            while not self.stop.is_set():
                try:
                    out = c.infer("add", torch.zeros(3), timeout=30, retries=self.retries)
                    assert torch.equal(out, torch.ones(3)), out
                    self.served += 1
                except Exception as e:  # noqa: BLE001 (reported by finish)
                    self.errors.append(repr(e))
                time.sleep(0.01)

    def finish(self):
        self.stop.set()
        self.thread.join()
        assert not self.errors and self.served > 0, (self.served, self.errors)


@pytest.fixture
def confined(make_daemon, archives, tmp_path):
    """(daemon, try): `try(**params)` runs Confined with those parameters while a victim
    client is served (with `victim_retries`, for a test that kills a worker its job may be
    on)."""
    def start(args=(), victim_retries=0):
        d = make_daemon(workers=2, args=args)
        with d.client() as c:
            c.load("add", archives["add"])
            c.load("confined", shoal.export(models.Confined(), tmp_path / "confined.pt"))
        d.wait_ready("add")
        victims.append(Victim(d, victim_retries))

        def attempt(**params):
            with d.client() as c:
                data = json.dumps(params).encode()
                return c.infer("confined", torch.tensor(list(data), dtype=torch.uint8), timeout=60)
        return d, attempt

    victims = []
    yield start
    for v in victims:
        v.finish()


def test_model_code_writes_only_its_private_temporary_folder(confined, tmp_path):
    d, attempt = confined(victim_retries=1)  # its job may be on the worker killed below
    tag = uuid.uuid4().hex
    outside = [f"/tmp/shoal-landlock-{tag}", f"/var/tmp/shoal-landlock-{tag}",
               os.path.join(os.path.dirname(d.socket), f"planted-{tag}"),  # the socket folder
               str(tmp_path / f"planted-{tag}")]  # beside its archive, which it may read
    out = attempt(write=outside)
    assert out["write"] == {path: "EACCES" for path in outside}, out["write"]
    assert not any(os.path.exists(path) for path in outside)
    tmp = out["tmp"]
    root = os.path.dirname(tmp)
    assert os.path.basename(root).startswith("shoald-") and os.stat(root).st_mode & 0o777 == 0o700, tmp
    assert out["mkstemp"].startswith(tmp + "/") and out["subprocess"] == "ok"
    assert out["tmp_sibling"] == "EACCES"  # the folder of other workers' folders
    # The folder goes with its worker.
    pid = int(os.path.basename(tmp))
    assert pid in d.worker_pids()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while os.path.exists(tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(tmp), f"{tmp} outlived its worker"


def test_threads_name_themselves_but_not_other_processes(confined):
    """The CUDA driver names its threads through /proc/self/task/TID/comm and cuInit fails
    when it cannot: the worker's own threads may be renamed, its parent's may not."""
    d, attempt = confined()
    out = attempt(name_thread=True)["name_thread"]
    assert out["own"] == "allowed" and out["name"].startswith("model code"), out
    assert out["parent"] in ("EACCES", "EPERM"), out


def test_model_code_knows_its_user_after_etc_passwd_is_replaced(confined):
    """Landlock's rule holds the /etc/passwd a worker started with; useradd and usermod
    write a new file. Model code asking who it is (getpass.getuser(): torch 2's compile
    caches do, on load) must still be answered, and ~ must be a folder it may write."""
    if os.geteuid() != 0 or shutil.which("usermod") is None:
        pytest.skip("needs root and usermod: the test rewrites /etc/passwd as useradd does")
    import pwd
    from conftest import ensure_user
    name = "shoaltestlate"
    ensure_user(name)
    d, attempt = confined()
    for _ in range(50):  # another test's useradd may hold the lock for a moment
        if subprocess.run(["usermod", "-c", f"shoal test {uuid.uuid4().hex}", name]).returncode == 0:
            break
        time.sleep(0.1)
    got = attempt(whoami=True)
    out = got["whoami"]
    assert out["user"] == pwd.getpwuid(out["uid"]).pw_name, out
    if out["uid"] != os.geteuid():  # a user of its own: its home is its private folder
        assert out["home"] == got["tmp"], out


def test_model_code_reads_the_installation_and_no_archive_by_path(confined, public_folder, archives, tmp_path):
    d, attempt = confined()
    secret = os.path.join(public_folder, "secret")
    with open(secret) as f:  # anyone may read it, by its mode
        assert f.read()
    # An archive anywhere its client may read loads: the client sends the open file.
    outside = os.path.join(public_folder, "add.pt")
    shutil.copy(archives["add"], outside)
    os.chmod(outside, 0o644)
    with d.client() as c:
        c.load("outside", outside)
        assert torch.equal(c.infer("outside", torch.zeros(1), timeout=30), torch.ones(1))
    tries = [secret, outside, "/etc/shadow", str(tmp_path / "confined.pt"), torch.__file__]
    out = attempt(read=tries)
    assert out["read"][secret] == "EACCES"
    assert out["read"][outside] == "EACCES"  # not even an archive its worker serves
    if os.path.exists("/etc/shadow"):
        assert out["read"]["/etc/shadow"] == "EACCES"  # a root worker could, by ownership
    assert out["read"][str(tmp_path / "confined.pt")] == "EACCES"  # its own archive: only the file it was sent
    assert out["read"][torch.__file__] == "allowed"


@pytest.mark.skipif(ABI < 6, reason=f"Landlock ABI {ABI}: scoping of signals and abstract sockets needs ABI 6")
def test_model_code_cannot_signal_or_reach_abstract_sockets_outside_its_worker(confined):
    d, attempt = confined()
    bystander = subprocess.Popen(["sleep", "600"])
    name = f"shoal-landlock-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(4)
    listener.settimeout(0.3)
    try:
        out = attempt(kill=bystander.pid, abstract=name)
        assert out["kill"] == "EPERM" and bystander.poll() is None
        assert out["kill_shoald"] == "EPERM"  # same uid: without Landlock it could kill shoald
        assert out["abstract"] == "EPERM"
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        bystander.kill()
        bystander.wait()
        listener.close()


@pytest.mark.skipif(ABI < 4, reason=f"Landlock ABI {ABI}: TCP rules need ABI 4")
def test_tcp_stays_closed_even_without_seccomp(confined, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("admin_group =\nseccomp = no\n")
    d, attempt = confined(args=["--config", str(conf)])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    try:
        out = attempt(tcp=listener.getsockname()[1])
        assert out["tcp"] == "EACCES"
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_landlock_can_be_turned_off(confined, public_folder, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("admin_group =\nlandlock = no\n")
    d, attempt = confined(args=["--config", str(conf)])
    planted = f"/tmp/shoal-landlock-{uuid.uuid4().hex}"
    try:
        out = attempt(read=[os.path.join(public_folder, "secret")], write=[planted])
        assert out["read"] == {os.path.join(public_folder, "secret"): "allowed"}
        assert out["write"] == {planted: "allowed"}
        assert os.path.basename(os.path.dirname(out["tmp"])).startswith("shoald-")  # still a private folder
    finally:
        if os.path.exists(planted):
            os.unlink(planted)
