"""Every wait has a deadline: a client's own wait for shoald, and shoald's wait for the
zygote to fork a worker."""
import os
import signal
import time

import pytest
import torch

import shoal


def test_the_client_raises_timeout_itself_when_shoald_does_not_answer(daemon, archives):
    with daemon.client() as c:
        c.load("identity", archives["identity"])
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(shoal.Timeout, match="did not answer infer request"):
                c.infer("identity", torch.ones(3), timeout=0.5)
            assert time.monotonic() - t0 < 30
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        # The late answer to the abandoned request is skipped: the connection stays usable.
        assert torch.equal(c.infer("identity", torch.arange(4.0), timeout=30), torch.arange(4.0))
        assert c.status()["pid"] == daemon.proc.pid


def test_a_wedged_zygote_is_killed_and_workers_still_come_back(make_daemon, archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("add", archives["add"])
        assert (zygote := c.status()["zygote"]) > 0
        os.kill(zygote, signal.SIGSTOP)
        old = d.worker_pids()[0]
        os.kill(old, signal.SIGKILL)
        while d.worker_pids()[0] == old:
            time.sleep(0.01)
        # The fork request to the stopped zygote passes its deadline; the worker is started
        # with exec instead, and a fresh zygote takes over later.
        assert torch.equal(c.infer("add", torch.zeros(2), timeout=60), torch.ones(2))
        deadline = time.monotonic() + 60
        while c.status()["zygote"] in (zygote, -1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.status()["zygote"] not in (zygote, -1)
    assert "did not answer fork request" in open(d.log_path).read()


def test_a_load_that_hangs_is_answered_timeout_and_its_workers_restarted(make_daemon, archives, tmp_path):
    import shoal_test_models as models
    d = make_daemon(workers=2, args=["--load-timeout-ms", "8000"])
    hangs = shoal.export(models.SlowLoad(3600.0), tmp_path / "hangs.pt")
    with d.client() as c:
        c.load("add", archives["add"])
        before = c.status()["worker_restarts"]
        with pytest.raises(shoal.Timeout, match="took longer than load_timeout_ms"):
            c.load("hangs", hangs)
        assert "hangs" not in [m["name"] for m in c.models()]
        d.wait_ready("add")
        assert torch.equal(c.infer("add", torch.zeros(2), timeout=30), torch.ones(2))
        assert c.status()["worker_restarts"] >= before + 2
        assert not {m["name"]: m for m in c.models()}["add"]["failed"]
