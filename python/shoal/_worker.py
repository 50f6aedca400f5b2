"""The job runner inside a shoal-worker process (one per interpreter).

shoal-worker (C++) reads each framed message from shoald and calls ``Runner.handle(body,
fds)``; the returned bytes (if any) are the reply, or (bytes, [fd]) when the reply
announces new output arenas (their fds go with it). Messages come from the supervisor,
which has already checked every descriptor against its arena's bounds.

Memory ownership (docs/architecture.md): the client's input arenas are the client's; this
runner only reads and writes the bytes a descriptor names, and maps an arena when a job
first needs it (unmapping idle ones when the address space runs out:
``_native.ClientArenas``, the policy the TorchScript runner follows too). Outputs go into this
runner's own output arenas (``_native.OutputArenas``, one set per client connection), and
only the worker frees their blocks, on ``release`` from the client or shoald: its C++ loop
does, through ``outputs.release_api()`` (shm/output_release_api.h), without Python.
"""
import gc
import os
import traceback

import msgpack
import torch

from . import _gpu_weights, _native, _tensors, archive

VERSION = 1


def _error(rid, code, message, tb=None, poisoned=False):
    err = {"code": code, "message": message}
    if tb:
        err["traceback"] = tb
    reply = {"v": VERSION, "id": rid, "ok": False, "error": err}
    if poisoned:
        reply["poisoned"] = True  # shoald replaces this worker once the job is answered
    return msgpack.packb(reply)


def _cuda_poisoned():
    """After a job or load failed: waits for the GPU work it queued, and says whether this
    process's CUDA context is unusable now. Sticky errors (an illegal address, a
    device-side assert) fail every later call, so a synchronise that fails says so; an
    ordinary error (a bad launch configuration, the model's own exception) does not."""
    if not torch.cuda.is_initialized():
        return False
    try:
        torch.cuda.synchronize()
        return False
    except Exception:  # noqa: BLE001 - whatever torch raises for a dead context
        return True


