"""Malformed input from a client gets BAD_REQUEST and never hurts the daemon or others."""
import os
import socket
import struct

import msgpack
import pytest
import torch

import shoal
import wire
from wire import frame, read_reply


def raw(daemon):
    return wire.raw(daemon.socket)


def assert_serving(daemon, archives):
    with daemon.client() as c:
        if "add" not in [m["name"] for m in c.models()]:
            c.load("add", archives["add"])
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0


@pytest.mark.parametrize("body,needle", [
    (b"\xc1\xc1\xc1 garbage", "not valid MessagePack"),
    (msgpack.packb({"v": 1, "op": "infer", "id": 1, "model": "add", "inputs": [1, 2]})[:-3],
     "not valid MessagePack"),  # truncated inside the message
    (msgpack.packb([1, 2, 3]), "not a map"),
    (msgpack.packb({"v": 99, "op": "ping", "id": 1}), "protocol version"),
    (msgpack.packb({"v": 1, "op": "explode", "id": 1}), "unknown operation"),
    (msgpack.packb({"v": 1, "op": "infer", "id": 1}), "missing field 'model'"),
    (msgpack.packb({"v": 1, "op": "ping", "id": 1, "x": list(range(100000))}), "size limit"),
], ids=["garbage", "truncated", "not-a-map", "version", "unknown-op", "missing-field", "too-many-items"])
def test_garbage_and_truncated_messages(daemon, archives, body, needle):
    s = raw(daemon)
    s.sendall(frame(body))
    reply = read_reply(s)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert needle in reply["error"]["message"]
    s.close()
    assert_serving(daemon, archives)


def test_oversized_frame_is_refused_and_connection_closed(daemon, archives):
    s = raw(daemon)
    s.sendall(struct.pack("<I", 512 << 20))  # claims 512 MiB of control data
    reply = read_reply(s)
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert "exceeds the limit" in reply["error"]["message"]
    assert read_reply(s) is None  # then the daemon hangs up
    assert_serving(daemon, archives)


def test_zero_length_frame(daemon, archives):
    s = raw(daemon)
    s.sendall(struct.pack("<I", 0))
    assert read_reply(s)["error"]["code"] == "BAD_REQUEST"
    assert_serving(daemon, archives)


def test_truncated_frame_then_disconnect(daemon, archives):
    s = raw(daemon)
    s.sendall(struct.pack("<I", 100) + b"only ten b")
    s.close()
    assert_serving(daemon, archives)


def test_fd_that_is_not_a_memfd_is_refused(daemon, archives):
    s = raw(daemon)
    r, w = os.pipe()
    body = frame(msgpack.packb({"v": 1, "op": "register_arena", "id": 5}))
    s.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
    reply = read_reply(s)
    assert reply["id"] == 5 and reply["error"]["code"] == "BAD_REQUEST"
    assert "not a memfd" in reply["error"]["message"]
    os.close(r)
    os.close(w)
    assert_serving(daemon, archives)


def desc(**over):
    d = {"arena": 1, "block": 64, "offset": 64, "dtype": "float32", "shape": [4], "strides": [1]}
    d.update(over)
    return d


@pytest.mark.parametrize("bad,needle", [
    (dict(offset=1 << 40, block=1 << 40), "outside arena"),
    (dict(shape=[1 << 30], strides=[1]), "outside arena"),
    (dict(shape=[2, 2], strides=[1 << 40, 1]), "outside arena"),
    (dict(arena=999), "not registered on this connection"),
    (dict(dtype="float128"), "unknown dtype"),
    (dict(shape=[2, 2], strides=[1]), "differ in length"),
    (dict(shape=[1] * 17, strides=[1] * 17), "dimensions"),
    (dict(shape=[-1], strides=[1]), "integers in [0, 2^48]"),
    (dict(block=128), "block starts after its data"),
    (dict(gpu="0000:01:00.0"), "GPU of an empty output only"),
], ids=["offset", "shape", "stride", "arena", "dtype", "ndim-mismatch", "17-dims", "negative", "block", "gpu"])
def test_descriptors_outside_their_arena(daemon, archives, bad, needle):
    with daemon.client(arena_size=1 << 20) as c:
        c.load("add", archives["add"])
        aid = next(iter(c._arenas))
        d = desc(arena=aid)
        d.update(bad)
        with pytest.raises(shoal.BadRequest, match=needle.replace("[", r"\[").replace("^", r"\^")):
            c._call({"op": "infer", "model": "add", "inputs": [d]})
        # the same connection keeps working
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0


