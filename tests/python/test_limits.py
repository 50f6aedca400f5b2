"""Bounded everything: connections, half-sent messages, unread replies, and running out
of descriptors. A victim client must keep being served while an attacker holds them."""
import resource
import struct
import time

import pytest
import torch

import shoal
from wire import frame, raw, read_reply
from conftest import NOBODY, run_as


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_connections_beyond_max_clients_are_refused(make_daemon):
    d = make_daemon(workers=1, args=["--max-clients", "3"])
    held = [d.client() for _ in range(3)]
    with pytest.raises(shoal.Overloaded, match="max_clients"):
        shoal.Client(d.socket).status()
    held.pop().close()
    time.sleep(0.1)
    with d.client() as c:
        assert c.status()["clients"] == 3
    for c in held:
        c.close()


def test_a_half_sent_message_is_dropped_after_frame_timeout(make_daemon, archives):
    d = make_daemon(workers=1, args=["--frame-timeout-ms", "300"])
    attackers = []
    for _ in range(20):
        s = raw(d.socket)
        s.sendall(struct.pack("<I", 1 << 20) + b"x" * ((1 << 20) - 1))  # one byte short
        attackers.append(s)
    with d.client() as victim:
        victim.load("add", archives["add"])
        assert torch.equal(victim.infer("add", torch.zeros(1), timeout=30), torch.ones(1))
        time.sleep(1.0)
        for s in attackers:
            s.settimeout(10)
            reply = read_reply(s)
            assert reply is not None and reply["error"]["code"] == "BAD_REQUEST"
            assert "then nothing for 300 ms" in reply["error"]["message"]
            assert read_reply(s) is None  # then closed
            s.close()
        assert victim.status()["clients"] == 1


def test_a_client_that_never_reads_its_replies_cannot_grow_shoald(make_daemon):
    d = make_daemon(workers=1)
    with d.client() as victim:
        victim.status()
        before = rss_kb(d.proc.pid)
        hogs = []
        request = frame({"v": 1, "op": "status", "id": 1})
        for _ in range(4):
            s = raw(d.socket)
            s.setblocking(False)
            hogs.append(s)
        sent = 0
        until = time.monotonic() + 2.0
        while time.monotonic() < until:  # status requests, never a read, for 2 s
            for s in hogs:
                try:
                    sent += s.send(request * 64)
                except BlockingIOError:
                    pass  # shoald stopped reading: the socket buffers are full
            time.sleep(0.001)
        deadline = time.monotonic() + 30
        while victim.status()["clients"] != 5:  # the victim is served meanwhile
            assert time.monotonic() < deadline
            time.sleep(0.05)
        grown_mb = (rss_kb(d.proc.pid) - before) / 1024
        assert grown_mb < 64, f"shoald grew by {grown_mb:.0f} MiB"
        for s in hogs:
            s.close()


def test_running_out_of_descriptors_backs_off_instead_of_spinning(make_daemon, archives):
    def limit():  # shoald's own soft limit; workers raise theirs (up to the hard limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    d = make_daemon(workers=1, preexec_fn=limit)
    with d.client() as victim:
        victim.load("add", archives["add"])
        held = []
        for _ in range(60):
            try:
                held.append(raw(d.socket))  # the backlog takes them; shoald cannot accept all
            except OSError:
                break
        time.sleep(2.0)
        log = open(d.log_path).read()
        assert log.count("accept:") <= 3, f"{log.count('accept:')} accept warnings in 2 s"
        # The established victim is served meanwhile, and newcomers once descriptors free up.
        assert torch.equal(victim.infer("add", torch.zeros(1), timeout=30), torch.ones(1))
        for s in held:
            s.close()
    time.sleep(0.5)
    with d.client() as late:
        assert late.status()["pid"] == d.proc.pid


def test_one_clients_flood_cannot_starve_another_client(public_daemon, archives):
    # A user floods a model from 8 connections, keeping its queue full; another user's
    # jobs are still admitted and run (fair share of the queue and of the slots).
    d = public_daemon(workers=1, args=["--max-queue", "4"])
    with d.client() as victim:
        victim.load("sleeps", archives["sleeps"])
        flood = run_as(NOBODY, d.socket, """
import threading, time
stop = time.monotonic() + 8
def hammer():
    with shoal.Client(c.socket_path) as mine:
        while time.monotonic() < stop:
            try:
                mine.infer("sleeps", torch.tensor([0.05]), timeout=30)
            except shoal.Overloaded:
                pass
threads = [threading.Thread(target=hammer) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print("done")
""", background=True)
        time.sleep(2.0)  # the flood fills the queue
        for _ in range(10):
            assert torch.equal(victim.infer("sleeps", torch.tensor([0.0]), timeout=30), torch.tensor([0.0]))
        out, err = flood.communicate(timeout=60)
        assert "done" in out, err