def _synchronize():
    """The worker's GPU work is complete before its reply leaves (docs/architecture.md,
    "GPU"): the client may read the outputs as soon as it has the answer."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def self_test():
    """A small torch job: shoal-worker --check-interpreters runs it in two interpreters of
    one process at once."""
    x = torch.ones(8, 8)
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.zero_()
        y = layer(x @ x)
    if float(y.sum()) != 8 * 8 * 64.0:
        raise AssertionError(f"torch computed {float(y.sum())} instead of {8 * 8 * 64.0}")


class Runner:
    def __init__(self, slot, interp=0):
        self.slot = slot
        self.interp = interp
        self.models = {}   # name -> served object
        self.specs = {}    # name -> input specs from the manifest (or absent)
        self.engines = {}  # name -> the quantized engine its manifest names (or None)
        self.arenas = _native.ClientArenas()  # client arenas shoald sent, mapped when a job reads them
        # GPU client arena id -> a uint8 CUDA tensor over all of it, made when a job first
        # reads it: a job's inputs are slices of it (_views). ClientArenas keeps a GPU
        # arena mapped until it is dropped or replaced, and so does this tensor.
        self.gpu_bases = {}
        self.outputs = _native.OutputArenas(2 * interp)  # owner tag: lane `interp`, Python engine
        torch.set_grad_enabled(False)

    # -- dispatch -------------------------------------------------------------------
    def handle(self, body, fds):
        """``fds``: received descriptors not yet claimed, oldest first; a message that
        carries one (``arena``, ``load``) pops it from the front."""
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        try:
            return self._dispatch(msg, fds)
        except Exception as e:  # a bug here must cost one request, not the worker
            if "id" not in msg:
                raise
            text, tb = f"worker {self.slot}: {type(e).__name__}: {e}", traceback.format_exc()
            if isinstance(msg.get("batch"), list):  # every member is answered
                return _bundle([_error(m.get("job", 0), "INTERNAL", text, tb) for m in msg["batch"]])
            return _error(msg["id"], "INTERNAL", text, tb)

    def _dispatch(self, msg, fds):
        op = msg["op"]
        if op == "infer" and "batch" in msg:
            return self._infer_batch(msg)
        if op == "infer":
            return self._infer(msg)
        if op == "arena":
            self.gpu_bases.pop(msg["arena"], None)  # a new arena under this id
            self.arenas.add(msg["arena"], fds.pop(0), msg.get("size", 0), msg.get("gpu") or "")
        elif op == "drop_arena":
            self.gpu_bases.pop(msg["arena"], None)  # its memory goes with the last tensor over it
            self.arenas.drop(msg["arena"])
        elif op == "drop_client":
            return self.outputs.drop_client(msg["client"])
        elif op == "load":
            return self._load(msg, fds)
        elif op == "unload":
            self.models.pop(msg["name"], None)
            self.specs.pop(msg["name"], None)
            self.engines.pop(msg["name"], None)
            gc.collect()  # its GPU weights' mapping goes with the last tensor over it
            return msgpack.packb({"v": VERSION, "id": msg["id"], "ok": True})
        return None

    def _load(self, msg, fds):
        """Loads from the open file shoald sent with the message (it was validated there);
        ``path`` is only its label: a worker opens no archive path."""
        rid, name, path = msg["id"], msg["name"], msg.get("path", "")
        device = msg.get("device", "auto")
        if not fds:
            return _error(rid, "INTERNAL", f"model '{name}': shoald's load came without the archive's file")
        fd = fds.pop(0)
        # Shared GPU weights (python/shoal/_gpu_weights.py): upload the copy, or map it.
        share = msg.get("gpu_weights")
        weights = None
        if share == "upload":
            weights = _gpu_weights.Weights("upload")
        elif isinstance(share, int) and not isinstance(share, bool):
            if not fds:
                os.close(fd)
                return _error(rid, "INTERNAL", f"model '{name}': shoald's load came without the weights' fd")
            weights = _gpu_weights.Weights("map", fds.pop(0), share)
        try:
            self.models[name], manifest = archive.load_with_manifest(fd, device, path, weights, msg.get("entry"))
            _synchronize()
            self.specs.pop(name, None)
            self.engines[name] = (manifest or {}).get("quantized_engine")
            if manifest and manifest.get("inputs"):
                self.specs[name] = manifest["inputs"]
        except archive.NoGpuError as e:
            return _error(rid, "UNAVAILABLE", f"model '{name}': {e}")
        except archive.SelfCheckError as e:
            return _error(rid, "MODEL_ERROR", f"model '{name}': {e}")
        except archive.ArchiveError as e:
            return _error(rid, "BAD_REQUEST", f"model '{name}': {e}")
        except Exception as e:
            return _error(rid, "MODEL_ERROR",
                          f"model '{name}': loading archive {path} raised {type(e).__name__}: {e}",
                          traceback.format_exc(), poisoned=_cuda_poisoned())
        finally:
            os.close(fd)  # the mapping keeps what the model needs
        reply = {"v": VERSION, "id": rid, "ok": True, "engine": "python",
                 "device": archive.device_of(self.models[name])}
        if weights is not None and weights.uploaded:
            reply["gpu_weights"] = weights.size  # the copy's fd goes with the reply, for shoald to hold
            return msgpack.packb(reply), [weights.export_fd]
        return msgpack.packb(reply)

    # -- inference ------------------------------------------------------------------
    def _map(self, arenas):
        """The client arenas ``arenas`` mapped, by id. Mapped when a job first reads them;
        idle mappings go when the address space is full (shm/client_arena_maps.h, the
        TorchScript runner's policy too), never one of ``arenas``."""
        needed = sorted(arenas)
        return {aid: self.arenas.map(aid, needed) for aid in needed}

    def _infer(self, msg):
        rid, name = msg["id"], msg["model"]
        model = self.models.get(name)
        if model is None:
            return _error(rid, "MODEL_NOT_FOUND", f"model '{name}' is not loaded in worker {self.slot}")
        structured = "args" in msg or "kwargs" in msg
        specs = self.specs.get(name)
        target = _method(model, msg.get("method"))
        if target is None:
            return _error(rid, "BAD_REQUEST", f"model '{name}', job {rid}: its served object "
                          f"({type(model).__name__}) has no method {msg['method']!r}, although its load or "
                          "manifest allows it; allow only methods the model has")
        if specs is not None and not structured and not msg.get("method"):  # specs: forward's positional inputs
            problem = _check_inputs(msg["inputs"], specs)
            if problem:
                return _error(rid, "BAD_REQUEST", f"model '{name}', job {rid}: {problem}")
        try:
            mapped = self._map({d["arena"] for d in msg["inputs"]})
        except OSError as e:
            return _error(rid, "UNAVAILABLE", f"model '{name}', job {rid}: worker {self.slot}: {e}")
        inputs, spans = _views(mapped, msg["inputs"], self.gpu_bases)
        try:
            archive.use_quantized_engine(self.engines.get(name), name)  # process-wide: models may differ
            if structured:
                # The call's structure, checked by shoald (protocol/call_tree.h): {"input": i}
                # is inputs[i], the zero-copy view.
                args = [_tensors.decode_tree(n, inputs.__getitem__, "input") for n in msg.get("args", ())]
                kwargs = {k: _tensors.decode_tree(n, inputs.__getitem__, "input") for k, n in msg.get("kwargs", ())}
                out = target(*args, **kwargs)
            else:
                out = target(*inputs)
            # The one output encoder (protocol/output_tree.h), shared with TorchScript models.
            reply = _native.encode_reply(rid, name, out, self.outputs, msg["client"], msg.get("out_bytes", 64 << 20),
                                         msg.get("out_arenas", 8), spans, _tensors.write,
                                         msg.get("outputs") != "cpu")
            _synchronize()
            return reply
        except _native.OutputError as e:
            code, message = e.args
            return _error(rid, code, message, poisoned=_cuda_poisoned())
        except Exception as e:
            poisoned = _cuda_poisoned()
            return _error(rid, "MODEL_ERROR",
                          f"model '{name}' raised {type(e).__name__} in job {rid}: {e}" +
                          ("; its worker's CUDA context is unusable now, the worker is replaced" if poisoned else ""),
                          traceback.format_exc(), poisoned=poisoned)

    def _infer_batch(self, msg):
        """One run of the model for several jobs (docs/architecture.md, "Dynamic batching"):
        shoald grouped jobs whose inputs agree on all but the first dimension. Each input is
        concatenated along dim 0 (one copy), the model runs once, every tensor of the
        output is split back along dim 0 by the members' rows, and each member gets its own
        reply (a bundle: protocol/reply_bundle.h)."""
        name, members = msg["model"], msg["batch"]
        ids = [m["job"] for m in members]
        replies = {}
        model = self.models.get(name)
        specs = self.specs.get(name)
        run = []
        for m in members:
            if model is None:
                replies[m["job"]] = _error(m["job"], "MODEL_NOT_FOUND", f"model '{name}' is not loaded in worker {self.slot}")
                continue
            problem = _check_inputs(m["inputs"], specs) if specs is not None else None
            if problem:
                replies[m["job"]] = _error(m["job"], "BAD_REQUEST", f"model '{name}', job {m['job']}: {problem}")
            else:
                run.append(m)
        try:
            mapped = self._map({d["arena"] for m in run for d in m["inputs"]})
        except OSError as e:
            for m in run:
                replies[m["job"]] = _error(m["job"], "UNAVAILABLE", f"model '{name}', job {m['job']}: worker {self.slot}: {e}")
            run = []
        if run:
            which = f"a batch of {len(run)} jobs ({', '.join(str(m['job']) for m in run)})"
            error = None
            try:
                parts = [_views(mapped, m["inputs"], self.gpu_bases)[0] for m in run]
                rows = [p[0].shape[0] for p in parts]
                inputs = [torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))]
                archive.use_quantized_engine(self.engines.get(name), name)
                out = model(*inputs)
                pieces = _split(out, rows, sum(rows), "output", 0)
            except _Unbatchable as e:
                error = ("MODEL_ERROR", f"model '{name}' cannot be batched ({which}): {e}; the batch failed. "
                                        f"Load it without max_batch, or make every output carry the batch along dim 0",
                         None, False)
            except Exception as e:
                poisoned = _cuda_poisoned()
                error = ("MODEL_ERROR",
                         f"model '{name}' raised {type(e).__name__} in {which}: {e}" +
                         ("; its worker's CUDA context is unusable now, the worker is replaced" if poisoned else ""),
                         traceback.format_exc(), poisoned)
            if error is not None:
                code, message, tb, poisoned = error
                for m in run:
                    replies[m["job"]] = _error(m["job"], code, message, tb, poisoned and m is run[-1])
            else:
                for m, piece in zip(run, pieces):
                    try:
                        # Outputs are the model's own tensors (the inputs were copied): no spans.
                        replies[m["job"]] = _native.encode_reply(
                            m["job"], name, piece, self.outputs, m["client"], msg.get("out_bytes", 64 << 20),
                            msg.get("out_arenas", 8), [], _tensors.write, msg.get("outputs") != "cpu")
                    except _native.OutputError as e:
                        code, message = e.args
                        replies[m["job"]] = _error(m["job"], code, message)
                _synchronize()
        return _bundle([replies[i] for i in ids])


