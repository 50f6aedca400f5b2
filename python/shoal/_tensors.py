"""Tensors over arena memory and the output tree, shared by the client and the worker.

A descriptor is ``{"arena", "block", "offset", "dtype", "shape", "strides"}`` (see
docs/protocol.md); ``offset`` and ``block`` are byte offsets into the arena, strides are in
elements. An output tree node is one of ``{"tensor": desc}``, ``{"tuple": [...]}``,
``{"list": [...]}``, ``{"dict": [[key, node], ...]}``, ``{"namedtuple": [name, [field, ...],
[node, ...]]}``, ``{"float": x}`` or ``{"value": x}``
(None, bool, int, str). Trees are encoded in C++ only (``_native.encode_reply``, the
encoder TorchScript models use too); this module decodes them.

The dtype table is C++'s (protocol/dtypes.h, read through ``_native.DTYPES``): shoal's
dtype names are torch's, so ``torch.<name>`` is the torch dtype.
"""
import collections
import functools

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack as _from_dlpack

from . import _native

DTYPES = {name: getattr(torch, name) for name, _, _, _ in _native.DTYPES}
NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {name: itemsize for name, itemsize, _, _ in _native.DTYPES}
STORAGE_DTYPES = {storage: name for name, _, _, storage in _native.DTYPES}  # "FloatStorage" -> "float32"


def dtype_name(dtype):
    try:
        return NAMES[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot travel through shoal; "
                        f"use one of {', '.join(DTYPES)}") from None


def layout(desc):
    """(bytes from the first element to the end of the last, whether the strides are the
    contiguous ones) of a descriptor: shoald's own arithmetic (protocol/descriptor.h, through
    ``_native.layout``); ValueError for a negative size or stride or an overflow."""
    return _native.layout(desc["dtype"], desc["shape"], desc["strides"])


def storage_ptr(t):
    """Address of the start of a tensor's storage (torch 1.13 and 2.x), from the tensor's own
    address: making a storage object costs more than the rest of a request's description."""
    return t.data_ptr() - t.storage_offset() * t.element_size()


def view(buffer, base_offset, desc, lay=None):
    """A tensor over ``buffer`` (an object with the buffer protocol whose byte 0 is arena
    offset ``base_offset``) described by ``desc`` (``lay``: its ``layout``, when the caller
    has it). No bytes are copied."""
    name = desc["dtype"]
    dtype = DTYPES[name]
    shape = desc["shape"]
    if lay is None and len(shape) == 1 and desc["strides"][0] == 1 and shape[0] >= 0:
        lay = (shape[0] * ITEMSIZE[name], True)  # the common flat case, without the call
    nbytes, contiguous = lay or _native.layout(name, shape, desc["strides"])
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    # Arena and Block buffers are writable, so frombuffer does not warn (or copy).
    flat = torch.frombuffer(buffer, dtype=dtype, count=nbytes // ITEMSIZE[name],
                            offset=desc["offset"] - base_offset)
    if not contiguous:
        return flat.as_strided(shape, desc["strides"])
    return flat if len(shape) == 1 else flat.view(shape)


def device_bytes(owner, address, nbytes, device):
    """``nbytes`` bytes of GPU memory at device ``address`` on CUDA ordinal ``device`` (-1:
    host memory) as a 1-D uint8 tensor, no copy; the tensor's storage keeps ``owner`` (the
    Block or Arena the bytes belong to) alive until torch lets the memory go. Made through
    DLPack (shoal._native.byte_capsule): the device is named, so torch does not ask the
    driver whose pointer it is, as it does for __cuda_array_interface__."""
    return _from_dlpack(_native.byte_capsule(owner, address, nbytes, device))


def gpu_view(owner, device, address, base_offset, desc):
    """A CUDA tensor on GPU ``device`` (an ordinal here) over GPU arena memory described by
    ``desc``: ``address`` is the device address of arena offset ``base_offset``; ``owner``
    is kept alive by the tensor. No bytes are copied (the device is explicit, so a default
    device never turns this into a copy)."""
    name = desc["dtype"]
    shape = desc["shape"]
    nbytes, contiguous = _native.layout(name, shape, desc["strides"])
    raw = device_bytes(owner, address + desc["offset"] - base_offset, max(nbytes, ITEMSIZE[name]), device)
    return _shaped(raw.view(DTYPES[name]), nbytes, contiguous, desc)


def gpu_base(arena, device):
    """A uint8 CUDA tensor over all of GPU arena ``arena`` (on GPU ordinal ``device``),
    which it keeps alive: the tensor every input in it is a slice of (gpu_slice)."""
    return device_bytes(arena, arena.address, arena.size, device)


