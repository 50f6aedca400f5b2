"""End to end through a real shoald: outputs equal eager execution, structure preserved,
errors are the right classes, concurrency loses nothing."""
import threading

import numpy as np
import pytest
import torch

import shoal
import shoal_test_models as models


def max_diff(a, b):
    return float((a - b).abs().max())


def test_resnet18_matches_eager(daemon, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18()  # random weights, fixed seed
    net.eval()
    path = shoal.export(net, tmp_path / "resnet18.pt")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = net(x)
    with daemon.client() as c:
        c.load("resnet18", path)
        y = c.infer("resnet18", x)
        assert y.shape == expected.shape
        assert max_diff(y, expected) <= 1e-5
        # arena-backed input: same answer, no copy on the client side
        xa = c.empty(x.shape)
        xa.copy_(x)
        assert max_diff(c.infer("resnet18", xa), expected) <= 1e-5


def test_python_control_flow_and_helper_module_match_eager(daemon, archives):
    net = models.Branchy().eval()
    with daemon.client() as c:
        c.load("branchy", archives["branchy"])
        for seed in range(6):  # different inputs take different branches and loop lengths
            torch.manual_seed(seed)
            x = torch.randn(3, 16) * (0.1 + seed)
            with torch.no_grad():
                want = net(x)
            got = c.infer("branchy", x)
            assert set(got) == {"logits", "extra"}
            assert max_diff(got["logits"], want["logits"]) <= 1e-5
            assert isinstance(got["extra"], tuple)
            assert max_diff(got["extra"][0], want["extra"][0]) <= 1e-5
            assert got["extra"][1] == want["extra"][1]  # [steps, mode]: Python values


def test_numpy_inputs_and_multiple_dtypes(daemon, archives):
    with daemon.client() as c:
        c.load("identity", archives["identity"])
        for dt in (np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_):
            a = (np.arange(12).reshape(3, 4) % 3).astype(dt)
            y = c.infer("identity", a)
            assert y.dtype == torch.from_numpy(a).dtype
            assert np.array_equal(y.numpy(), a)
        # a non-contiguous input arrives with the right values
        t = torch.arange(20.).reshape(4, 5).t()
        assert torch.equal(c.infer("identity", t), t)
        # several inputs come back as a tuple
        a, b = torch.ones(2), torch.zeros(3)
        ya, yb = c.infer("identity", a, b)
        assert torch.equal(ya, a) and torch.equal(yb, b)


def test_identity_on_arena_tensor_returns_the_same_bytes(daemon, archives):
    with daemon.client() as c:
        c.load("identity", archives["identity"])
        x = c.empty((1024,))
        x.fill_(3.0)
        y = c.infer("identity", x)
        assert y.data_ptr() == x.data_ptr()  # zero copies both ways
        del x
        assert float(y.sum()) == 3.0 * 1024  # y keeps the block alive


def test_results_are_released_when_dropped(daemon, archives):
    with daemon.client(arena_size=8 << 20) as c:
        c.load("add", archives["add"])
        arena = next(iter(c._arenas.values()))
        before = arena.free_bytes()
        x = torch.ones(256 * 1024)  # 1 MiB in, 1 MiB out
        for _ in range(50):  # 50 MiB through an 8 MiB arena: only works if blocks are freed
            y = c.infer("add", x)
            assert float(y[0]) == 3.0
            del y
        assert arena.free_bytes() == before
        assert len(c._arenas) == 1


def test_model_error_carries_python_traceback(daemon, archives):
    with daemon.client() as c:
        c.load("raises", archives["raises"])
        with pytest.raises(shoal.ModelError) as e:
            c.infer("raises", torch.ones(2, 3))
        assert "bad input of shape (2, 3)" in e.value.message
        assert "raises" in e.value.message  # names the model
        assert "Traceback" in e.value.traceback and "ValueError" in e.value.traceback
        # the worker survives a Python exception
        c.load("add", archives["add"])
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0


def test_unknown_model_and_unload(daemon, archives):
    with daemon.client() as c:
        with pytest.raises(shoal.ModelNotFound, match="'ghost' is not loaded"):
            c.infer("ghost", torch.ones(1))
        c.load("add", archives["add"])
        assert [m["name"] for m in c.models()] == ["add"]
        assert c.models()[0]["ready"]
        with pytest.raises(shoal.BadRequest, match="already loaded"):
            c.load("add", archives["add"])
        c.unload("add")
        assert c.models() == []
        with pytest.raises(shoal.ModelNotFound):
            c.infer("add", torch.ones(1))
        with pytest.raises(shoal.ModelNotFound):
            c.unload("add")


def test_bad_archives_are_refused_with_clear_errors(daemon, tmp_path):
    not_zip = tmp_path / "junk.pt"
    not_zip.write_bytes(b"this is not a zip file at all")
    with daemon.client() as c:
        with pytest.raises(shoal.BadRequest, match="junk.pt: not a zip file"):
            c.load("junk", not_zip)
        with pytest.raises(shoal.Error, match="cannot read archive"):
            c.load("missing", tmp_path / "missing.pt")
        assert c.models() == []


def _rewrite(src, dst, compress_type):
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=compress_type)


