"""Memory ownership (issue 11): every block of shared memory has one owner, and only the
owner runs its allocator, with bookkeeping in its own memory. A client owns its input
arenas; a worker owns the output arenas it makes for each connection and frees only
blocks it handed out. Each test runs an attacker (a real client on a real socket) while a
victim client must keep being served with correct, uncorrupted results; afterwards no
worker died and shoald's and the workers' descriptors and output memory are back to
where they were."""
import os
import threading
import time

import msgpack
import pytest
import torch

import shoal
from conftest import settle, worker_vm_size_mb


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Victim:
    """A client that keeps inferring while an attack runs, holds its last results and
    checks that they keep their values (nobody else may free or write its blocks)."""

    def __init__(self, d):
        self.c = d.client(arena_size=4 << 20)
        self.stop = threading.Event()
        self.failures = []
        self.served = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        held = []
        x = self.c.empty((1024,))
        i = 0
        while not self.stop.is_set():
            i += 1
            x.fill_(float(i % 100))
            try:
                y = self.c.infer("add", x, timeout=60)
            except shoal.Error as e:
                self.failures.append(repr(e))
                continue
            if not torch.all(y == 2 * (i % 100) + 1):
                self.failures.append(f"round {i}: wrong answer")
            held = (held + [(i % 100, y)])[-8:]
            for k, h in held:
                if not torch.all(h == 2 * k + 1):
                    self.failures.append(f"round {i}: a held result changed")
            self.served += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(120)
        self.c.close()
        assert not self.thread.is_alive()
        assert self.failures == [], self.failures[:5]
        assert self.served > 0


def loaded(make_daemon, archives, args=(), models=("add", "identity")):
    d = make_daemon(workers=1, args=args)
    with d.client() as c:
        for m in models:
            c.load(m, archives[m])
        settle(lambda: (c.status()["workers"][0]["pid"] > 0, "worker not forked"))
    return d


def status(d):
    with d.client() as c:
        return c.status()


def baseline(d):
    """(shoald fds, worker fds, worker output bytes) with no client holding anything."""
    st = status(d)
    w = st["workers"][0]
    return fd_count(d.proc.pid), fd_count(w["pid"]), w["output_bytes"], w["pid"]


def assert_back_to(d, base):
    shoald_fds, worker_fds, _, pid = base

    def check():
        st = status(d)
        w = st["workers"][0]
        now = (fd_count(d.proc.pid), fd_count(w["pid"]), w["output_bytes"], w["output_arenas"])
        # The status connection itself holds one descriptor in shoald.
        ok = w["pid"] == pid and now[0] <= shoald_fds + 1 and now[1] <= worker_fds and now[2] == 0 and now[3] == 0
        return ok, f"shoald fds {shoald_fds} -> {now[0]}, worker fds {worker_fds} -> {now[1]}, " \
                   f"output bytes {now[2]}, output arenas {now[3]}, worker pid {pid} -> {w['pid']}"
    settle(check)
    assert status(d)["worker_restarts"] == 0


def test_scribbled_arenas_cannot_crash_a_worker_or_corrupt_another_client(make_daemon, archives):
    d = loaded(make_daemon, archives)
    base = baseline(d)
    rss_before = rss_kb(d.proc.pid)
    with Victim(d):
        for i in range(40):
            with d.client(arena_size=1 << 20) as a:
                x = a.empty((256,))
                x.fill_(1.0)
                y = a.infer("add", x, timeout=30)
                # Every byte of its own arena, where the old allocator's header and mutex
                # were too, and every byte of the output arena the worker made for it.
                for arena in list(a._arenas.values()) + list(a._conn.out_arenas.values()):
                    view = memoryview(arena).cast("B")
                    view[:] = os.urandom(len(view)) if i % 2 else b"\xff" * len(view)
                # The worker serves it on: its bookkeeping is out of the attacker's reach.
                assert float(a.infer("add", torch.ones(256), timeout=30)[0]) == 3.0
                a.infer("identity", x, timeout=30)
                del y
                z = a.empty((1024,))  # its own allocator still works on the scribbled arena
                z.fill_(2.0)
                assert torch.equal(a.infer("add", z, timeout=30), torch.full((1024,), 5.0))
    assert_back_to(d, base)  # 0 worker deaths, descriptors and output memory back
    assert rss_kb(d.proc.pid) - rss_before < 16 << 10


