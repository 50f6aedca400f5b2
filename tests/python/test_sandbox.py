"""The worker sandbox, observed from inside a model: no_new_privs, rlimits from the
configuration, and the seccomp filter (EPERM for ptrace, namespaces, network sockets)."""
import resource

import pytest
import torch

import shoal
import shoal._build_info
import shoal_test_models as models
from conftest import worker_vm_size_mb

SECCOMP = shoal._build_info.SECCOMP  # built with libseccomp?


def probe(make_daemon, tmp_path, args=()):
    d = make_daemon(workers=1, args=args)
    with d.client() as c:
        c.load("probe", shoal.export(models.SandboxProbe(), tmp_path / "probe.pt"))
        return c.infer("probe", torch.zeros(1))


def test_defaults(make_daemon, tmp_path):
    r = probe(make_daemon, tmp_path)
    assert r["NoNewPrivs"] == 1
    assert r["nofile"] == 4096
    assert r["unix"] == "allowed"
    if SECCOMP:
        assert r["Seccomp"] == 2  # filter mode
        assert r["inet"] == "EPERM"
        assert r["ptrace"] == "EPERM"
        assert r["unshare"] == "EPERM"


def test_python_sees_the_workers_gpu_and_user_in_its_environment(make_daemon, tmp_path):
    """The zygote's Python took its copy of the environment before shoald gave each worker
    its GPU (CUDA_VISIBLE_DEVICES, "" with --gpus none): torch's Python side counts devices
    from os.environ, the driver from the process's environment, and they must agree (on a
    two-GPU host a worker otherwise saw device 1 of 1). USER names the worker's user."""
    import pwd
    r = probe(make_daemon, tmp_path, args=["--gpus", "none"])
    assert r["process_environ"]["CUDA_VISIBLE_DEVICES"] == ""
    assert r["environ"]["CUDA_VISIBLE_DEVICES"] == ""
    assert r["environ"]["USER"] == r["environ"]["LOGNAME"] == pwd.getpwuid(r["uid"]).pw_name, r["environ"]


def test_limits_from_the_configuration(make_daemon, tmp_path):
    conf = tmp_path / "shoald.conf"
    limit = worker_vm_size_mb(make_daemon) + 8192
    conf.write_text(f"admin_group =\nworker_address_space_mb = {limit}\nworker_cpu_seconds = 600\n"
                    "worker_open_files = 512\nworker_network = yes\n")
    r = probe(make_daemon, tmp_path, args=["--config", str(conf)])
    assert r["as"] == limit << 20
    assert r["cpu"] == 600
    assert r["nofile"] == 512
    assert r["inet"] == "allowed"


@pytest.mark.skipif(not SECCOMP, reason="built without libseccomp")
def test_seccomp_can_be_turned_off(make_daemon, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("admin_group =\nseccomp = no\n")
    r = probe(make_daemon, tmp_path, args=["--config", str(conf)])
    assert r["Seccomp"] == 0 and r["NoNewPrivs"] == 1
    assert r["ptrace"] == "allowed"


def test_cpu_limit_kills_only_that_worker(make_daemon, tmp_path, archives):
    d = make_daemon(workers=2, args=["--worker-cpu-seconds", "1"])
    with d.client() as c:
        c.load("loops", shoal.export(models.Loops(), tmp_path / "loops.pt"))
        c.load("add", archives["add"])
        with pytest.raises(shoal.WorkerCrashed, match="SIGXCPU|SIGKILL"):
            c.infer("loops", torch.zeros(1), timeout=30)
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0
    assert resource.getrlimit(resource.RLIMIT_CPU)[0] == resource.RLIM_INFINITY  # ours untouched


def test_sighup_with_new_limits_applies_them_to_new_workers(make_daemon, tmp_path):
    import os
    import signal
    import time
    conf = tmp_path / "shoald.conf"
    conf.write_text("admin_group =\nworkers = 1\nworker_open_files = 512\n")
    d = make_daemon(workers=1, args=["--config", str(conf)])
    with d.client() as c:
        c.load("probe", shoal.export(models.SandboxProbe(), tmp_path / "probe.pt"))
        assert c.infer("probe", torch.zeros(1))["nofile"] == 512
        conf.write_text("admin_group =\nworkers = 1\nworker_open_files = 256\n")
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert c.infer("probe", torch.zeros(1))["nofile"] == 512  # running workers keep theirs
        os.kill(d.worker_pids()[0], signal.SIGKILL)  # its replacement comes from a fresh zygote
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                r = c.infer("probe", torch.zeros(1))
                if r["nofile"] == 256:
                    break
            except shoal.Error:
                pass
            time.sleep(0.1)
        assert r["nofile"] == 256
