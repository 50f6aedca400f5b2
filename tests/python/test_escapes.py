"""A malicious archive tries each escape from the worker sandbox; every one is refused,
while the other models keep serving."""
import json
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
import shoal._build_info
import shoal_test_models as models
from conftest import Daemon, ensure_user

SECCOMP = shoal._build_info.SECCOMP


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


SHOALD_USER = "shoaltestd"  # an unprivileged shoald runs as this user (created by the test)


@pytest.fixture(params=["root", "unprivileged"])
def shoald_as(request, monkeypatch):
    """Makes daemons that run as root, or as an unprivileged user (as under systemd), in a
    folder model code can reach (pytest's are 0700): the sandbox must hold for both."""
    folder = Path(tempfile.mkdtemp(prefix="shoal-escapes-", dir="/tmp"))
    os.chmod(folder, 0o755)
    owner, preexec = None, None
    if os.geteuid() != 0:
        if request.param == "root":
            pytest.skip("needs root: shoald runs as root")
    elif request.param == "unprivileged":
        uid = ensure_user(SHOALD_USER)
        gid = pwd.getpwuid(uid).pw_gid
        owner = (uid, gid)
        monkeypatch.setenv("SHOAL_SERVER_UID", str(uid))  # our clients accept that shoald

        def preexec():
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
    made = []

    def make(workers=1, args=()):
        sub = folder / f"d{len(made)}"
        sub.mkdir()
        if owner:
            os.chown(sub, *owner)
        d = Daemon(sub, workers, args, preexec)
        made.append(d)
        return d
    make.kind = request.param
    yield make
    for d in made:
        d.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def escapes(shoald_as, archives, tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    secret = Path(tempfile.mkdtemp(prefix="shoal-secret-", dir="/tmp"))
    os.chmod(secret, 0o755)
    (secret / "secret").write_text("only its owner may read this")
    os.chmod(secret / "secret", 0o600)
    d = shoald_as(workers=1)
    with d.client() as c:
        c.load("add", archives["add"])
        c.load("escapes", shoal.export(models.Escapes(), tmp_path / "escapes.pt"))
        params = json.dumps({"port": listener.getsockname()[1], "socket": d.socket, "victim": "add",
                             "secret": str(secret / "secret")}).encode()
        out = c.infer("escapes", torch.tensor(list(params), dtype=torch.uint8), timeout=60)
    try:
        conn, _ = listener.accept()
        conn.close()
        out["listener"] = "reached"
    except socket.timeout:
        out["listener"] = "untouched"
    listener.close()
    shutil.rmtree(secret, ignore_errors=True)
    d.kind = shoald_as.kind
    yield d, out
    if alive(out["child"]):
        os.kill(out["child"], signal.SIGKILL)


@pytest.mark.skipif(not SECCOMP, reason="built without libseccomp")
def test_seccomp_reads_arguments_as_the_kernel_does(escapes):
    d, out = escapes
    assert out["socket64"] == "EPERM" and out["listener"] == "untouched"


@pytest.mark.skipif(not SECCOMP, reason="built without libseccomp")
def test_io_uring_and_new_user_namespaces_are_denied(escapes):
    d, out = escapes
    assert out["io_uring"] == "EPERM"
    assert out["clone_newuser"] == "EPERM"


def test_model_code_cannot_read_shoalds_memory(escapes):
    d, out = escapes
    assert out["parent_mem"] in ("EACCES", "EPERM", "EIO"), out["parent_mem"]


def test_a_root_worker_keeps_no_capability(escapes):
    d, out = escapes
    if os.geteuid() == 0:
        assert int(out["CapEff"], 16) == 0


def test_a_root_shoalds_model_code_runs_as_a_user_of_its_own(escapes):
    d, out = escapes
    if d.kind != "root":
        pytest.skip("an unprivileged shoald cannot switch users: its workers keep its uid")
    try:
        expected = pwd.getpwnam("shoal-worker").pw_uid
    except KeyError:
        expected = pwd.getpwnam("nobody").pw_uid
    assert out["uid"] == out["euid"] == expected != 0
    assert out["groups"] in ([], [out["gid"]])  # root's supplementary groups are gone
    assert out["shadow"] == "EACCES" and out["secret"] == "EACCES"
    assert int(out["CapEff"], 16) == 0
    with d.client() as c:  # the victim's model is still served
        assert torch.equal(c.infer("add", torch.zeros(1), timeout=30), torch.ones(1))


def test_model_code_has_a_temporary_folder_it_may_write(escapes):
    d, out = escapes
    assert out["tmp_write"] == "ok", out
    if out["tmp"] not in ("/tmp", "/var/tmp", "/usr/tmp", os.environ.get("TMPDIR")):
        # a private folder of its own (the sandbox's TMPDIR): owned by the uid it runs as
        assert out["tmp_owner"] == out["uid"], out


def test_status_shows_each_workers_memory(escapes):
    # Workers are not dumpable, so a shoald that is not root cannot open their
    # /proc/PID/smaps_rollup: each worker hands it the file it opened itself.
    d, out = escapes
    deadline = time.monotonic() + 10
    with d.client() as c:
        while True:
            w = c.status()["workers"][0]
            if (w["rss_kb"] > 0 and w["pss_kb"] > 0) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert w["rss_kb"] > 10000 and 0 < w["pss_kb"] <= w["rss_kb"], w


def test_model_code_is_not_an_admin(escapes):
    d, out = escapes
    assert out["admin"] != "unloaded" and "model code" in out["admin"], out["admin"]
    with d.client() as c:
        assert "add" in [m["name"] for m in c.models()]
        assert torch.equal(c.infer("add", torch.zeros(1), timeout=30), torch.ones(1))


@pytest.mark.skipif(not SECCOMP, reason="built without libseccomp")
def test_what_model_code_starts_dies_with_its_worker(escapes):
    d, out = escapes
    assert out["setsid"] == "EPERM"
    assert alive(out["child"])
    os.kill(d.worker_pids()[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(out["child"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(out["child"]), "a process started by model code outlived its worker"


def test_a_squatted_default_socket_folder_is_refused():
    # Another user (uid 12345) made /tmp/shoal-65534 first and listens there; nobody's
    # client, using the default path, must refuse to connect (it would send arenas).
    if os.geteuid() != 0:
        pytest.skip("needs root: the test plays two other users")
    import shutil
    import subprocess
    import sys
    from conftest import NOBODY, _public_python
    folder = f"/tmp/shoal-{NOBODY}"
    shutil.rmtree(folder, ignore_errors=True)
    os.mkdir(folder, 0o755)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(f"{folder}/shoal.sock")
    os.chmod(f"{folder}/shoal.sock", 0o777)
    squatter.listen(4)
    squatter.settimeout(0.3)
    os.chown(folder, 12345, 12345)
    try:
        env = {"PATH": "/usr/bin:/bin"}
        code = (f"import sys; sys.path.insert(0, {_public_python()!r})\nimport shoal\n"
                "try:\n    shoal.Client()\n    print('connected')\nexcept shoal.Unavailable as e:\n    print(e.message)\n")
        r = subprocess.run([sys.executable, "-c", code], user=NOBODY, group=NOBODY, env=env, capture_output=True,
                           text=True, timeout=60, cwd="/")
        assert "belongs to uid 12345" in r.stdout and "squatting" in r.stdout, r.stdout + r.stderr
        with pytest.raises(socket.timeout):
            squatter.accept()
    finally:
        squatter.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_only_admins_see_archive_paths(public_daemon, archives):
    from conftest import NOBODY, run_as
    d = public_daemon(workers=1)
    with d.client() as admin:
        admin.load("add", archives["add"])
        assert admin.models()[0]["path"] == archives["add"]
    r = run_as(NOBODY, d.socket, "print(repr([m['path'] for m in c.models()] + "
                                 "[m['path'] for m in c.status()['models']]))")
    assert r.stdout.strip() == "['', '']", r.stdout + r.stderr


def test_clients_refuse_a_server_run_by_another_user():
    # Someone else (nobody) listens where the client was told to connect: the client must
    # refuse before it sends anything, unless told to trust that uid.
    if os.geteuid() != 0:
        pytest.skip("needs root: the fake server runs as another user")
    import subprocess
    import sys
    from conftest import BUILD, NOBODY
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="shoal-fake-", dir="/tmp")  # pytest's folders are 0700
    os.chmod(folder, 0o777)
    path = os.path.join(folder, "fake.sock")
    server = subprocess.Popen([sys.executable, "-c", f"""
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind({path!r}); s.listen(4)
print("ready", flush=True)
conn, _ = s.accept()
conn.settimeout(2)
try:
    data = conn.recv(1 << 16)
except OSError:
    data = b""
print("received", len(data), flush=True)
time.sleep(5)
"""], user=NOBODY, group=NOBODY, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert server.stdout.readline().strip() == "ready"
        with pytest.raises(shoal.Unavailable, match=f"runs as uid {NOBODY}.*SHOAL_SERVER_UID={NOBODY}"):
            shoal.Client(path)
        assert server.stdout.readline().strip() == "received 0"  # not a byte was sent
        cpp = subprocess.run([os.path.join(BUILD, "bin", "shoal-infer-cpp"), "--socket", path, "m", "1"],
                             capture_output=True, text=True,
                             timeout=60)
        assert f"runs as uid {NOBODY}" in cpp.stdout + cpp.stderr
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)