class _Unbatchable(Exception):
    """A batch's output that cannot be split back by rows."""


_MAX_SPLIT_DEPTH = 32


def _split(out, rows, total, path, depth):
    """``out`` split into one tree per member, each tensor along dim 0 by ``rows`` (views:
    the encoder copies each member's rows once). Containers keep their kind; None goes to
    every member; anything else cannot be split."""
    if depth > _MAX_SPLIT_DEPTH:
        raise _Unbatchable(f"{path} nests deeper than {_MAX_SPLIT_DEPTH} levels")
    if isinstance(out, torch.Tensor):
        if out.dim() == 0 or out.shape[0] != total:
            raise _Unbatchable(f"{path} has shape {list(out.shape)}, not the batch's {total} rows along dim 0")
        return list(torch.split(out, rows))
    if out is None:
        return [None] * len(rows)
    if isinstance(out, (tuple, list)):
        cols = [_split(x, rows, total, f"{path}[{i}]", depth + 1) for i, x in enumerate(out)]
        per = [[c[k] for c in cols] for k in range(len(rows))]
        if isinstance(out, list):
            return per
        if hasattr(type(out), "_fields"):  # a named tuple stays one
            return [type(out)(*p) for p in per]
        return [tuple(p) for p in per]
    if isinstance(out, dict):
        cols = {key: _split(x, rows, total, f"{path}[{key!r}]", depth + 1) for key, x in out.items()}
        return [{key: c[k] for key, c in cols.items()} for k in range(len(rows))]
    raise _Unbatchable(f"{path} is a {type(out).__name__}, not a tensor with the batch's rows along dim 0")


