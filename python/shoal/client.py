"""shoal's Python client.

    c = shoal.Client()                       # $SHOAL_SOCKET or the default socket
    c.load("resnet", "resnet.pt")
    x = c.empty((1, 3, 224, 224))            # arena-backed: fill in place, no copy
    x.normal_()
    y = c.infer("resnet", x)                 # y is a view on the arena; dropping it frees it

Ordinary tensors and numpy arrays work too (one copy into the arena). A Client may be
shared by threads; its requests are serialised. Results stay valid after close().

GPU (docs/architecture.md, "GPU"): ``c.empty(shape, device="cuda")`` is a CUDA tensor in a
GPU arena this client owns (GPU memory passed to shoald as an fd): no copy at all; another
CUDA tensor costs one device-to-device copy into such an arena. Before a job is sent, the
client waits for the GPU work on its inputs (``torch.cuda.synchronize``); the worker's work
is complete before its answer arrives. Outputs a model leaves on its GPU come back as CUDA
tensors over the worker's GPU output arena (``outputs="cpu"`` asks for host tensors).

Memory ownership (docs/architecture.md): inputs live in arenas this client creates and
owns (it alone allocates and frees their blocks, with bookkeeping in its own memory).
Results live in output arenas a worker made for this connection; shoald passes their fds
with the first answer that uses them, and a result's block goes back to that worker (a
``release`` notice) once the last tensor over it is dropped: the connection's writer
(``_native.ClientWriter``, the C++ client's own: protocol/client_writer.h) sends it at
once from a thread of its own, so a client that goes quiet keeps nothing in the worker.
"""
import array
import os
import socket as _socket
import struct
import threading
import time
import weakref

import msgpack
import numpy as np
import torch

from . import _native, _tensors, errors

VERSION = 1
DEFAULT_ARENA_SIZE = 256 << 20
DEFAULT_GPU_ARENA_SIZE = 64 << 20  # a client's GPU arena (more when a tensor needs it)
_HEADER = struct.Struct("<I")
# How long past a job's own deadline the client waits for shoald's answer before raising
# Timeout itself (shoald answers at the deadline; this covers a stopped or wedged shoald).
ANSWER_MARGIN_S = 2.0
_FD_BYTES = 16 * array.array("i").itemsize  # fds one recvmsg takes (shoald sends at most 8 a frame)


# $SHOAL_SOCKET, else /run/shoal/shoal.sock for root, else $XDG_RUNTIME_DIR/shoal/shoal.sock,
# else /tmp/shoal-UID/shoal.sock: shoald's own definition (protocol/paths.cc).
default_socket_path = _native.default_socket_path


