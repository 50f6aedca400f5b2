"""Dynamic batching (docs/architecture.md, "Dynamic batching"): shoald runs queued jobs of
one model whose inputs agree on all but dim 0 as one run, and answers each on its own."""
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import shoal
from conftest import BUILD, MODELS

import shoal_test_models as models

HOLD_US = 5_000_000  # long enough that concurrent jobs always meet in one batch


@pytest.fixture(scope="module")
def rows_archives(tmp_path_factory):
    out = tmp_path_factory.mktemp("batching")
    return {"rows": shoal.export(models.Rows(), out / "rows.pt"),
            "total": shoal.export(models.RowsAndTotal(), out / "total.pt"),
            "manifest": shoal.export(models.Rows(), out / "rows_manifest.pt",
                                     batching={"max_batch": 4, "max_delay_us": HOLD_US}),
            "add": shoal.export(models.AddConst(1.0), out / "add.pt")}


def concurrently(socket, model, inputs, timeout=60):
    """Each input sent at once by its own client (connection); results or exceptions, in order."""
    results = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def run(i):
        try:
            with shoal.Client(socket) as c:
                start.wait()
                out = c.infer(model, inputs[i], timeout=timeout)
                results[i] = {k: v for k, v in out.items()} if isinstance(out, dict) else out
                results[i] = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                                          results[i])
        except Exception as e:  # noqa: BLE001 - the test looks at what each got
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def model_entry(c, name):
    return next(m for m in c.models() if m["name"] == name)


def same(a, b):
    return torch.equal(a["y"], b["y"]) and all(torch.equal(x, y) for x, y in zip(a["pair"], b["pair"]))