def test_compressed_or_misaligned_storages_are_refused(daemon, tmp_path):
    import zipfile
    src = shoal.export(models.BigWeights(1), tmp_path / "w.pt")  # has storage records
    compressed = tmp_path / "compressed.pt"
    _rewrite(src, compressed, zipfile.ZIP_DEFLATED)
    misaligned = tmp_path / "misaligned.pt"
    _rewrite(src, misaligned, zipfile.ZIP_STORED)  # Python's zipfile does not pad to 64 bytes
    with daemon.client() as c:
        with pytest.raises(shoal.BadRequest, match=r"compressed\.pt: storage record .* is compressed"):
            c.load("w", compressed)
        with pytest.raises(shoal.BadRequest, match="not 64-byte aligned"):
            c.load("w", misaligned)
        assert c.models() == []
        c.load("w", src)  # the original is servable
        assert c.models()[0]["ready"]


def test_eight_concurrent_clients_fifty_requests_each(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
    failures = []

    def run(k):
        try:
            with daemon.client() as c:
                for i in range(50):
                    x = torch.full((64,), float(k * 1000 + i))
                    y = c.infer("add", x)
                    if not torch.equal(y, x * 2 + 1):
                        failures.append((k, i, "wrong answer"))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            failures.append((k, repr(e)))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with daemon.client() as c:
        st = c.status()
        assert st["jobs_done"] >= 400
        assert st["jobs_failed"] == 0


def test_timeout(daemon, archives):
    with daemon.client() as c:
        c.load("sleeps", archives["sleeps"])
        with pytest.raises(shoal.Timeout, match="deadline"):
            c.infer("sleeps", torch.tensor([2.0]), timeout=0.2)
        # the worker is killed after the grace period and replaced; service goes on
        assert float(c.infer("sleeps", torch.tensor([0.0]))[0]) == 0.0


def test_zero_size_outputs_round_trip_and_free_nothing(daemon, archives):
    # A model that returns an empty tensor (a detector with no detections): the result is
    # an empty tensor, and dropping it must not free anything in the arena.
    with daemon.client() as c:
        c.load("identity", archives["identity"])
        for _ in range(3):
            y = c.infer("identity", torch.ones(0, 4), timeout=30)
            assert y.shape == (0, 4) and y.dtype == torch.float32
            del y
        x = c.empty((8,))
        x.fill_(3.0)
        keep = c.empty((8,))
        keep.fill_(5.0)
        out = c.infer("identity", x, torch.ones(0), timeout=30)
        assert torch.equal(out[0], torch.full((8,), 3.0)) and out[1].numel() == 0
        del out
        assert torch.equal(keep, torch.full((8,), 5.0))
        assert torch.equal(c.infer("identity", keep, timeout=30), torch.full((8,), 5.0))


@pytest.mark.parametrize("threshold,found", [(1.01, 0), (0.0, 100)])
def test_a_detector_with_and_without_detections(daemon, tmp_path, threshold, found):
    import shoal_test_models as models
    model = models.Detector(threshold)
    image = torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(image)
    path = shoal.export(model, tmp_path / "det.pt")
    with daemon.client() as c:
        c.load("det", str(path))
        for _ in range(3):  # dropping empty results must leave the arena intact
            out = c.infer("det", image, timeout=120)
            assert set(out) == {"boxes", "labels", "scores"}
            assert out["boxes"].shape == (found, 4) and out["scores"].shape == (found,)
            assert torch.allclose(out["boxes"], expected["boxes"], atol=1e-3)
            assert torch.equal(out["labels"], expected["labels"])
            del out


@pytest.mark.parametrize("n,kind,why", [
    (300_000, 0, "output string of 300000 bytes, over the 262144 a message may hold"),
    (5_000, 1, "output list of 5000 items, over the 4096 a message may hold"),
    (4_000, 2, "besides its tensors, over the limit of 983040"),  # 4000 x 250 bytes: too much in all
])
def test_an_output_too_large_for_a_message_is_a_model_error_and_the_worker_goes_on(daemon, tmp_path, n, kind, why):
    archive = shoal.export(models.ReturnsValues(), tmp_path / "values.pt")
    with daemon.client() as c:
        c.load("values", archive)
        assert c.infer("values", torch.tensor([200_000.0, 0.0])) == "y" * 200_000  # these fit
        assert c.infer("values", torch.tensor([4096.0, 1.0])) == list(range(4096))
        assert len(c.infer("values", torch.tensor([3000.0, 2.0]))) == 3000
        pids = daemon.worker_pids()
        with pytest.raises(shoal.ModelError) as e:
            c.infer("values", torch.tensor([float(n), float(kind)]))
        assert "model 'values'" in e.value.message and why in e.value.message
        assert "as tensors (they travel in shared memory" in e.value.message
        assert daemon.worker_pids() == pids  # no worker was cut off or replaced
        assert c.infer("values", torch.tensor([3.0, 0.0])) == "yyy"
