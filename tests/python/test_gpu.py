"""GPU serving (docs/architecture.md, "GPU"): CUDA models run on the GPU they were exported
for, CUDA tensors travel through GPU arenas with no host copy, a sticky CUDA error costs one
worker, and shoald and the zygote never create a CUDA context. Skipped without a GPU."""
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch

import shoal
import shoal_test_models as models
from shoal import _native

GPU_WHY = None
if not torch.cuda.is_available():
    GPU_WHY = "no GPU visible to torch"
elif _native.gpu_ready() is not None:
    GPU_WHY = _native.gpu_ready()
pytestmark = pytest.mark.skipif(GPU_WHY is not None, reason=f"needs a GPU: {GPU_WHY}")


@pytest.fixture(autouse=True)
def exact_math():
    # Outputs are compared with in-process eager: no TF32 on either side.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def cuda_affine(tmp_path):
    torch.manual_seed(0)
    net = models.GpuAffine().cuda().eval()
    return net, shoal.export(net, tmp_path / "affine.pt")


def compute_apps():
    """PIDs holding a CUDA context, per nvidia-smi."""
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


def test_cuda_model_runs_on_the_gpu_with_cuda_tensors_in_and_out(make_daemon, tmp_path):
    net, path = cuda_affine(tmp_path)
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("affine", path)  # no device: where it was exported
        x = torch.randn(8, 64, device="cuda")
        with torch.no_grad():
            expected = net(x)[0]
        y, where = c.infer("affine", x)  # an ordinary CUDA tensor: one copy on the GPU
        assert y.is_cuda and where.is_cuda
        assert int(where.item()) == 1  # the model saw a CUDA input
        assert torch.equal(y, expected)
        xa = c.empty((8, 64), device="cuda")  # in a GPU arena: no copy at all
        xa.copy_(x)
        y2, _ = c.infer("affine", xa)
        assert torch.equal(y2, expected)
        # outputs="cpu": host tensors on purpose.
        y3, _ = c.infer("affine", xa, outputs="cpu")
        assert not y3.is_cuda and torch.equal(y3, expected.cpu())
        st = c.status()
        assert all(w["gpu"] for w in st["workers"]), st["workers"]
        assert [m["device"] for m in st["models"]] == ["auto"]


def test_no_host_copy_on_the_client_path(make_daemon, tmp_path):
    net, path = cuda_affine(tmp_path)
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("affine", path)
        xa = c.empty((8, 64), device="cuda")
        xa.normal_()
        c.infer("affine", xa)  # warm: arenas mapped
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                y, _ = c.infer("affine", xa)
                del y
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        host = [n for n in names if "HtoD" in n or "DtoH" in n or "aten::_to_copy" in n or n == "aten::cpu"]
        assert host == [], host


def test_no_host_copy_on_the_workers_path(make_daemon, tmp_path):
    """The worker's side: inputs made into tensors over the GPU arena and outputs written
    into the output arena copy nothing through the host. The model's own profiler runs from
    one job to the next, so it sees the runner's work in between: the output's copy on the
    device (which shows that it sees the runner at all) and no host copy."""
    path = shoal.export(models.ProfilesItsRunner(), tmp_path / "prof.pt")
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("prof", path, device="cuda")
        xa = c.empty((8, 64), device="cuda")
        xa.normal_()
        y, counts = c.infer("prof", xa)  # starts the profiler
        assert counts.tolist() == [-1, -1]
        del y
        y, counts = c.infer("prof", xa)  # stops it
        assert torch.equal(y, xa * 2)
        host, device = counts.tolist()
        assert device >= 1, "the profiler saw no copy of the first job's output: it does not see the runner"
        assert host == 0, f"{host} CUDA copies through the host on the worker's side of a job"


