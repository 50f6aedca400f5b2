"""A time-bounded fuzzer on shoald's socket: random and mutated frames, with and without
file descriptors, from many connections, while a canary client checks that every one of
its answers is right. shoald's descriptors and memory return to their baseline after.

SHOAL_FUZZ_SECONDS sets how long (60 in the suite; longer runs and their figures are in
tests/fuzz/README.md)."""
import os
import random
import socket
import struct
import threading
import time

import msgpack
import torch

import shoal
from wire import frame

SECONDS = float(os.environ.get("SHOAL_FUZZ_SECONDS", "60"))


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def some_fds(rng):
    """Descriptors of every kind a client could attach: arenas good and bad, and junk."""
    fds = []
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 5, 9])):
        kind = rng.randrange(5)
        if kind == 0:  # a proper sealed arena, of a random size
            fd = os.memfd_create("fuzz", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
            os.ftruncate(fd, rng.choice([1, 64, 4096, 1 << 20]))
            import fcntl
            fcntl.fcntl(fd, 1033, 0x0002 | 0x0004)  # F_ADD_SEALS: SHRINK | GROW
        elif kind == 1:  # an unsealed memfd
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
            os.ftruncate(fd, 4096)
        elif kind == 2:
            fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        elif kind == 3:
            r, w = os.pipe()
            os.close(w)
            fd = r
        else:
            a, b = socket.socketpair()
            fd = a.detach()
            b.close()
        fds.append(fd)
    return fds


def valid_messages(rng, arena_ids):
    arena = rng.choice(arena_ids + [0, 1, 2 ** 63])
    shape = [rng.choice([0, 1, 3, 2 ** 20, 2 ** 48]) for _ in range(rng.randrange(0, 4))]
    desc = {"arena": arena, "block": rng.choice([0, 8, 4096, 2 ** 40]), "offset": rng.choice([0, 8, 64, 2 ** 40]),
            "dtype": rng.choice(["float32", "int8", "complex128", "nope", 7]), "shape": shape,
            "strides": [rng.choice([0, 1, 4, 2 ** 47]) for _ in shape]}
    return [
        {"v": 1, "op": "ping", "id": rng.randrange(1 << 32)},
        {"v": 1, "op": "status", "id": 1},
        {"v": 1, "op": "models", "id": 2},
        {"v": 1, "op": "health", "id": 3},
        {"v": 1, "op": "register_arena", "id": 4},
        {"v": 1, "op": "infer", "id": 5, "model": rng.choice(["add", "identity", "nope", ""]),
         "inputs": [desc] * rng.randrange(0, 3), "timeout_ms": rng.choice([None, 0, 1, 100, 2 ** 63])},
        {"v": 1, "op": "load", "id": 6, "name": "x", "path": rng.choice(["/etc/passwd", "rel", "/nope"])},
        {"v": 1, "op": "unload", "id": 7, "name": rng.choice(["x", "", "add:9"])},  # runs as root: an admin
        {"v": rng.choice([0, 2, "1", None]), "op": "ping", "id": 8},
    ]


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(4)
        if op == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1 and data:
            del data[rng.randrange(len(data)):]
        elif op == 2:
            data[rng.randrange(len(data) + 1):0] = os.urandom(rng.randrange(1, 32))
        else:
            data += os.urandom(rng.randrange(1, 16))
    return bytes(data)


def one_attack(rng, path, arena_ids):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        for _ in range(rng.randrange(1, 12)):
            choice = rng.randrange(5)
            if choice == 0:
                data = os.urandom(rng.randrange(1, 64))
            elif choice == 1:
                data = struct.pack("<I", rng.choice([0, 1, 7, 1 << 20, (1 << 20) + 1, 2 ** 32 - 1])) + os.urandom(8)
            else:
                msg = rng.choice(valid_messages(rng, arena_ids))
                data = frame(msgpack.packb(msg))
                if choice == 2:
                    data = mutate(rng, data)
            fds = some_fds(rng)
            try:
                if fds:
                    s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
                else:
                    s.sendall(data)
            finally:
                for fd in fds:
                    os.close(fd)
            if rng.random() < 0.5:
                try:
                    s.recv(1 << 16)
                except (socket.timeout, OSError):
                    pass
    except OSError:
        pass  # shoald hung up on us: allowed
    finally:
        s.close()


def scribbled_arena_attack(rng, path):
    """Registers an arena, writes random bytes all over it (where an allocator's state
    would be, too), and asks for jobs whose inputs and outputs live in it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        size = rng.choice([4096, 1 << 16, 1 << 20])
        fd = os.memfd_create("scribbled", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        import fcntl
        fcntl.fcntl(fd, 1033, 0x0002 | 0x0004)
        os.pwrite(fd, os.urandom(size), 0)
        s.sendmsg([frame(msgpack.packb({"v": 1, "op": "register_arena", "id": 1}))],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        os.close(fd)
        from wire import read_reply
        reply = read_reply(s)
        if not reply or not reply.get("ok"):
            return
        arena = reply["arena"]
        for i in range(rng.randrange(1, 5)):
            off = rng.randrange(0, size - 64) & ~7
            desc = {"arena": arena, "block": rng.choice([0, off]), "offset": off, "dtype": "float32",
                    "shape": [rng.randrange(0, 16)], "strides": [1]}
            s.sendall(frame(msgpack.packb({"v": 1, "op": "infer", "id": 2 + i, "model": "add", "inputs": [desc],
                                           "timeout_ms": 5000})))
            read_reply(s)
    except OSError:
        pass
    finally:
        s.close()


def test_fuzzed_frames_never_hurt_shoald_or_a_canary(make_daemon, archives):
    d = make_daemon(workers=2, args=["--frame-timeout-ms", "500"])
    pid = d.proc.pid
    with d.client() as c:
        c.load("add", archives["add"])
        c.load("identity", archives["identity"])
    errors, answered = [], [0]
    stop = threading.Event()

    def canary():
        rng = random.Random(1)
        with d.client() as c:
            while not stop.is_set():
                x = torch.tensor([rng.uniform(-1e3, 1e3) for _ in range(rng.randrange(1, 64))])
                try:
                    y = c.infer("add", x, timeout=30, retries=1)
                    if not torch.equal(y, x * 2 + 1):
                        errors.append(f"wrong answer for {x.tolist()[:4]}...")
                    answered[0] += 1
                except shoal.Error as e:
                    errors.append(f"{type(e).__name__}: {e.message}")
    time.sleep(0.5)
    base_fds, base_rss = fd_count(pid), rss_mb(pid)
    t = threading.Thread(target=canary)
    t.start()
    rng = random.Random(int(os.environ.get("SHOAL_FUZZ_SEED", "0")) or None)
    with d.client() as c:
        arena_ids = sorted(c._arenas) or [1]
    attacks = 0
    until = time.monotonic() + SECONDS
    while time.monotonic() < until:
        if rng.random() < 0.2:
            scribbled_arena_attack(rng, d.socket)
        else:
            one_attack(rng, d.socket, arena_ids)
        attacks += 1
        assert d.proc.poll() is None, f"shoald died after {attacks} attacks"
    stop.set()
    t.join(60)
    assert not errors, errors[:5]
    assert answered[0] > 0
    # Everything the attacks opened is closed again (half frames time out after 500 ms).
    deadline = time.monotonic() + 10
    while fd_count(pid) > base_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fd_count(pid) <= base_fds, f"{fd_count(pid)} fds, {base_fds} before {attacks} attacks"
    assert rss_mb(pid) < base_rss + 64, f"RSS {rss_mb(pid):.0f} MiB, {base_rss:.0f} MiB before"
    with d.client() as c:
        assert c.status()["clients"] == 1
        assert torch.equal(c.infer("add", torch.zeros(2)), torch.ones(2))
        restarts = c.status()["worker_restarts"]
    print(f"\nfuzz: {attacks} attack connections in {SECONDS:.0f} s, canary {answered[0]} right answers, "
          f"shoald fds {base_fds} -> {fd_count(pid)}, RSS {base_rss:.0f} -> {rss_mb(pid):.0f} MiB, "
          f"worker restarts {restarts}")