def test_a_timed_out_job_that_returns_its_input_never_frees_the_clients_block(make_daemon, archives):
    d = loaded(make_daemon, archives, models=("add", "sleeps"))
    base = baseline(d)
    with Victim(d):
        with d.client(arena_size=4 << 20) as c:
            x = c.empty((1024,))
            x.fill_(0.5)  # the model sleeps 0.5 s, then returns x itself
            with pytest.raises(shoal.Timeout):
                c.infer("sleeps", x, timeout=0.1)
            time.sleep(1.0)  # its late answer reaches shoald, which gives back what the worker owns only
            c.ping()
            fresh = []
            for _ in range(20):  # would land on x's block had anybody freed it
                t = c.empty((1024,))
                t.fill_(7.0)
                fresh.append(t)
            assert torch.all(x == 0.5)
    assert_back_to(d, base)


def test_a_timed_out_jobs_new_outputs_are_freed_by_their_owner(make_daemon, archives, tmp_path):
    import shoal_test_models as models
    d = loaded(make_daemon, archives)
    with d.client() as c:
        c.load("sleeps_adds", shoal.export(models.SleepsThenAdds(), tmp_path / "sleeps_adds.pt"))
    base = baseline(d)
    with Victim(d):
        with d.client(arena_size=4 << 20) as c:
            with pytest.raises(shoal.Timeout):
                c.infer("sleeps_adds", torch.full((256 * 1024,), 0.5), timeout=0.1)
            time.sleep(1.0)
            c.ping()
    assert_back_to(d, base)


def _send(client, msg):
    """A raw frame on `client`'s connection, through its writer (which keeps frames whole)."""
    body = msgpack.packb(msg)
    client._writer.send(len(body).to_bytes(4, "little") + body)


def test_block_0_and_forged_blocks_in_descriptors_and_releases_are_harmless(make_daemon, archives):
    d = loaded(make_daemon, archives)
    base = baseline(d)
    with d.client(arena_size=4 << 20) as victim:
        held = [victim.infer("add", torch.full((4096,), float(k))) for k in range(4)]
        with Victim(d):
            with d.client(arena_size=1 << 20) as a:
                aid = next(iter(a._arenas))
                for block in (0, 64, 128):  # block 0: where the old allocator header was
                    desc = {"arena": aid, "block": block, "offset": 128, "dtype": "float32", "shape": [4],
                            "strides": [1]}
                    a._call({"op": "infer", "model": "identity", "inputs": [desc]})
                    a._call({"op": "infer", "model": "add", "inputs": [desc]})
                y = a.infer("add", torch.ones(16))
                # Releases of offsets nobody handed out, twice over, in every arena id there
                # is (the victim's output arenas included: their ids are small numbers).
                for arena in range(1, 64):
                    for block in (0, 64, 128, 4096, 1 << 20, 1 << 62):
                        _send(a, {"v": 1, "op": "release", "arena": arena, "blocks": [block, block]})
                _send(a, {"v": 1, "op": "release", "arena": "x", "blocks": 7})
                _send(a, {"v": 1, "op": "release", "arena": 1})
                a.ping()
                del y
                assert float(a.infer("add", torch.ones(16))[0]) == 3.0
        # The victim's results were never freed: new results do not land on them.
        more = [victim.infer("add", torch.full((4096,), 50.0)) for _ in range(8)]
        for k, h in enumerate(held):
            assert torch.all(h == 2 * k + 1)
        assert all(torch.all(m == 101.0) for m in more)
        del held, more
    assert_back_to(d, base)


def test_outputs_are_freed_exactly_once_by_their_owner(make_daemon, archives):
    d = loaded(make_daemon, archives)
    base = baseline(d)
    with d.client() as c:
        ys = [c.infer("add", torch.ones(64 * 1024)) for _ in range(10)]  # 256 KiB each
        c.ping()
        w = status(d)["workers"][0]
        assert w["output_bytes"] >= 10 * 256 * 1024 and w["output_arenas"] == 1
        same = ys[3]
        view = same[10:20]
        del ys, same
        c.ping()  # releases travel before the next request
        settle(lambda: (status(d)["workers"][0]["output_bytes"] == 256 * 1024, "one result is still held"))
        assert torch.all(view == 3.0)  # a view keeps its block
        del view
        c.ping()
    assert_back_to(d, base)