def gpu_slice(base, desc, lay=None):
    """The tensor gpu_view makes over arena bytes described by ``desc`` (its offset from
    the arena's start; ``lay``: its ``layout``, when the caller has it), as a view of the
    arena's ``base`` (gpu_base): slicing a tensor costs less than making one over new
    memory. Bytes not aligned to their dtype (which a view of a byte tensor cannot give)
    go through gpu_view."""
    name = desc["dtype"]
    itemsize = ITEMSIZE[name]
    offset = desc["offset"]
    if offset % itemsize:
        return gpu_view(base, base.get_device(), base.data_ptr(), 0, desc)
    nbytes, contiguous = lay or _native.layout(name, desc["shape"], desc["strides"])
    return _shaped(base[offset:offset + max(nbytes, itemsize)].view(DTYPES[name]), nbytes, contiguous, desc)


def _shaped(flat, nbytes, contiguous, desc):
    """``flat`` (the elements from the first to the last, or one element when the tensor is
    empty) shaped as ``desc`` says."""
    if nbytes == 0:
        return flat[:0].view(desc["shape"])
    if contiguous:
        return flat.view(desc["shape"])
    return flat.as_strided(desc["shape"], desc["strides"])


def contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return list(reversed(strides))


def element_size(dtype):
    return ITEMSIZE[dtype_name(dtype)]


@functools.lru_cache(maxsize=256)
def _named_tuple(name, fields):
    """The client's named tuple type for a model's (a name that is no identifier, as
    "module.Pair" or TorchScript's "__torch__.Pair", is cut to its last part; bad field
    names are renamed _0, _1, ...)."""
    short = name.rsplit(".", 1)[-1]
    return collections.namedtuple(short if short.isidentifier() else "NamedTuple", fields, rename=True)


def decode_tree(node, make_tensor, leaf="tensor"):
    """Rebuilds a Python structure from a tree (docs/protocol.md, "Output tree"); its
    ``leaf`` nodes (``tensor``: a descriptor; ``input``: an index into a call's inputs,
    "Call structure") are built by ``make_tensor(value)``. Trees come checked: an output
    tree by the worker's encoder, a call structure by shoald (protocol/call_tree.h)."""
    (kind, val), = node.items()
    if kind == leaf:
        return make_tensor(val)
    if kind == "tuple":
        return tuple(decode_tree(n, make_tensor, leaf) for n in val)
    if kind == "list":
        return [decode_tree(n, make_tensor, leaf) for n in val]
    if kind == "namedtuple":  # [name, [field, ...], [node, ...]]
        name, fields, items = val
        return _named_tuple(name, tuple(fields))(*(decode_tree(n, make_tensor, leaf) for n in items))
    if kind == "dict":
        return {k: decode_tree(n, make_tensor, leaf) for k, n in val}
    if kind == "value":
        return val
    if kind == "float":
        return float(val)
    raise ValueError(f"unknown output node {kind!r}")


MAX_CALL_DEPTH = 16  # protocol/output_tree.h's kMaxOutputDepth; shoald checks it again


def encode_call_node(x, tensor_node, depth=0):
    """One argument of a model call as a node of its call structure (docs/protocol.md,
    "Call structure"); ``tensor_node(t)`` places a tensor (or numpy array) among the
    request's inputs and returns its ``{"input": i}``. Raises TypeError for a value that
    cannot travel (shoald checks the structure again: this is the client's courtesy)."""
    if depth > MAX_CALL_DEPTH:
        raise ValueError(f"arguments nested more than {MAX_CALL_DEPTH} levels deep")
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return tensor_node(x)
    if x is None or isinstance(x, (bool, str)):
        return {"value": x}
    if isinstance(x, int):
        return {"value": int(x)}
    if isinstance(x, float):
        return {"float": float(x)}
    if isinstance(x, tuple) and hasattr(type(x), "_fields"):  # a named tuple
        return {"namedtuple": [type(x).__name__, list(type(x)._fields),
                               [encode_call_node(v, tensor_node, depth + 1) for v in x]]}
    if isinstance(x, (tuple, list)):
        return {"tuple" if isinstance(x, tuple) else "list": [encode_call_node(v, tensor_node, depth + 1) for v in x]}
    if isinstance(x, dict):
        entries = []
        for k, v in x.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(f"dict keys in a model's arguments are str or int, not {type(k).__name__}")
            entries.append([k, encode_call_node(v, tensor_node, depth + 1)])
        return {"dict": entries}
    raise TypeError(f"a model's arguments are tensors, numpy arrays, lists, tuples and dicts of them, int, float, "
                    f"bool, str or None; not {type(x).__name__}")


def write(arena, offset, t):
    """Copies ``t`` into ``arena`` at byte ``offset``, laid out contiguously. ``arena`` is a
    writable buffer for a CPU tensor, or the device address (an int) of GPU memory for a
    CUDA tensor (a copy on the GPU, never through the host)."""
    if isinstance(arena, int):
        nbytes = t.numel() * t.element_size()
        dst = device_bytes(None, arena + offset, nbytes, t.get_device()).view(t.dtype).view(t.shape)
        dst.copy_(t)
        return
    flat = torch.frombuffer(arena, dtype=t.dtype, count=t.numel(), offset=offset)
    flat.view(t.shape).copy_(t)