def _method(model, name):
    """What a job calls: the served object itself (forward), or its method ``name``, which
    shoald let through only when the load or the manifest allows it; None when the object
    has no such callable attribute."""
    if not name:
        return model
    target = getattr(model, name, None)
    return target if callable(target) else None


def _bundle(replies):
    """The replies of a batch's members as one bundle (protocol/reply_bundle.h): each reply
    is bytes, or (bytes, [fd]) when it announces output arenas."""
    bodies, counts, fds = [], [], []
    for r in replies:
        body, attached = r if isinstance(r, tuple) else (r, [])
        bodies.append(body)
        counts.append(len(attached))
        fds.extend(attached)
    packed = msgpack.packb({"replies": bodies, "fds": counts}, use_bin_type=True)
    return (packed, fds) if fds else packed


def _views(mapped, descs, gpu_bases):
    """Tensors over the mapped input bytes (no copy), and each one's byte span. A GPU
    input is a slice of its arena's tensor in ``gpu_bases`` (made here the first time)."""
    inputs, spans = [], []
    for d in descs:
        arena = mapped[d["arena"]]
        lay = _tensors.layout(d)
        if arena.device >= 0:
            base = gpu_bases.get(d["arena"])
            if base is None:
                base = gpu_bases[d["arena"]] = _tensors.gpu_base(arena, arena.device)
            inputs.append(_tensors.gpu_slice(base, d, lay))
        else:
            inputs.append(_tensors.view(arena, 0, d, lay))
        spans.append((d["arena"], d["block"], d["offset"], d["offset"] + lay[0], arena.address))
    return inputs, spans


def _fmt(spec):
    return spec["dtype"] + "[" + ", ".join("*" if n is None else str(n) for n in spec["shape"]) + "]"


def _check_inputs(descs, specs):
    """What is wrong with the inputs for the manifest's specs, or None."""
    if len(descs) != len(specs):
        return (f"takes {len(specs)} inputs ({', '.join(_fmt(s) for s in specs)}), got {len(descs)}")
    for i, (d, spec) in enumerate(zip(descs, specs)):
        shape = d["shape"]
        ok = d["dtype"] == spec["dtype"] and len(shape) == len(spec["shape"]) and all(
            want is None or want == got for want, got in zip(spec["shape"], shape))
        if not ok:
            return (f"input {i} must be {_fmt(spec)}, got {d['dtype']}[{', '.join(map(str, shape))}]")
    return None
