"""Loads cannot be confused: the client opens the archive with its own rights and passes
the open file (SCM_RIGHTS); shoald opens no path on a client's behalf, holds the file for
the model's lifetime, and every worker (replacements and new ones included) loads from
that very file (docs/security.md)."""
import array
import grp
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
import torch

import shoal
import shoal_test_models as models
from conftest import ensure_user, run_as
from wire import frame, raw, read_reply


def send_load(sock_path, name, path, fd=None):
    """A load by hand: `path` named, `fd` (if any) attached; the reply."""
    s = raw(sock_path, timeout=60)
    data = frame({"v": 1, "op": "load", "id": 1, "name": name, "path": str(path)})
    if fd is None:
        s.sendall(data)
    else:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    reply = read_reply(s)
    s.close()
    return reply


def replace_worker(d, slot=0):
    """Kills the worker of `slot` and waits until its replacement runs; its pid."""
    with d.client() as c:
        old = d.worker_pids()[slot]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            w = c.status()["workers"][slot]
            if w["pid"] > 0 and w["pid"] != old and w["state"] != "restarting":
                return w["pid"]
            time.sleep(0.05)
    raise TimeoutError("the worker was not replaced")


def test_a_load_that_only_names_a_path_is_refused_whatever_exists_there(daemon):
    # shoald runs as root here: it could open /etc/shadow, and must not on anyone's behalf.
    answers = [send_load(daemon.socket, "m", path) for path in ("/etc/shadow", "/no/such/archive.pt")]
    for a in answers:
        assert not a["ok"] and a["error"]["code"] == "BAD_REQUEST"
        assert "needs the archive passed as an open file" in a["error"]["message"]
    # Nothing tells an existing file from a missing one.
    assert answers[0]["error"]["message"] == answers[1]["error"]["message"]
    with daemon.client() as c:
        assert c.models() == []


def test_a_file_swapped_in_after_the_client_opened_it_is_not_what_loads(daemon, tmp_path):
    one = shoal.export(models.AddConst(1.0), tmp_path / "one.pt")
    hundred = shoal.export(models.AddConst(100.0), tmp_path / "hundred.pt")
    path = tmp_path / "model.pt"
    shutil.copy(one, path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.rename(hundred, path)  # the swap, after the client opened the file and before shoald sees it
    try:
        reply = send_load(daemon.socket, "m", path, fd)
    finally:
        os.close(fd)
    assert reply["ok"], reply
    with daemon.client() as c:
        assert c.models()[0]["path"] == str(path)  # the name given, as a label
        assert float(c.infer("m", torch.zeros(1), timeout=30)) == 1.0
        replace_worker(daemon)  # a replacement loads the file it was given too
        daemon.wait_ready("m")
        for _ in range(8):
            assert float(c.infer("m", torch.zeros(1), timeout=30)) == 1.0


def test_replacements_and_new_workers_load_from_the_held_files(make_daemon, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("workers = 1\nadmin_group =\n")
    configured = shoal.export(models.AddConst(10.0), tmp_path / "configured.pt")
    v1 = shoal.export(models.AddConst(1.0), tmp_path / "v1.pt")
    v2 = shoal.export(models.AddConst(2.0), tmp_path / "v2.pt")
    d = make_daemon(workers=1, args=["--config", str(conf), "--model", f"cfg={configured}"])
    with d.client() as c:
        c.load("m:1", v1)
        c.load("m:2", v2)
    for path in (configured, v1, v2):
        os.remove(path)  # nothing is left at the paths: only the files shoald holds
    replace_worker(d)
    for model in ("cfg", "m:1", "m:2"):
        d.wait_ready(model)
    conf.write_text("workers = 2\nadmin_group =\nworker_open_files = 2048\n")  # a fresh zygote too
    d.proc.send_signal(signal.SIGHUP)
    for model in ("cfg", "m:1", "m:2"):
        d.wait_ready(model, workers=2)
    with d.client() as c:
        assert len(c.status()["workers"]) == 2
        for _ in range(6):
            assert float(c.infer("m", torch.zeros(1), timeout=30)) == 2.0  # the newest version
            assert float(c.infer("m:1", torch.zeros(1), timeout=30)) == 1.0
            assert float(c.infer("cfg", torch.zeros(1), timeout=30)) == 10.0
        c.unload("m:2")
        assert float(c.infer("m", torch.zeros(1), timeout=30)) == 1.0
    assert "could not load" not in open(d.log_path).read()


def test_an_archive_rewritten_in_place_is_not_given_to_new_workers(daemon, tmp_path):
    path = shoal.export(models.AddConst(1.0), tmp_path / "m.pt")
    with daemon.client() as c:
        c.load("m", path)
        with open(path, "ab") as f:
            f.write(b"\0" * 64)  # the file changes under the name shoald was given
        replace_worker(daemon, slot=0)
        deadline = time.monotonic() + 30
        while "rewritten in place" not in open(daemon.log_path).read() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "model 'm': archive " + path + " was rewritten in place" in open(daemon.log_path).read()
        workers = c.status()["workers"]
        assert "m" not in workers[0]["models"] and "m" in workers[1]["models"]
        assert float(c.infer("m", torch.zeros(1), timeout=30)) == 1.0  # the other worker still serves it


@pytest.fixture
def admin():
    """An unprivileged member of the admin group: (uid, gid, [supplementary gids])."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd: the test creates an unprivileged admin")
    uid = ensure_user("shoaltestadm", groups=["shoaltestadmins"])
    return uid, pwd.getpwuid(uid).pw_gid, [grp.getgrnam("shoaltestadmins").gr_gid]


def test_an_admin_cannot_load_an_archive_it_cannot_read(public_daemon, archives, admin):
    uid, gid, groups = admin
    folder = Path(tempfile.mkdtemp(prefix="shoal-secret-", dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        secret = folder / "secret.pt"
        shutil.copy(archives["add"], secret)
        os.chmod(secret, 0o600)  # root's alone
        link = folder / "link.pt"
        os.symlink(secret, link)
        readable = folder / "readable.pt"
        shutil.copy(archives["identity"], readable)
        os.chmod(readable, 0o644)
        d = public_daemon(workers=1, args=["--admin-group", "shoaltestadmins"])
        r = run_as(uid, d.socket, f"""
for name, path in (("direct", {str(secret)!r}), ("link", {str(link)!r})):
    try:
        c.load(name, path)
        print(name, "LOADED")
    except shoal.BadRequest as e:
        print(name, "refused:", e.message)
c.load("readable", {str(readable)!r})
print("readable:", c.infer("readable", torch.ones(2)).tolist())
""", gid=gid, groups=groups)
        assert "LOADED" not in r.stdout, r.stdout
        assert f"direct refused: cannot read archive {secret}: Permission denied" in r.stdout, r.stdout + r.stderr
        assert f"link refused: cannot read archive {link}: Permission denied" in r.stdout
        assert "readable: [1.0, 1.0]" in r.stdout  # the admin may load what it can read
        with d.client() as c:
            assert [m["name"] for m in c.models()] == ["readable"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