class Client:
    def __init__(self, socket=None, arena_size=DEFAULT_ARENA_SIZE):
        self.socket_path = socket or default_socket_path()
        if socket is None and not os.environ.get("SHOAL_SOCKET"):
            # The default folder could have been made by another user (/tmp/shoal-UID).
            why = _native.check_socket_folder(self.socket_path)
            if why is not None:
                raise errors.Unavailable(f"not connecting to {self.socket_path}: {why}")
        self._arena_size = arena_size
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            self._sock.connect(self.socket_path)
        except OSError as e:
            self._sock.close()
            raise errors.Unavailable(
                f"cannot connect to shoald at {self.socket_path}: {e.strerror}; is shoald running? "
                f"(start it with `shoald --socket {self.socket_path}`)") from None
        # Nothing is sent (no arena) before we know who listens there (protocol/paths.h).
        why = _native.check_server_peer(self._sock.fileno(), self.socket_path)
        if why is not None:
            self._sock.close()
            raise errors.Unavailable(why)
        self._lock = threading.Lock()  # one request at a time: its send, then its answer
        self._writer = _native.ClientWriter(self._sock.fileno())  # every frame we send, releases too
        self._rbuf = bytearray()  # received bytes not yet part of a whole frame
        self._next_id = 1
        self._arenas = {}    # arena id -> _native.Arena we own (inputs; .device >= 0: GPU memory)
        self._blocks = {}    # (arena id, block offset) -> weakref to the Block of empty()
        self._out_arenas = {}  # arena id -> _native.Arena a worker owns (results), mapped here
        self._fds = []       # received fds not yet claimed by a reply, oldest first
        self._add_arena(arena_size)

    # -- plumbing -------------------------------------------------------------------
    def close(self):
        with self._lock:
            self._writer.stop()  # sends the releases still queued
            self._sock.close()
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, msg, fds=(), wait=None):
        """Sends ``msg`` and returns its reply; ``wait`` (seconds) bounds the wait for it."""
        with self._lock:
            rid = self._next_id
            self._next_id += 1
            msg["v"] = VERSION
            msg["id"] = rid
            body = msgpack.packb(msg)
            data = _HEADER.pack(len(body)) + body
            try:
                self._writer.send(data, list(fds))
                reply = self._recv_reply(rid, wait)
            except _socket.timeout:
                raise errors.Timeout(
                    f"shoald at {self.socket_path} did not answer {msg.get('op')} request {rid} within "
                    f"{wait:.1f} s (its deadline plus {ANSWER_MARGIN_S} s); it may be stopped or overloaded. "
                    f"The connection stays usable; a late answer is discarded") from None
            except (OSError, ConnectionError) as e:
                self._raise_parting_error()
                raise errors.Unavailable(f"lost the connection to shoald at {self.socket_path}: {e}") from None
        if not reply.get("ok"):
            raise errors.from_reply(reply.get("error", {}))
        return reply

    def _take_arenas(self, reply):
        """Maps the output arenas an answer introduces (their fds came with it, in order)."""
        announced = reply.get("new_arenas", ())
        if len(self._fds) < len(announced):
            raise errors.InternalError(f"shoald announced {len(announced)} output arenas with {len(self._fds)} fds")
        # Every fd of this reply is taken first: one that cannot be mapped must not shift
        # the next reply's fds.
        fds = [self._fds.pop(0) for _ in announced]
        failed = None
        for a, fd in zip(announced, fds):
            try:
                if "gpu" in a:  # a worker's GPU output arena, on the GPU with that PCI bus id
                    try:
                        ordinal = _native.gpu_ordinal(a["gpu"])
                    except OSError:
                        os.close(fd)  # Arena.open/open_gpu close theirs, also on failure
                        raise
                    arena = _native.Arena.open_gpu(fd, a["size"], ordinal)
                else:
                    arena = _native.Arena.open(fd)
                self._out_arenas[a["arena"]] = arena
            except OSError as e:
                failed = failed or (f"output arena {a['arena']}" + (f" on GPU {a['gpu']}" if "gpu" in a else "") +
                                    f" cannot be mapped here: {e}; a client that cannot use the model's GPU can ask "
                                    "for host tensors (infer(..., outputs='cpu'))")
        if failed:
            raise errors.BadRequest(failed)

    def _discard_reply(self, reply):
        """An answer nobody waits for any more: its results go back to their workers."""
        try:
            self._take_arenas(reply)
        except (errors.Error, OSError):
            return
        seen = set()

        def walk(node):
            (kind, val), = node.items()
            if kind == "tensor":
                key = (val["arena"], val["block"])
                if val["arena"] in self._out_arenas and 0 not in val["shape"] and key not in seen:
                    seen.add(key)
                    self._writer.release(*key)
            elif kind in ("tuple", "list"):
                for n in val:
                    walk(n)
            elif kind == "dict":
                for _, n in val:
                    walk(n)
        if reply.get("ok") and "outputs" in reply:
            walk(reply["outputs"])

    def _raise_parting_error(self):
        """shoald may say why before it hangs up (too many clients, a framing error): raise
        that instead of a bare broken pipe."""
        try:
            self._sock.setblocking(False)
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    break
                self._rbuf += chunk
        except OSError:
            pass
        finally:
            self._sock.setblocking(True)
        if len(self._rbuf) >= 4:
            (n,) = _HEADER.unpack_from(self._rbuf)
            if len(self._rbuf) >= 4 + n:
                reply = msgpack.unpackb(bytes(self._rbuf[4:4 + n]), raw=False, strict_map_key=False)
                if not reply.get("ok") and reply.get("id") == 0:
                    raise errors.from_reply(reply.get("error", {}))

    def _recv_reply(self, rid, wait):
        """The reply to request ``rid``; answers to earlier requests the caller stopped
        waiting for are skipped. socket.timeout after ``wait`` seconds (None: no limit);
        a frame half-read then is kept for the next call."""
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            reply = msgpack.unpackb(self._recv_frame(deadline), raw=False, strict_map_key=False)
            got = reply.get("id")
            if got == rid:
                self._take_arenas(reply)
                return reply
            if got == 0 and not reply.get("ok"):  # shoald could not read a request at all
                raise errors.from_reply(reply.get("error", {}))
            if not isinstance(got, int) or got > rid:
                raise errors.InternalError(f"reply for request {got} while waiting for {rid}")
            self._discard_reply(reply)  # a late answer to a request we gave up on

    def _recv_frame(self, deadline):
        while True:
            if len(self._rbuf) >= 4:
                (n,) = _HEADER.unpack_from(self._rbuf)
                if len(self._rbuf) >= 4 + n:
                    body = bytes(self._rbuf[4:4 + n])
                    del self._rbuf[:4 + n]
                    return body
            if deadline is None:
                self._sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _socket.timeout()
                self._sock.settimeout(left)
            try:
                chunk, ancdata, _, _ = self._sock.recvmsg(1 << 16, _socket.CMSG_SPACE(_FD_BYTES),
                                                           getattr(_socket, "MSG_CMSG_CLOEXEC", 0))
            finally:
                self._sock.settimeout(None)
            for level, kind, payload in ancdata:  # output arenas' fds, claimed by their answers
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not chunk:
                raise ConnectionError("shoald closed the connection")
            self._rbuf += chunk

    def _add_arena(self, size, device=-1):
        if device < 0:
            arena = _native.Arena.create(size, "shoal-client")
            reply = self._call({"op": "register_arena"}, fds=[arena.fd])
        else:
            arena = _native.Arena.create_gpu(size, device)
            reply = self._call({"op": "register_arena", "gpu": _native.gpu_bus(device), "size": arena.size},
                               fds=[arena.fd])
        self._arenas[reply["arena"]] = arena
        return reply["arena"], arena

    def _alloc(self, nbytes, device=-1):
        """A Block of ``nbytes`` in one of our arenas on ``device`` (-1: host memory, else a
        GPU ordinal); adds an arena when all are full."""
        for aid, arena in self._arenas.items():
            if arena.device != device:
                continue
            try:
                return aid, _native.Block(arena, arena.alloc(nbytes), nbytes)
            except _native.ArenaFullError:
                continue
        base = self._arena_size if device < 0 else DEFAULT_GPU_ARENA_SIZE
        aid, arena = self._add_arena(max(base, 2 * nbytes + (1 << 20)), device)
        return aid, _native.Block(arena, arena.alloc(nbytes), nbytes)

    @staticmethod
    def _view(block, desc):
        """A tensor over ``block`` (host or GPU memory) described by ``desc``."""
        if block.arena.device >= 0:
            return _tensors.gpu_view(block, block.arena.device, block.address, block.offset, desc)
        return _tensors.view(block, block.offset, desc)

    @staticmethod
    def _gpu_ordinal(device):
        """The CUDA ordinal of ``device`` ("cuda", "cuda:1", a torch.device), -1 for the CPU."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type == "cpu":
            return -1
        if device.type != "cuda":
            raise errors.BadRequest(f"tensors on {device} cannot travel through shoal; use the CPU or CUDA")
        return device.index if device.index is not None else torch.cuda.current_device()

    # -- administration -------------------------------------------------------------
    def load(self, name, archive, device=None, max_batch=None, max_delay_us=None, preferred_batch_sizes=None):
        """Loads an archive into every worker under ``name``; returns when all are ready.
        ``device``: where it runs: None (where it was exported: a model exported from CUDA
        runs on a GPU), "cpu", "cuda" (every worker's GPU) or "cuda:N" (GPU N's workers).
        Dynamic batching (docs/architecture.md): ``max_batch`` > 1 lets shoald run up to
        that many queued jobs whose inputs agree on all but dim 0 as one run, waiting at
        most ``max_delay_us`` for a batch to fill and not at all once it reaches one of
        ``preferred_batch_sizes``; each given key overrides the archive manifest's
        ``batching`` (``max_batch=1`` turns it off).

        The archive is opened here, with this process's rights, and the open file is passed
        to shoald (SCM_RIGHTS); workers load from that very file. The path is sent only as
        a label for ``models``/``status``. BadRequest if this process cannot open it."""
        path = os.path.abspath(os.fspath(archive))
        msg = {"op": "load", "name": name, "path": path}
        if device is not None:
            msg["device"] = str(device)
        for key, value in (("max_batch", max_batch), ("max_delay_us", max_delay_us),
                           ("preferred_batch_sizes", preferred_batch_sizes)):
            if value is not None:
                msg[key] = [int(n) for n in value] if key == "preferred_batch_sizes" else int(value)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as e:
            raise errors.BadRequest(f"cannot read archive {path}: {e.strerror} (the client opens archives "
                                    "with your own rights and passes the open file to shoald)") from None
        try:
            self._call(msg, fds=[fd])
        finally:
            os.close(fd)

    def unload(self, name):
        self._call({"op": "unload", "name": name})

    def models(self):
        """[{"name", "path", "ready"}] of the loaded models."""
        return self._call({"op": "models"})["models"]

    def repository(self):
        """{"folder", "problems": [{"file", "model", "error"}]}: the model repository
        (model_repository) and its files that do not serve, and why; None unless it is set
        and this client is an admin."""
        return self._call({"op": "models"}).get("repository")

    def status(self):
        """Workers (pid, state, job, models, rss_kb), queue length and counters."""
        reply = self._call({"op": "status"})
        for k in ("v", "id", "ok"):
            reply.pop(k, None)
        return reply

    def ping(self):
        self._call({"op": "ping"})

    def health(self):
        """{"live": True, "ready": bool, "stopping": bool, "models": {name: ready}}.
        ``ready`` is true while every loaded model has at least one live worker holding it."""
        reply = self._call({"op": "health"})
        return {k: reply[k] for k in ("live", "ready", "stopping", "models")}

    # -- tensors --------------------------------------------------------------------
    def empty(self, shape, dtype=torch.float32, device=None):
        """An uninitialised tensor that lives in shared memory (``device="cuda"``: in GPU
        memory shared the same way): fill it in place and pass it to infer() with no copy.
        Freed when the tensor (and its views) are dropped."""
        if isinstance(shape, int):
            shape = (shape,)
        shape = tuple(int(s) for s in shape)
        _tensors.dtype_name(dtype)
        itemsize = _tensors.element_size(dtype)
        numel = 1
        for s in shape:
            numel *= s
        ordinal = self._gpu_ordinal(device)
        aid, block = self._alloc(max(numel * itemsize, 1), ordinal)
        self._blocks[(aid, block.offset)] = weakref.ref(block)
        if numel == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        return self._view(block, {"dtype": _tensors.dtype_name(dtype), "shape": list(shape),
                                  "strides": _tensors.contiguous_strides(shape), "offset": block.offset})

    def _find_block(self, t):
        """(arena id, Block) when ``t`` lives in a block made by empty(), else None."""
        start = _tensors.storage_ptr(t)
        device = t.get_device() if t.is_cuda else -1
        for aid, arena in self._arenas.items():
            if arena.device != device:
                continue
            off = start - arena.address
            if 0 <= off < arena.size:
                ref = self._blocks.get((aid, off))
                block = ref() if ref is not None else None
                return (aid, block) if block is not None else None
        return None

    def _describe(self, x, keep):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x) if x.dtype.byteorder == ">" else x)
        if not isinstance(x, torch.Tensor):
            raise errors.BadRequest(f"inputs must be torch tensors or numpy arrays, not {type(x).__name__}")
        ordinal = self._gpu_ordinal(x.device)
        dtype = _tensors.dtype_name(x.dtype)
        found = self._find_block(x) if x.numel() > 0 else None
        if found is not None:
            aid, block = found
            keep[(aid, block.offset)] = block
            return {"arena": aid, "block": block.offset,
                    "offset": block.offset + x.storage_offset() * x.element_size(),
                    "dtype": dtype, "shape": list(x.shape), "strides": list(x.stride())}
        shape = list(x.shape)
        nbytes = x.numel() * x.element_size()
        aid, block = self._alloc(max(nbytes, 1), ordinal)
        keep[(aid, block.offset)] = block
        desc = {"arena": aid, "block": block.offset, "offset": block.offset, "dtype": dtype,
                "shape": shape, "strides": _tensors.contiguous_strides(shape)}
        if nbytes:
            self._view(block, desc).copy_(x)  # a CUDA tensor: one copy on its GPU
        return desc

    # -- inference ------------------------------------------------------------------
    def infer(self, name, *inputs, timeout=None, retries=0, outputs=None):
        """Runs model ``name`` on ``inputs``; returns its output with the model's own
        structure, tensors as views on shared memory. ``timeout`` in seconds. With
        ``retries=1`` a job whose worker crashed is run once more (on a fresh worker);
        by default a crash is reported at once (WorkerCrashed). ``outputs="cpu"``: outputs
        a model leaves on its GPU come back as host tensors."""
        keep = {}  # blocks of this request's inputs, by (arena, offset)
        descs = [self._describe(x, keep) for x in inputs]
        for ordinal in {self._arenas[d["arena"]].device for d in descs} - {-1}:
            # The writes to GPU inputs (the caller's kernels, our copies) are complete
            # before the worker reads them: it runs on another process's streams.
            torch.cuda.synchronize(ordinal)
        msg = {"op": "infer", "model": name, "inputs": descs}
        if outputs is not None:
            msg["outputs"] = outputs
        if timeout is not None:
            msg["timeout_ms"] = max(1, int(timeout * 1000))
        if retries:
            msg["retries"] = int(retries)
        wait = None if timeout is None else timeout * (1 + int(retries)) + ANSWER_MARGIN_S
        reply = self._call(msg, wait=wait)

        def make_tensor(d):
            if 0 in d["shape"]:  # no bytes, no block (its "block" 0 is not one to free)
                device = f"cuda:{_native.gpu_ordinal(d['gpu'])}" if d.get("gpu") else "cpu"
                return torch.empty(d["shape"], dtype=_tensors.DTYPES[d["dtype"]], device=device)
            key = (d["arena"], d["block"])
            block = keep.get(key)  # an input returned in place: its block stays ours
            if block is None:
                arena = self._out_arenas.get(d["arena"])
                if arena is not None:
                    # A block the worker allocated for this result: released to it when dropped.
                    block = _native.Block(arena, d["block"], arena.size - d["block"], writer=self._writer,
                                          arena_id=d["arena"])
                else:
                    arena = self._arenas.get(d["arena"])
                    if arena is None:
                        raise errors.InternalError(f"output in unknown arena {d['arena']}")
                    block = _native.Block(arena, d["block"], arena.size - d["block"], False)  # a view, nothing to free
                keep[key] = block
            return self._view(block, d)

        return _tensors.decode_tree(reply["outputs"], make_tensor)