def test_batched_results_equal_unbatched_ones(make_daemon, rows_archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("plain", rows_archives["rows"])
        c.load("batched", rows_archives["rows"], max_batch=8, max_delay_us=HOLD_US)
        entry = model_entry(c, "batched")
        assert entry["batching"] == {"max_batch": 8, "max_delay_us": HOLD_US, "preferred_batch_sizes": []}
        assert "batching" not in model_entry(c, "plain")
        inputs = [torch.arange(4.0 * n).reshape(n, 4) * (i + 1) for i, n in enumerate([1, 2, 1, 3, 1, 1, 2, 1])]
        got = concurrently(d.socket, "batched", inputs)
        for x, out in zip(inputs, got):
            assert not isinstance(out, Exception), out
            assert same(out, c.infer("plain", x))
            assert same(out, models.Rows()(x))
        entry = model_entry(c, "batched")
        assert entry["batches"] >= 1 and entry["batched_jobs"] >= 2, entry
        assert model_entry(c, "plain")["batches"] == 0


def test_the_manifest_batches_and_the_load_overrides_it(make_daemon, rows_archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("m", rows_archives["manifest"])
        assert model_entry(c, "m")["batching"]["max_batch"] == 4
        got = concurrently(d.socket, "m", [torch.ones(1, 3) * i for i in range(4)])
        assert all(not isinstance(g, Exception) for g in got), got
        assert model_entry(c, "m")["batched_jobs"] >= 2
        c.load("off", rows_archives["manifest"], max_batch=1)
        assert "batching" not in model_entry(c, "off")


@pytest.mark.parametrize("options, message", [
    ({"max_batch": 65}, "more than 64"),
    ({"max_batch": 4, "max_delay_us": 20_000_000}, "more than 10000000"),
    ({"max_delay_us": 100}, "only with max_batch > 1"),
    ({"max_batch": 4, "preferred_batch_sizes": [4, 2]}, "must ascend"),
    ({"max_batch": 4, "preferred_batch_sizes": [8]}, "must ascend"),
    ({"max_batch": -1}, "whole number"),
])
def test_bad_batching_options_are_bad_requests(daemon, rows_archives, options, message):
    with daemon.client() as c:
        with pytest.raises(shoal.BadRequest, match=message):
            c.load("m", rows_archives["rows"], **options)
        assert "m" not in [m["name"] for m in c.models()]


def test_mixed_shapes_and_dtypes_are_never_batched_together(make_daemon, rows_archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("b", rows_archives["rows"], max_batch=4, max_delay_us=HOLD_US)
        inputs = ([torch.ones(1, 4) * i for i in range(2)] + [torch.ones(1, 5) * i for i in range(2)] +
                  [torch.ones(1, 4, dtype=torch.float64) * i for i in range(2)])
        got = concurrently(d.socket, "b", inputs)
        for x, out in zip(inputs, got):
            assert not isinstance(out, Exception), out
            assert out["y"].dtype == x.dtype and same(out, models.Rows()(x))


def test_a_job_whose_deadline_would_pass_waiting_is_not_held(make_daemon, rows_archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("b", rows_archives["rows"], max_batch=8, max_delay_us=10_000_000)
        # Alone, it would wait 10 s for company; its deadline is 2 s away, so it goes now.
        out = c.infer("b", torch.ones(1, 4), timeout=2)
        assert same(out, models.Rows()(torch.ones(1, 4)))


def test_a_model_error_in_a_batch_reaches_every_member(make_daemon, rows_archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("b", rows_archives["rows"], max_batch=4, max_delay_us=HOLD_US)
        inputs = [torch.ones(1, 3), torch.tensor([[-2.0, 0, 0]]), torch.ones(2, 3), torch.zeros(1, 3)]
        got = concurrently(d.socket, "b", inputs)
        for g in got:
            assert isinstance(g, shoal.ModelError) and "a row asked this model to fail" in str(g), got
            assert "in a batch of 4 jobs" in str(g)
        c.load("t", rows_archives["total"], max_batch=4, max_delay_us=HOLD_US)
        got = concurrently(d.socket, "t", [torch.ones(1, 3) * i for i in range(4)])
        for g in got:
            assert isinstance(g, shoal.ModelError) and "cannot be batched" in str(g), got
            assert "not the batch's 4 rows along dim 0" in str(g)
        # Alone, the same model runs.
        c.load("t1", rows_archives["total"])
        assert torch.equal(c.infer("t1", torch.ones(1, 3))[1], torch.tensor(3.0))


def test_a_crash_in_a_batch_answers_every_member_and_others_are_served(make_daemon, rows_archives):
    d = make_daemon(workers=2)
    with d.client() as c:
        c.load("b", rows_archives["rows"], max_batch=4, max_delay_us=HOLD_US)
        c.load("add", rows_archives["add"])
        served, stop = [], threading.Event()

        def victim():  # another client of another model, all along
            with d.client() as v:
                while not stop.is_set():
                    served.append(torch.equal(v.infer("add", torch.zeros(2), timeout=60, retries=1), torch.ones(2)))
        t = threading.Thread(target=victim)
        t.start()
        try:
            inputs = [torch.ones(1, 3), torch.tensor([[-1.0, 0, 0]]), torch.ones(2, 3), torch.zeros(1, 3)]
            got = concurrently(d.socket, "b", inputs)
            for g in got:
                assert isinstance(g, shoal.WorkerCrashed) and "in a batch of 4 jobs" in str(g), got
            before = len(served)
            while len(served) < before + 5:
                assert t.is_alive()
                time.sleep(0.01)
        finally:
            stop.set()
            t.join()
        assert served and all(served)
        # The model still batches on the replacement.
        got = concurrently(d.socket, "b", [torch.ones(1, 3) * i for i in range(4)])
        assert all(not isinstance(g, Exception) for g in got), got


def test_a_caller_that_hangs_up_does_not_hurt_the_others_in_its_batch(make_daemon, rows_archives):
    d = make_daemon(workers=1)
    with d.client() as c:
        c.load("b", rows_archives["rows"], max_batch=4, max_delay_us=HOLD_US)
        # The batch sleeps a second (a row of -4); one member's process is killed meanwhile.
        code = ("import sys, torch, shoal\n"
                "c = shoal.Client(sys.argv[1])\n"
                "c.infer('b', torch.ones(1, 3) * 7, timeout=60)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(BUILD, "python"), MODELS]))
        doomed = subprocess.Popen([sys.executable, "-c", code, d.socket], env=env)
        while model_entry(c, "b")["queued"] == 0:  # its job waits for company
            assert doomed.poll() is None
            time.sleep(0.01)
        results = []

        def others():
            results.extend(concurrently(d.socket, "b", [torch.tensor([[-4.0, 1, 1]]), torch.ones(2, 3),
                                                        torch.zeros(1, 3)]))
        t = threading.Thread(target=others)
        t.start()
        while model_entry(c, "b")["batches"] == 0:
            assert t.is_alive() or results
            time.sleep(0.01)
        doomed.kill()
        doomed.wait()
        t.join()
        assert len(results) == 3
        for x, out in zip([torch.tensor([[-4.0, 1, 1]]), torch.ones(2, 3), torch.zeros(1, 3)], results):
            assert not isinstance(out, Exception), out
            assert same(out, models.Rows()(x)) if x[0, 0] != -4 else out["y"].shape == (1, 3)
        assert model_entry(c, "b")["batched_jobs"] == 4
        assert c.infer("b", torch.ones(1, 3))["y"].shape == (1, 3)
