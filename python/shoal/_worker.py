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
only this runner frees their blocks, on ``release`` from the client or shoald.
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
            return _error(msg["id"], "INTERNAL", f"worker {self.slot}: {type(e).__name__}: {e}",
                          traceback.format_exc())

    def _dispatch(self, msg, fds):
        op = msg["op"]
        if op == "infer":
            return self._infer(msg)
        if op == "arena":
            self.arenas.add(msg["arena"], fds.pop(0), msg.get("size", 0), msg.get("gpu") or "")
        elif op == "drop_arena":
            self.arenas.drop(msg["arena"])
        elif op == "release":
            return self.outputs.release(msg["arena"], msg["blocks"])
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
            self.models[name], manifest = archive.load_with_manifest(fd, device, path, weights)
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
    def _infer(self, msg):
        rid, name = msg["id"], msg["model"]
        model = self.models.get(name)
        if model is None:
            return _error(rid, "MODEL_NOT_FOUND", f"model '{name}' is not loaded in worker {self.slot}")
        specs = self.specs.get(name)
        if specs is not None:
            problem = _check_inputs(msg["inputs"], specs)
            if problem:
                return _error(rid, "BAD_REQUEST", f"model '{name}', job {rid}: {problem}")
        # Mapped when a job first reads them; idle mappings go when the address space is
        # full (shm/client_arena_maps.h, the TorchScript runner's policy too).
        needed = sorted({d["arena"] for d in msg["inputs"]})
        mapped = {}
        for aid in needed:
            try:
                mapped[aid] = self.arenas.map(aid, needed)
            except OSError as e:
                return _error(rid, "UNAVAILABLE", f"model '{name}', job {rid}: worker {self.slot}: {e}")
        inputs, spans = [], []
        for d in msg["inputs"]:
            arena = mapped[d["arena"]]
            if arena.device >= 0:
                inputs.append(_tensors.gpu_view(arena, arena.device, arena.address, 0, d))
            else:
                inputs.append(_tensors.view(arena, 0, d))
            spans.append((d["arena"], d["block"], d["offset"],
                          d["offset"] + _tensors.extent(d["shape"], d["strides"], _tensors.ITEMSIZE[d["dtype"]]),
                          arena.address))
        try:
            archive.use_quantized_engine(self.engines.get(name), name)  # process-wide: models may differ
            out = model(*inputs)
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
