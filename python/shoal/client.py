"""shoal's Python client.

    c = shoal.Client()                       # $SHOAL_SOCKET or the default socket
    c.load("resnet", "resnet.pt")
    x = c.empty((1, 3, 224, 224))            # arena-backed: fill in place, no copy
    x.normal_()
    y = c.infer("resnet", x)                 # y is a view on the arena; dropping it frees it

Ordinary tensors and numpy arrays work too (one copy into the arena). Results stay valid
after close().

Many jobs in flight on one connection (docs/protocol.md: replies carry their request's id
and come in any order):

    futs = [c.submit("resnet", x) for x in batch]   # concurrent.futures.Future each
    ys = [f.result() for f in futs]                  # or as_completed, callbacks, ...
    y = await c.infer_async("resnet", x)             # asyncio

A Client may be shared by threads: requests are written under one send lock, and replies
are read by whichever waiting thread holds the connection's reading role, or by a reader
thread started with the first submit() (python/shoal/_connection.py).

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
import asyncio
import os
import socket as _socket
import weakref

import numpy as np
import torch

from . import _native, _tensors, errors
from ._connection import ANSWER_MARGIN_S, Connection

DEFAULT_ARENA_SIZE = 256 << 20
DEFAULT_GPU_ARENA_SIZE = 64 << 20  # a client's GPU arena (more when a tensor needs it)


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
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            raise errors.Unavailable(
                f"cannot connect to shoald at {self.socket_path}: {e.strerror}; is shoald running? "
                f"(start it with `shoald --socket {self.socket_path}`)") from None
        # Nothing is sent (no arena) before we know who listens there (protocol/paths.h).
        why = _native.check_server_peer(sock.fileno(), self.socket_path)
        if why is not None:
            sock.close()
            raise errors.Unavailable(why)
        self._conn = Connection(sock, self.socket_path)
        # A client dropped without close() must not leave its reader thread and socket behind.
        self._finalizer = weakref.finalize(self, self._conn.close)
        self._finalizer.atexit = False
        self._writer = self._conn.writer  # every frame we send, releases too
        self._arenas = {}    # arena id -> _native.Arena we own (inputs; .device >= 0: GPU memory)
        self._blocks = {}    # (arena id, block offset) -> weakref to the Block of empty()
        try:
            self._add_arena(arena_size)
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------
    def close(self):
        """Closes the connection; jobs still in flight fail with Unavailable."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, msg, fds=(), wait=None):
        """Sends ``msg`` and returns its reply; ``wait`` (seconds) bounds the wait for it."""
        return self._conn.outcome(self._conn.submit(msg, fds, wait=wait, attended=True))

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
        GPU ordinal); adds an arena when all are full. Any thread: arenas allocate under
        their own lock, and ``_arenas`` is read as a snapshot (two threads that find every
        arena full may each add one)."""
        for aid, arena in tuple(self._arenas.items()):
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
        """A tensor over ``block`` (host or GPU memory) described by ``desc``; BadRequest for
        a layout shoald would refuse (more than 16 dimensions, ...)."""
        try:
            if block.arena.device >= 0:
                return _tensors.gpu_view(block, block.arena.device, block.address, block.offset, desc)
            return _tensors.view(block, block.offset, desc)
        except (ValueError, OverflowError) as e:  # _native.layout: shoald's own rules
            raise errors.BadRequest(f"a tensor of shape {list(desc['shape'])} cannot travel through shoal: {e}") \
                from None

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
    def load(self, name, archive, device=None, max_batch=None, max_delay_us=None, preferred_batch_sizes=None,
             entry=None, methods=None):
        """Loads an archive into every worker under ``name``; returns when all are ready.
        ``device``: where it runs: None (where it was exported: a model exported from CUDA
        runs on a GPU), "cpu", "cuda" (every worker's GPU) or "cuda:N" (GPU N's workers).
        Dynamic batching (docs/architecture.md): ``max_batch`` > 1 lets shoald run up to
        that many queued jobs whose inputs agree on all but dim 0 as one run, waiting at
        most ``max_delay_us`` for a batch to fill and not at all once it reaches one of
        ``preferred_batch_sizes``; each given key overrides the archive manifest's
        ``batching`` (``max_batch=1`` turns it off).
        ``entry`` ("package/resource.pkl"): the pickle of a torch.package archive to serve,
        as MultiPy's ``load_pickle(package, resource)`` names it (default: the manifest's
        entry, else model/model.pkl). ``methods`` (["make_prediction"]): methods of the
        served object besides forward that clients may call (``infer(..., method=...)``),
        with those its manifest allows; names are public identifiers.

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
        if entry is not None:
            msg["entry"] = str(entry)
        if methods is not None:
            if isinstance(methods, str):
                raise TypeError(f"methods must be a list of method names, not the string {methods!r}")
            msg["methods"] = [str(m) for m in methods]
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
        """[{"name", "path", "ready", "methods", "entry"?, ...}] of the loaded models
        (``methods``: allowed besides forward; ``entry``: the pickle a package serves)."""
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
        for aid, arena in tuple(self._arenas.items()):  # a snapshot: another thread may add one
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
        ordinal = -1 if x.is_cpu else x.get_device() if x.is_cuda else self._gpu_ordinal(x.device)
        dtype = _tensors.dtype_name(x.dtype)
        # A lazily conjugated or negated view (torch's conj/neg bits) is not its bytes: copied.
        found = self._find_block(x) if x.numel() > 0 and not (x.is_neg() or x.is_conj()) else None
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
    def infer(self, name, *args, timeout=None, retries=0, outputs=None, method=None, kwargs=None, **model_kwargs):
        """Runs model ``name`` as ``model(*args, **kwargs)``; returns its output with the
        model's own structure, tensors as views on shared memory.

        Arguments are what the model's ``forward`` takes: tensors (and numpy arrays),
        lists, tuples (named ones too) and dicts (str or int keys) of them, nested, and
        Python int, float, bool, str and None (docs/protocol.md, "Call structure"):
        ``c.infer("bert", input_ids=ids, attention_mask=mask)``, ``c.infer("det", [img1,
        img2])``. Any other value raises TypeError before anything is sent. Keywords
        other than the client's own (``timeout``, ``retries``, ``outputs``, ``method``,
        ``kwargs``) go to the model; ``kwargs={...}`` passes a model keyword that has one
        of those names. ``method``: a method of the served object to call instead of
        forward, one its load (``methods=``) or manifest allows.

        ``timeout`` in seconds. With ``retries=1`` a job whose worker crashed is run once
        more (on a fresh worker); by default a crash is reported at once (WorkerCrashed).
        ``outputs="cpu"``: outputs a model leaves on its GPU come back as host tensors.
        Raises Timeout itself when shoald has not answered by the deadline plus
        ANSWER_MARGIN_S (the connection stays usable; the late answer is discarded).
        Ctrl-C while it waits raises KeyboardInterrupt; the job still runs in shoald, and
        its answer is dropped when it comes (its output blocks go back)."""
        return self._conn.outcome(self._submit(name, args, _merge_kwargs(kwargs, model_kwargs), timeout, retries,
                                               outputs, method, attended=True))

    def submit(self, name, *args, timeout=None, retries=0, outputs=None, method=None, kwargs=None, **model_kwargs):
        """Sends a job like infer() (same arguments) without waiting: a
        ``concurrent.futures.Future`` of its output. Many may be in flight on one
        connection; they resolve in any order (each exactly once: the output, the job's
        error, Timeout past the deadline plus ANSWER_MARGIN_S, or Unavailable if the
        connection is lost or closed). Inputs may be dropped or reused once submit returns
        (ordinary tensors were copied; a tensor from empty() keeps its block while the job
        runs, so do not write into it until then). ``cancel()`` before the answer: the
        answer is dropped when it comes and its output blocks go back to the worker;
        shoald still runs the job. Errors in the inputs (BadRequest, TypeError) and a
        connection already lost (Unavailable) raise here."""
        return self._submit(name, args, _merge_kwargs(kwargs, model_kwargs), timeout, retries, outputs, method,
                            pump=True)

    async def infer_async(self, name, *args, timeout=None, retries=0, outputs=None, method=None, kwargs=None,
                          **model_kwargs):
        """``await c.infer_async(...)``: infer() for asyncio; the event loop keeps running
        while the job does (inputs are prepared and sent on the caller's thread, replies
        read by the client's reader thread). Cancelling the awaiting task cancels the job
        as Future.cancel() does."""
        return await asyncio.wrap_future(self.submit(name, *args, timeout=timeout, retries=retries, outputs=outputs,
                                                     method=method, kwargs=_merge_kwargs(kwargs, model_kwargs)))

    def _submit(self, name, args, kwargs, timeout, retries, outputs, method=None, attended=False, pump=False):
        keep = {}  # blocks of this request's inputs, by (arena, offset): alive until it is answered
        descs = []

        def tensor_node(x):
            descs.append(self._describe(x, keep))
            return {"input": len(descs) - 1}

        # Only tensors, passed positionally: the plain call (model(*inputs)), which
        # dynamic batching can group; anything else travels with its structure.
        plain = not kwargs and all(isinstance(x, (torch.Tensor, np.ndarray)) for x in args)
        if plain:
            for x in args:
                tensor_node(x)
        else:
            call_args = [_tensors.encode_call_node(x, tensor_node) for x in args]
            call_kwargs = [[k, _tensors.encode_call_node(v, tensor_node)] for k, v in kwargs.items()]
        for ordinal in {self._arenas[d["arena"]].device for d in descs} - {-1}:
            # The writes to GPU inputs (the caller's kernels, our copies) are complete
            # before the worker reads them: it runs on another process's streams.
            torch.cuda.synchronize(ordinal)
        msg = {"op": "infer", "model": name, "inputs": descs}
        if not plain:
            msg["args"] = call_args
            if call_kwargs:
                msg["kwargs"] = call_kwargs
        if method is not None:
            msg["method"] = method
        if outputs is not None:
            msg["outputs"] = outputs
        if timeout is not None:
            msg["timeout_ms"] = max(1, int(timeout * 1000))
        if retries:
            msg["retries"] = int(retries)
        wait = None if timeout is None else timeout * (1 + int(retries)) + ANSWER_MARGIN_S
        out_arenas = self._conn.out_arenas
        writer = self._writer

        def make_tensor(d):  # on the reading thread
            if 0 in d["shape"]:  # no bytes, no block (its "block" 0 is not one to free)
                device = f"cuda:{_native.gpu_ordinal(d['gpu'])}" if d.get("gpu") else "cpu"
                return torch.empty(d["shape"], dtype=_tensors.DTYPES[d["dtype"]], device=device)
            key = (d["arena"], d["block"])
            block = keep.get(key)  # an input returned in place: its block stays ours
            if block is None:
                arena = out_arenas.get(d["arena"])
                if arena is not None:
                    # A block the worker allocated for this result: released to it when the
                    # last tensor over it is dropped (one Block per block of this answer).
                    block = _native.Block(arena, d["block"], arena.size - d["block"], writer=writer,
                                          arena_id=d["arena"])
                else:
                    arena = self._arenas.get(d["arena"])
                    if arena is None:
                        raise errors.InternalError(f"output in unknown arena {d['arena']}")
                    block = _native.Block(arena, d["block"], arena.size - d["block"], False)  # a view, nothing to free
                keep[key] = block
            return self._view(block, d)

        def decode(reply):
            try:
                return _tensors.decode_tree(reply["outputs"], make_tensor)
            finally:
                keep.clear()  # the inputs' blocks: the outputs over them hold their own references

        return self._conn.submit(msg, decode=decode, wait=wait, about=f"model {name!r}", attended=attended,
                                 pump=pump)


def _merge_kwargs(explicit, extra):
    """The model's keyword arguments: ``kwargs=`` (for names the client's own keywords
    take) and the rest of the call's keywords."""
    if explicit is None:
        return extra
    if not isinstance(explicit, dict):
        raise TypeError(f"kwargs must be a dict of the model's keyword arguments, not {type(explicit).__name__}")
    both = set(explicit) & set(extra)
    if both:
        raise TypeError(f"keyword argument {sorted(both)[0]!r} given both in kwargs= and as a keyword")
    return {**explicit, **extra}
