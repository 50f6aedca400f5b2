"""Blame goes where it belongs: no single client can take a model away from the others.

Each route runs an attacker (a real client process, as another user where the route is
about a user) while a victim client must keep being served; afterwards the model is still
loaded, not failed, and ready."""
import time

import pytest
import torch

import shoal
from conftest import NOBODY, run_as

def assert_serves(d, model, x, expected):
    with d.client() as c:
        assert torch.equal(c.infer(model, x, timeout=30), expected)
        m = {e["name"]: e for e in c.models()}[model]
        assert not m["failed"] and m["ready"], m


def test_client_chosen_deadlines_do_not_fail_the_model(make_daemon, archives):
    # Three jobs whose 1 ms deadline passes while they run get their worker killed: that
    # is the client's choice, not a crash of the model.
    d = make_daemon(workers=1, args=["--kill-grace-ms", "50", "--crash-loop-limit", "2"])
    with d.client() as attacker:
        attacker.load("sleeps", archives["sleeps"])
        for _ in range(3):
            d.wait_ready("sleeps")
            with pytest.raises(shoal.Timeout):
                attacker.infer("sleeps", torch.tensor([3.0]), timeout=0.001)
            time.sleep(0.3)  # the grace passes: the worker is killed
        assert attacker.status()["worker_restarts"] >= 3
    d.wait_ready("sleeps")
    assert_serves(d, "sleeps", torch.tensor([0.0]), torch.tensor([0.0]))


def test_a_client_whose_jobs_crash_workers_is_refused_and_others_keep_the_model(public_daemon, archives):
    d = public_daemon(workers=2, args=["--crash-loop-limit", "2"])
    with d.client() as admin:
        admin.load("crashy", archives["crashy"])
    attack = run_as(NOBODY, d.socket, """
outcomes = []
for _ in range(4):
    try:
        c.infer("crashy", -torch.ones(1), timeout=30)
        outcomes.append("ok")
    except shoal.Error as e:
        outcomes.append(type(e).__name__ + ": " + e.message)
print("\\n".join(outcomes))
""")
    assert attack.returncode == 0, attack.stderr
    outcomes = attack.stdout.splitlines()
    assert outcomes[:2] == [o for o in outcomes[:2] if o.startswith("WorkerCrashed")], outcomes
    assert outcomes[2].startswith("Unavailable") and f"refuses jobs from uid {NOBODY}" in outcomes[2], outcomes
    # The victim (another user) is served, and the model is neither failed nor unready.
    assert_serves(d, "crashy", torch.ones(1), torch.full((1,), 2.0))
    with d.client() as c:
        m = {e["name"]: e for e in c.status()["models"]}["crashy"]
        assert [r["uid"] for r in m["refused_clients"]] == [NOBODY]
        assert c.health()["ready"]


def test_a_stride_0_input_cannot_make_a_worker_allocate_its_logical_size(daemon, archives):
    # 2^48 float32 elements over 4 bytes of arena: refused before any worker sees it.
    with daemon.client() as c:
        c.load("add", archives["add"])
        x = c.empty((1,))
        with pytest.raises(shoal.BadRequest, match="strides overlap.*model 'add' does not take broadcast inputs"):
            c.infer("add", x.as_strided((2 ** 48,), (0,)))
    assert_serves(daemon, "add", torch.zeros(1), torch.ones(1))


def _scripted(tmp_path, name, module, broadcast):
    path = tmp_path / f"{name}.pt"
    extra = shoal.torchscript_manifest(broadcast_inputs=True) if broadcast else {}
    torch.jit.save(torch.jit.script(module), str(path), _extra_files=extra)
    return path