def test_a_tensor_shoald_would_refuse_is_a_bad_request_in_the_client(daemon, archives):
    with daemon.client() as c:
        c.load("add", archives["add"])
        with pytest.raises(shoal.BadRequest, match="more than 16"):
            c.empty([1] * 17)
        with pytest.raises(shoal.BadRequest, match="more than 16"):
            c.infer("add", torch.zeros([1] * 17))  # copied into an arena first
        assert float(c.infer("add", torch.zeros(1))[0]) == 1.0


def test_another_clients_arena_is_off_limits(daemon, archives):
    with daemon.client() as a, daemon.client() as b:
        a.load("add", archives["add"])
        aid = next(iter(a._arenas))
        with pytest.raises(shoal.BadRequest, match="not registered on this connection"):
            b._call({"op": "infer", "model": "add", "inputs": [desc(arena=aid)]})


def test_outputs_past_the_workers_output_arenas_are_arena_full(make_daemon, tmp_path):
    # Outputs live in arenas the worker makes for the connection (not in the client's own
    # arena): one 16 MiB result fits (an arena of its size), a second one held at the same
    # time is past output_arenas = 1.
    import shoal_test_models as m
    big = shoal.export(m.Grow(), tmp_path / "grow.pt")
    d = make_daemon(workers=1, args=["--output-arena-mb", "1", "--output-arenas", "1"])
    with d.client(arena_size=1 << 20) as c:
        c.load("grow", big)
        held = c.infer("grow", torch.ones(1))
        with pytest.raises(shoal.ArenaFull, match="grow.*output_arenas"):
            c.infer("grow", torch.ones(1))
        assert c.status()["workers"][0]["state"] != "restarting"
        del held
        assert c.infer("grow", torch.ones(1)).shape == (4 << 20,)  # released: room again


def test_gpu_arena_registrations_that_no_worker_could_map_are_refused(daemon, archives):
    """A client names the GPU of a GPU arena and its size (its fd cannot say): shoald
    refuses GPUs its workers do not use, fds that are not the NVIDIA driver's and sizes past
    1 TiB, holds no fd for them, and keeps serving another client."""
    import array
    with daemon.client() as victim:
        victim.load("identity", archives["identity"])
        gpus = [w["gpu"] for w in victim.status()["workers"] if w["gpu"]]
        s = wire.raw(daemon.socket)
        null = os.open("/dev/null", os.O_RDONLY)
        cases = [({"gpu": "0000:ff:00.0", "size": 1 << 21}, null, "no such GPU")]
        real = None
        if gpus:  # the fd and size checks come after the GPU's
            from shoal import _native
            real = _native.Arena.create_gpu(1 << 21, _native.gpu_ordinal(gpus[0]))  # a real exported fd
            cases += [({"gpu": gpus[0], "size": 1 << 21}, null, "exported CUDA allocation"),
                      ({"gpu": gpus[0], "size": 1 << 41}, real.fd, "1 TiB")]
        for i, (fields, fd, why) in enumerate(cases):
            msg = dict({"v": 1, "op": "register_arena", "id": i + 1}, **fields)
            s.sendmsg([frame(msg)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            reply = read_reply(s)
            assert reply["ok"] is False and reply["error"]["code"] == "BAD_REQUEST", reply
            assert why in reply["error"]["message"], reply
        os.close(null)
        s.close()
        assert victim.status()["arenas"] == 1  # the victim's own only
        assert torch.equal(victim.infer("identity", torch.ones(3)), torch.ones(3))