def test_input_returned_in_place_is_the_same_gpu_memory(make_daemon, archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("identity", archives["identity"])
        xa = c.empty((4, 4), device="cuda")
        xa.fill_(3)
        y = c.infer("identity", xa)
        assert y.is_cuda and y.data_ptr() == xa.data_ptr()


def test_gpu_inputs_that_are_views_arrive_as_they_are(make_daemon, archives):
    # The worker's GPU inputs are slices of one tensor per arena (python/shoal/_tensors.py,
    # gpu_slice): offsets, strides, empty and one-element views, several in one arena and
    # dtypes of every size must come out exactly as passed.
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("identity", archives["identity"])
        xa = c.empty((8, 64), device="cuda")
        xa.copy_(torch.arange(8 * 64, dtype=torch.float32, device="cuda").view(8, 64))
        half = c.empty((16,), dtype=torch.float16, device="cuda").fill_(1.5)
        i64 = c.empty((5,), dtype=torch.int64, device="cuda").copy_(torch.arange(5, device="cuda") - 2)
        cases = [xa, xa[3:], xa[:, 1::2], xa.t(), xa[2, 5], xa[:0], half[1:], i64[::2]]
        outs = c.infer("identity", *cases)
        for i, (sent, got) in enumerate(zip(cases, outs)):
            assert got.is_cuda and got.dtype == sent.dtype and got.shape == sent.shape, f"input {i}"
            assert torch.equal(got, sent), f"input {i} changed on the way"
        # the same arenas again: the worker's tensor over each is reused
        again = c.infer("identity", xa[1:], i64)
        assert torch.equal(again[0], xa[1:]) and torch.equal(again[1], i64)


def test_torchscript_saved_from_cuda_runs_on_the_gpu(make_daemon, tmp_path):
    torch.manual_seed(0)
    net = torch.jit.script(models.ScriptableMLP().cuda().eval())
    path = tmp_path / "mlp_ts.pt"
    torch.jit.save(net, str(path))
    x = torch.randn(4, 8, device="cuda")
    with torch.no_grad():
        expected = net(x)
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("mlp", path)
        y = c.infer("mlp", x)
        y = y if isinstance(y, torch.Tensor) else y[0]
        assert y.is_cuda
        assert torch.equal(y, expected)
        c.load("mlp_cpu", path, device="cpu")  # on the CPU on purpose
        z = c.infer("mlp_cpu", x.cpu())
        z = z if isinstance(z, torch.Tensor) else z[0]
        assert not z.is_cuda
        assert torch.allclose(z, expected.cpu(), atol=1e-5)


def test_cuda_model_without_a_gpu_fails_to_load_clearly(make_daemon, tmp_path):
    _, path = cuda_affine(tmp_path)
    d = make_daemon(workers=1, args=("--gpus", "none"))
    with d.client() as c:
        with pytest.raises(shoal.Error) as e:
            c.load("affine", path)
        assert "no usable GPU" in str(e.value) and "device='cpu'" in str(e.value)
        with pytest.raises(shoal.Error) as e:
            c.load("affine2", path, device="cuda")
        assert "cannot load on cuda" in str(e.value)
        c.load("affine_cpu", path, device="cpu")  # on purpose: served on the CPU
        y, where = c.infer("affine_cpu", torch.randn(2, 64))
        assert not y.is_cuda and int(where.item()) == 0


def test_shoald_and_the_zygote_never_create_a_cuda_context(make_daemon, tmp_path):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found")
    _, path = cuda_affine(tmp_path)
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("affine", path)
        c.infer("affine", torch.randn(2, 64, device="cuda"))
        st = c.status()
    workers = {w["pid"] for w in st["workers"]}
    apps = compute_apps()
    assert workers <= apps, (workers, apps)  # the workers have contexts
    assert d.proc.pid not in apps
    assert st["zygote"] not in apps


def test_a_sticky_cuda_error_costs_one_worker_and_is_answered(make_daemon, tmp_path, archives):
    path = shoal.export(models.CudaAssert(), tmp_path / "assert.pt")
    d = make_daemon(workers=2)
    stop = threading.Event()
    victim_errors, victim_ok = [], [0]

    def victim():
        with d.client() as vc:
            while not stop.is_set():
                try:
                    y = vc.infer("identity", torch.ones(4))
                    assert torch.equal(y, torch.ones(4))
                    victim_ok[0] += 1
                except shoal.WorkerCrashed:
                    pass  # it may have shared the poisoned worker (K=1: it did not)
                except Exception as e:  # noqa: BLE001
                    victim_errors.append(e)
    with d.client() as c:
        c.load("assert", path, device="cuda")
        c.load("identity", archives["identity"])
        before = set(d.worker_pids())
        t = threading.Thread(target=victim)
        t.start()
        x = torch.ones(8, device="cuda")
        assert torch.equal(c.infer("assert", -x), -2 * x)
        with pytest.raises(shoal.ModelError) as e:
            c.infer("assert", x)
        assert "CUDA" in str(e.value) and "replaced" in str(e.value)
        deadline = time.time() + 60
        while time.time() < deadline:
            pids = set(d.worker_pids())
            if len(pids - before) == 1 and len(pids) == 2:
                break
            time.sleep(0.2)
        assert len(set(d.worker_pids()) - before) == 1
        d.wait_ready("assert")
        assert torch.equal(c.infer("assert", -x), -2 * x)  # served again
        stop.set()
        t.join()
        assert victim_errors == [] and victim_ok[0] > 0
        dead = before - set(d.worker_pids())
        if shutil.which("nvidia-smi"):
            deadline = time.time() + 20
            while time.time() < deadline and dead & compute_apps():
                time.sleep(0.2)
            assert not dead & compute_apps()  # its GPU memory came back


def test_devices_from_the_cli_and_the_configuration(make_daemon, tmp_path):
    _, path = cuda_affine(tmp_path)
    d = make_daemon(workers=1, args=("--model", f"onc@cpu={path}", "--model", f"ong@cuda:0={path}"))
    d.wait_ready("onc")
    d.wait_ready("ong")
    from conftest import BUILD
    out = subprocess.run([os.path.join(BUILD, "bin", "shoal"), "--socket", d.socket, "load", "cli", str(path),
                          "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with d.client() as c:
        x = torch.randn(2, 64)
        assert not c.infer("onc", x)[0].is_cuda
        assert c.infer("ong", x.cuda())[0].is_cuda
        assert not c.infer("cli", x)[0].is_cuda
        devices = {m["name"]: m["device"] for m in c.status()["models"]}
        assert devices == {"onc": "cpu", "ong": "cuda:0", "cli": "cpu"}


def test_a_configured_device_that_does_not_exist_fails_the_start(tmp_path):
    from conftest import Daemon
    _, path = cuda_affine(tmp_path)
    with pytest.raises(RuntimeError) as e:
        Daemon(tmp_path, workers=1, args=("--model", f"m@cuda:9={path}"))
    assert "cannot load on cuda:9" in str(e.value)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_jobs_go_to_a_worker_on_their_inputs_gpu(make_daemon, tmp_path, archives):
    """With a model on every GPU, a job's inputs decide its worker: a worker on another GPU
    could not map them. Inputs on two GPUs are refused."""
    import copy
    net, path = cuda_affine(tmp_path)
    d = make_daemon(workers=4)  # two per GPU, round robin
    with d.client() as c:
        c.load("affine", path, device="cuda")  # on every worker, each on its own GPU
        c.load("identity", archives["identity"])
        d.wait_ready("affine")
        assert len({w["gpu"] for w in c.status()["workers"]}) >= 2
        for dev in (0, 1):
            local = copy.deepcopy(net).to(f"cuda:{dev}")
            x = torch.randn(8, 64, device=f"cuda:{dev}")
            xa = c.empty((8, 64), device=f"cuda:{dev}")
            xa.copy_(x)
            with torch.no_grad():
                expected = local(x)[0]
            for _ in range(12):  # every job, whichever worker is free
                y, _ = c.infer("affine", xa)
                assert y.device == x.device and torch.equal(y, expected)
        a = c.empty((2,), device="cuda:0")
        b = c.empty((2,), device="cuda:1")
        with pytest.raises(shoal.errors.BadRequest, match="must all be on one GPU"):
            c.infer("identity", a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_job_waits_while_its_gpus_only_worker_restarts(make_daemon, tmp_path):
    """Placement, not readiness, decides whether a GPU can serve a job: while the only
    worker of a GPU restarts, a job with inputs there waits for its replacement. A model
    loaded for another GPU is refused at once."""
    net, path = cuda_affine(tmp_path)
    d = make_daemon(workers=2)  # one per GPU
    with d.client() as c:
        c.load("affine", path, device="cuda")
        c.load("only0", path, device="cuda:0")
        d.wait_ready("affine")
        bus1 = _native.gpu_bus(1)
        victim = [w for w in c.status()["workers"] if w["gpu"] == bus1]
        assert len(victim) == 1, c.status()["workers"]
        x = torch.randn(8, 64, device="cuda:1")
        xa = c.empty((8, 64), device="cuda:1")
        xa.copy_(x)
        with torch.no_grad():
            expected = net.to("cuda:1")(x)[0]
        os.kill(victim[0]["pid"], signal.SIGKILL)
        deadline = time.time() + 30
        while not any(w["gpu"] == bus1 and (w["pid"] != victim[0]["pid"] or w["state"] == "restarting")
                      for w in c.status()["workers"]):  # until shoald saw it go
            assert time.time() < deadline
            time.sleep(0.002)
        y, _ = c.infer("affine", xa, timeout=60)  # queued until the replacement serves
        assert y.device == x.device and torch.equal(y, expected)
        assert [w["pid"] for w in c.status()["workers"] if w["gpu"] == bus1] != [victim[0]["pid"]]
        with pytest.raises(shoal.errors.BadRequest, match="runs on no worker of GPU"):
            c.infer("only0", xa)


def test_a_dropped_gpu_output_is_not_reused_while_the_clients_kernels_read_it(make_daemon, tmp_path):
    """Dropping a CUDA result gives its block back to the worker, which reuses it for the
    next output. Kernels the client queued on it before the drop must still read the old
    values: the release waits for them."""
    path = shoal.export(models.LiftsToGpu(), tmp_path / "lift.pt")
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("lift", path, device="cpu")  # no weights; its outputs are CUDA all the same
        n = 1 << 20
        y = c.infer("lift", torch.full((n,), 1.0))
        assert y.is_cuda and float(y[0]) == 2.0
        torch.cuda._sleep(2_000_000_000)  # about a second of GPU time on this stream...
        z = y.clone()                      # ...before this copy reads y's block
        del y                              # its block goes back to the worker
        y2 = c.infer("lift", torch.full((n,), 5.0))  # host input: the client waits for no GPU
        torch.cuda.synchronize()
        assert float(y2[0]) == 6.0
        assert torch.all(z == 2.0), f"the block was reused under a queued kernel: {z[:4]}"


def test_an_empty_cuda_output_comes_back_on_the_gpu(make_daemon, tmp_path):
    """An empty tensor has no bytes and no arena; one the model left on its GPU still comes
    back as a CUDA tensor (and as a host tensor with outputs="cpu")."""
    path = shoal.export(models.LiftsToGpu(), tmp_path / "lift.pt")
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("lift", path, device="cpu")
        y = c.infer("lift", torch.empty(0, 3))
        assert y.is_cuda and tuple(y.shape) == (0, 3)
        y_host = c.infer("lift", torch.empty(0, 3), outputs="cpu")
        assert not y_host.is_cuda and tuple(y_host.shape) == (0, 3)


# -- shared GPU weights (issue 14; supervisor/gpu_weights.h, python/shoal/_gpu_weights.py) --

def device_used_mib(ordinal=0):
    """Memory in use on GPU `ordinal` (this process's numbering), by every process, per
    nvidia-smi (which numbers GPUs by PCI order, like CUDA_DEVICE_ORDER=PCI_BUS_ID)."""
    bus = _native.gpu_bus(ordinal)
    out = subprocess.run(["nvidia-smi", "--query-gpu=pci.bus_id,memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        b, used = [f.strip() for f in line.split(",")]
        if b.lower().endswith(bus.lower()[-12:]):
            return int(used)
    raise AssertionError(f"nvidia-smi does not list GPU {bus}: {out}")


def settle_used_mib(ordinal=0, above=None, seconds=20):
    """The GPU's used memory once it stops falling (workers that just exited give theirs back)."""
    last, deadline = device_used_mib(ordinal), time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.5)
        now = device_used_mib(ordinal)
        if now >= last - 8 and (above is None or now <= above):
            return now
        last = now
    return last


def weight_mib(net):
    """MiB of a module's weights, each storage once (tied weights share one)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in net.state_dict().values()}
    return sum(storages.values()) >> 20


def wide_archive(tmp_path, name="wide.pt", **kw):
    torch.manual_seed(0)
    net = models.Wide(**kw).cuda().eval()
    return net, shoal.export(net, tmp_path / name)


def gpu_section(c, bus):
    return next(g for g in c.status()["gpus"] if g["bus"] == bus)


def test_workers_on_a_gpu_share_one_copy_of_a_models_weights(make_daemon, tmp_path):
    """Four workers on one GPU: one upload, one copy in GPU memory (status says so), every
    worker computes what eager computes; with sharing off each worker has its own copy, and
    the GPU holds ~3 copies more."""
    net, path = wide_archive(tmp_path)
    weights = weight_mib(net)
    x = torch.randn(16, 4096, device="cuda")
    with torch.no_grad():
        expected = net(x)
    bus = _native.gpu_bus(0)
    used = {}
    for share in ("yes", "no"):
        base = settle_used_mib()
        d = make_daemon(workers=4, args=("--gpus", "0", "--share-gpu-weights", share))
        with d.client() as c:
            c.load("wide", path, device="cuda")
            d.wait_ready("wide")
            for _ in range(12):  # every worker, whichever is free
                y = c.infer("wide", x)
                assert torch.allclose(y, expected, rtol=1e-4, atol=1e-5)
            g = gpu_section(c, bus)
            assert g["workers"] == 4
            if share == "yes":
                assert [(w["model"], w["uploads"]) for w in g["weights"]] == [("wide", 1)]
                assert g["weights_bytes"] >> 20 >= weights
            else:
                assert g["weights"] == [] and g["weights_bytes"] == 0
            used[share] = device_used_mib() - base
        d.stop()
    saved = used["no"] - used["yes"]
    print(f"GPU memory of 4 workers: shared {used['yes']} MiB, per worker {used['no']} MiB "
          f"(weights {weights} MiB)")
    assert saved >= 2.5 * weights, used


def test_a_replacement_worker_maps_the_weights_without_uploading(make_daemon, tmp_path):
    net, path = wide_archive(tmp_path)
    x = torch.randn(4, 4096, device="cuda")
    with torch.no_grad():
        expected = net(x)
    bus = _native.gpu_bus(0)
    d = make_daemon(workers=2, args=("--gpus", "0"))
    with d.client() as c:
        c.load("wide", path, device="cuda")
        d.wait_ready("wide")
        victim = c.status()["workers"][0]
        t0 = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        while True:  # until the replacement serves the model
            st = c.status()["workers"]
            w = next(w for w in st if w["slot"] == victim["slot"])
            if w["pid"] != victim["pid"] and "wide" in w["models"] and w["state"] != "restarting":
                break
            assert time.time() - t0 < 60
            time.sleep(0.005)
        print(f"a replacement worker served again {1000 * (time.time() - t0):.0f} ms after the kill")
        assert gpu_section(c, bus)["weights"][0]["uploads"] == 1
        for _ in range(6):
            assert torch.allclose(c.infer("wide", x), expected, rtol=1e-4, atol=1e-5)


def test_a_model_that_writes_into_its_shared_weights_faults_and_the_others_keep_theirs(make_daemon, tmp_path):
    """The shared copy is mapped read-only: an in-place write into a weight is an illegal
    address, answered with the CUDA error; that worker is replaced; the weights every other
    worker reads are untouched."""
    net, path = wide_archive(tmp_path, layers=1, width=256, bump=1.0)
    x = torch.randn(2, 256, device="cuda")
    with torch.no_grad():
        expected = net(x)  # x[0, 0] < 1000: no write
    poke = x.clone()
    poke[0, 0] = 5000.0
    d = make_daemon(workers=2, args=("--gpus", "0"))
    with d.client() as c:
        c.load("writer", path, device="cuda")
        d.wait_ready("writer")
        restarts = c.status()["worker_restarts"]
        with pytest.raises(shoal.errors.Error, match="(?i)illegal|CUDA"):
            c.infer("writer", poke)
        deadline = time.time() + 60
        while c.status()["worker_restarts"] == restarts:
            assert time.time() < deadline, "the faulted worker was not replaced"
            time.sleep(0.05)
        d.wait_ready("writer", timeout=60)
        for _ in range(6):  # both workers, the replacement and the other: the copy is intact
            assert torch.allclose(c.infer("writer", x), expected, rtol=1e-4, atol=1e-5)


def test_unload_gives_the_shared_weights_back_and_versions_have_their_own(make_daemon, tmp_path):
    net, path = wide_archive(tmp_path)
    weights = weight_mib(net)
    bus = _native.gpu_bus(0)
    d = make_daemon(workers=2, args=("--gpus", "0"))
    with d.client() as c:
        c.load("wide:1", path, device="cuda")
        c.load("wide:2", path, device="cuda")
        d.wait_ready("wide:1")
        d.wait_ready("wide:2")
        assert sorted(w["model"] for w in gpu_section(c, bus)["weights"]) == ["wide:1", "wide:2"]
        before = device_used_mib()
        c.unload("wide:1")
        c.unload("wide:2")
        assert gpu_section(c, bus)["weights"] == []
        after = settle_used_mib(above=before - weights)
        assert before - after >= 1.5 * weights, (before, after)


def test_torchscript_workers_share_one_copy_and_keep_their_constants_on_the_gpu(make_daemon, tmp_path):
    """A TorchScript archive saved from CUDA: its tensors (tied weights and a buffer
    included) live in the GPU's one copy; a traced module's tensor constants still come out
    on the GPU (they are moved there, privately)."""
    torch.manual_seed(0)
    wide = models.Wide(layers=2, width=1024).cuda().eval()
    scripted = tmp_path / "wide_ts.pt"
    torch.jit.save(torch.jit.script(wide), str(scripted))
    affine = models.GpuAffine().cuda().eval()
    x64 = torch.randn(8, 64, device="cuda")
    traced = tmp_path / "affine_traced.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(affine, x64), str(traced))
    x = torch.randn(4, 1024, device="cuda")
    with torch.no_grad():
        expected, affine_expected = wide(x), affine(x64)
    bus = _native.gpu_bus(0)
    d = make_daemon(workers=2, args=("--gpus", "0"))
    with d.client() as c:
        c.load("wide_ts", scripted)
        c.load("affine_ts", traced)
        d.wait_ready("wide_ts")
        d.wait_ready("affine_ts")
        assert {m["name"]: m["engine"] for m in c.models()}["wide_ts"] == "libtorch"
        held = {w["model"]: w for w in gpu_section(c, bus)["weights"]}
        assert held["wide_ts"]["uploads"] == 1 and held["wide_ts"]["bytes"] >> 20 >= weight_mib(wide)
        for _ in range(6):
            assert torch.allclose(c.infer("wide_ts", x), expected, rtol=1e-4, atol=1e-5)
            y, flag = c.infer("affine_ts", x64)
            assert y.is_cuda and flag.is_cuda and torch.equal(flag, affine_expected[1])
            assert torch.allclose(y, affine_expected[0], rtol=1e-4, atol=1e-5)


def test_host_and_gpu_arenas_each_have_worker_arena_mb(make_daemon, archives):
    """A worker holds up to worker_arena_mb of host arenas and as much of GPU arenas: a
    client's GPU arena does not push its host arena out (or the other way round)."""
    d = make_daemon(workers=1, args=("--worker-arena-mb", "48"))
    with d.client() as c0:
        c0.load("identity", archives["identity"])
    d.wait_ready("identity")
    with shoal.Client(d.socket, arena_size=32 << 20) as c:
        host = c.empty((1024,))
        gpu = c.empty((1024,), device="cuda")
        host.fill_(1.0)
        gpu.fill_(2.0)
        for _ in range(3):
            assert float(c.infer("identity", host)[0]) == 1.0
            assert float(c.infer("identity", gpu)[0]) == 2.0
        assert c.status()["workers"][0]["client_arenas"] == 2