def test_one_client_cannot_exhaust_a_workers_descriptors(make_daemon, archives):
    d = loaded(make_daemon, archives, args=["--worker-arenas", "16", "--worker-open-files", "256"])
    base = baseline(d)
    worker = base[3]
    peak = 0
    with Victim(d):
        for _ in range(8):  # 8 connections x 63 tiny arenas (and its own), every one read by a job
            with d.client(arena_size=4096) as a:
                for i in range(63):
                    arena = shoal._native.Arena.create(4096, "tiny")
                    aid = a._call({"op": "register_arena"}, fds=[arena.fd])["arena"]
                    a._arenas[aid] = arena
                    desc = {"arena": aid, "block": 64, "offset": 64, "dtype": "float32", "shape": [4],
                            "strides": [1]}
                    a._call({"op": "infer", "model": "identity", "inputs": [desc]})
                    if i % 16 == 0:
                        peak = max(peak, fd_count(worker))
    # 16 client arenas (a descriptor each for the Python and TorchScript runners) at most.
    assert peak <= base[1] + 2 * 16 + 8, f"worker fds {base[1]} -> {peak}"
    assert_back_to(d, base)


def test_sparse_arenas_of_one_client_do_not_fail_another_clients_jobs(make_daemon, archives):
    limit = worker_vm_size_mb(make_daemon) + 1024
    d = loaded(make_daemon, archives, args=["--worker-address-space-mb", str(limit)])
    base = baseline(d)
    with d.client(arena_size=64 << 20) as victim:
        assert float(victim.infer("add", torch.zeros(1))[0]) == 1.0
        with d.client(arena_size=4096) as a:
            for _ in range(6):  # 6 x 384 MiB of sparse arenas: more than the worker can map at once
                arena = shoal._native.Arena.create(384 << 20, "sparse")
                aid = a._call({"op": "register_arena"}, fds=[arena.fd])["arena"]
                a._arenas[aid] = arena
                desc = {"arena": aid, "block": 64, "offset": 64, "dtype": "float32", "shape": [4], "strides": [1]}
                try:
                    a._call({"op": "infer", "model": "identity", "inputs": [desc]})
                except shoal.Unavailable:
                    pass  # its own job may not fit; others' must
                x = victim.empty((1024,))
                x.fill_(1.0)
                assert torch.equal(victim.infer("add", x, timeout=30), torch.full((1024,), 3.0))
    assert_back_to(d, base)


@pytest.mark.parametrize("engine", ["python", "torchscript"])
def test_idle_client_arenas_are_unmapped_when_a_mapping_fails(make_daemon, tmp_path, engine):
    # Three clients with 512 MiB arenas each; the worker's address space has room for two
    # of them beside its own. Every client is served in turn, again and again: a runner
    # that kept idle mappings could not map the third (UNAVAILABLE). Both engines follow
    # one policy (shm/client_arena_maps.h).
    import shoal_test_models as models
    limit = worker_vm_size_mb(make_daemon) + 1500
    if engine == "python":
        path = shoal.export(models.AddConst(1.0), tmp_path / "add.pt")
    else:
        path = tmp_path / "add_ts.pt"
        torch.jit.save(torch.jit.script(models.AddConst(1.0)), str(path))
    d = make_daemon(workers=1, args=["--worker-address-space-mb", str(limit), "--output-arena-mb", "1"])
    with d.client() as admin:
        admin.load("add", path)
        assert torch.equal(admin.infer("add", torch.ones(4)), torch.full((4,), 3.0))
        pid = d.worker_pids()[0]
        clients = [d.client(arena_size=512 << 20) for _ in range(3)]
        try:
            for rnd in range(3):
                for k, c in enumerate(clients):
                    x = torch.full((1024,), float(rnd * 10 + k))
                    assert torch.equal(c.infer("add", x, timeout=30), x * 2 + 1), (rnd, k)
        finally:
            for c in clients:
                c.close()
        st = admin.status()
        assert st["worker_restarts"] == 0 and st["workers"][0]["pid"] == pid


def test_a_client_that_drops_its_results_and_goes_quiet_keeps_nothing_in_the_worker(make_daemon, archives):
    # Releases used to wait for the client's next request: a client that dropped a result
    # and then sent nothing kept its block in the worker until it hung up.
    d = loaded(make_daemon, archives)
    with d.client() as quiet, d.client() as watcher:
        y = quiet.infer("add", torch.ones(1 << 16))  # 256 KiB in the worker's output arena
        assert watcher.status()["workers"][0]["output_bytes"] >= 1 << 18
        assert float(y[0]) == 3.0
        del y  # and `quiet` sends nothing more
        settle(lambda: ((n := watcher.status()["workers"][0]["output_bytes"]) == 0, f"output bytes {n}"))
        assert torch.equal(quiet.infer("add", torch.zeros(4)), torch.ones(4))  # still usable