@pytest.mark.parametrize("engine", ["python", "torchscript"])
def test_broadcast_inputs_reach_a_model_whose_manifest_takes_them(make_daemon, tmp_path, engine):
    import shoal_test_models as models

    def archive(name, module, broadcast):
        if engine == "python":
            return shoal.export(module, tmp_path / f"{name}.pt", broadcast_inputs=broadcast)
        return _scripted(tmp_path, name, module, broadcast)

    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("takes", archive("takes", models.AddConst(1.0), True))
        c.load("refuses", archive("refuses", models.AddConst(1.0), False))
        assert {m["name"]: m["engine"] for m in c.models()}["takes"] == ("libtorch" if engine == "torchscript"
                                                                         else "python")
        x = c.empty((3,))
        x.copy_(torch.tensor([1.0, 2.0, 3.0]))
        wide = x.as_strided((4, 3), (0, 1))  # each row is x
        assert torch.equal(c.infer("takes", wide), wide * 2 + 1)
        with pytest.raises(shoal.BadRequest, match="model 'refuses' does not take broadcast inputs"):
            c.infer("refuses", wide)
        assert torch.equal(c.infer("refuses", wide.contiguous()), wide * 2 + 1)


@pytest.mark.parametrize("engine", ["python", "torchscript"])
def test_a_model_that_densifies_a_huge_broadcast_input_fails_its_job_not_its_worker(make_daemon, tmp_path, engine):
    # 2^48 float32 elements over 4 bytes, let through by the manifest: the model's
    # x.contiguous() would need 1 PiB; the allocation fails inside the job.
    import shoal_test_models as models
    d = make_daemon(workers=1)
    if engine == "python":
        path = shoal.export(models.Densifies(), tmp_path / "dense.pt", broadcast_inputs=True)
    else:
        path = _scripted(tmp_path, "dense", models.Densifies(), True)
    with d.client() as c:
        c.load("dense", path)
        c.load("add", shoal.export(models.AddConst(1.0), tmp_path / "add.pt"))
        pid = d.worker_pids()[0]
        x = c.empty((1,))
        x.fill_(2.0)
        assert float(c.infer("dense", x.as_strided((1000,), (0,)))) == 2000.0  # small enough: served
        with pytest.raises(shoal.ModelError, match="model 'dense'"):
            c.infer("dense", x.as_strided((2 ** 48,), (0,)), timeout=60)
        st = c.status()
        assert st["worker_restarts"] == 0 and st["workers"][0]["pid"] == pid
    assert_serves(d, "add", torch.zeros(1), torch.ones(1))
    assert_serves(d, "dense", torch.ones(3), torch.tensor(3.0))


@pytest.mark.parametrize("shape,strides", [
    ([2 ** 48, 2 ** 48, 2 ** 48], [0, 0, 0]),   # the element count overflows
    ([2 ** 48, 2 ** 20], [1, 2 ** 48]),          # the extent overflows
    ([3], [2 ** 48 * 2 ** 14]),                  # so does a single stride
])
def test_overflowing_shapes_are_bad_requests(daemon, archives, shape, strides):
    # Sent as raw descriptors: the client would refuse to build such tensors itself.
    with daemon.client() as c:
        c.load("add", archives["add"])
        x = c.empty((4,))
        arena = next(iter(c._arenas))
        desc = {"arena": arena, "block": 0, "offset": 0, "dtype": "float32", "shape": shape, "strides": strides}
        with pytest.raises(shoal.BadRequest):
            c._call({"op": "infer", "model": "add", "inputs": [desc]})
        del x
    assert_serves(daemon, "add", torch.zeros(1), torch.ones(1))


def test_jobs_queued_for_a_load_that_fails_get_its_error_at_once(make_daemon, tmp_path):
    import threading
    import shoal_test_models as models
    d = make_daemon(workers=1, args=["--timeout-ms", "0"])  # no deadline would ever answer them
    bad = shoal.export(models.SlowLoadFails(1.0), tmp_path / "bad.pt")
    outcomes = {}

    def load():
        with d.client() as c:
            try:
                c.load("bad", bad)
            except shoal.Error as e:
                outcomes["load"] = e

    def infer():
        with d.client() as c:
            try:
                c.infer("bad", torch.ones(1))
            except shoal.Error as e:
                outcomes["infer"] = e
    loader = threading.Thread(target=load)
    loader.start()
    with d.client() as c:
        while not any(m["name"] == "bad" for m in c.models()):
            time.sleep(0.01)
    asker = threading.Thread(target=infer, daemon=True)
    asker.start()
    loader.join(60)
    asker.join(30)
    assert not asker.is_alive(), "the queued job was never answered"
    assert isinstance(outcomes["load"], shoal.ModelError)
    assert "loading model 'bad' failed" in outcomes["infer"].message
