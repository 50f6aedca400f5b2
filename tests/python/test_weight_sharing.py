"""Weights are mapped from the archive, not copied: two workers loading a 200 MB model
must not add 400 MB of private memory. Checked through /proc, not by trusting the code."""
import torch

import shoal
import shoal_test_models as models
from conftest import running_models


def rollup(pid):
    """kB fields of /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def test_200mb_of_weights_in_two_workers_is_shared(make_daemon, tmp_path, archives):
    net = models.BigWeights(200)
    path = shoal.export(net, tmp_path / "big.pt")
    x = torch.randn(1, net.n)
    with torch.no_grad():
        want = net(x)
    weights_mb = sum(p.numel() * 4 for p in net.parameters()) / 2**20
    assert weights_mb > 190
    del net

    d = make_daemon(workers=2)
    with d.client() as c:  # a first load waits until both workers have torch imported
        c.load("add", archives["add"])
    pids = d.worker_pids()  # waits until the zygote reported each pid
    before = {p: rollup(p) for p in pids}
    with d.client() as c:
        c.load("big", path)
        # run on both workers so that every weight page is touched in each
        import threading
        outs = []
        ts = [threading.Thread(target=lambda: outs.append(d.client().infer("big", x))) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(outs) == 6
        for y in outs:
            assert float((y - want).abs().max()) <= 1e-4
        st = c.status()
        assert [running_models(w) for w in st["workers"]] == [[], []]
    after = {p: rollup(p) for p in pids}

    total_pss_mb = 0
    for p in pids:
        anon_mb = (after[p]["Anonymous"] - before[p]["Anonymous"]) / 1024
        private_dirty_mb = (after[p]["Private_Dirty"] - before[p]["Private_Dirty"]) / 1024
        pss_mb = (after[p]["Pss"] - before[p]["Pss"]) / 1024
        total_pss_mb += pss_mb
        print(f"worker {p}: +{anon_mb:.0f} MB anonymous, +{private_dirty_mb:.0f} MB private dirty, "
              f"+{pss_mb:.0f} MB Pss")
        # a copy of the weights would add ~200 MB of anonymous, private memory per worker
    for p in pids:
        assert (after[p]["Anonymous"] - before[p]["Anonymous"]) / 1024 < 0.25 * weights_mb
        assert (after[p]["Private_Dirty"] - before[p]["Private_Dirty"]) / 1024 < 0.25 * weights_mb
    # together the workers account for the weights about once, not twice
    assert total_pss_mb < 1.4 * weights_mb
