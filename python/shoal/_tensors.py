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

import torch

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


def extent(shape, strides, itemsize):
    """Bytes from a tensor's first element to the end of its last."""
    if any(s == 0 for s in shape):
        return 0
    return (1 + sum((n - 1) * st for n, st in zip(shape, strides))) * itemsize


def storage_ptr(t):
    """Address of the start of a tensor's storage (torch 1.13 and 2.x)."""
    if hasattr(t, "untyped_storage"):
        return t.untyped_storage().data_ptr()
    return t.storage().data_ptr()


def view(buffer, base_offset, desc):
    """A tensor over ``buffer`` (an object with the buffer protocol whose byte 0 is arena
    offset ``base_offset``) described by ``desc``. No bytes are copied."""
    name = desc["dtype"]
    dtype = DTYPES[name]
    shape, strides = desc["shape"], desc["strides"]
    itemsize = ITEMSIZE[name]
    nbytes = extent(shape, strides, itemsize)
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    # Arena and Block buffers are writable, so frombuffer does not warn (or copy).
    flat = torch.frombuffer(buffer, dtype=dtype, count=nbytes // itemsize,
                            offset=desc["offset"] - base_offset)
    if len(shape) == 1 and strides[0] == 1:
        return flat
    if list(strides) == contiguous_strides(shape):
        return flat.view(shape)
    return flat.as_strided(shape, strides)


class _DeviceBytes:
    """``nbytes`` of GPU memory at device ``address``, as torch.as_tensor reads it
    (``__cuda_array_interface__``); keeps ``owner`` (the Block or Arena the bytes belong
    to) alive as long as a tensor over them lives: torch holds this object until then."""

    def __init__(self, owner, address, nbytes):
        self.owner = owner
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False),
                                         "version": 2}


def gpu_view(owner, device, address, base_offset, desc):
    """A CUDA tensor on GPU ``device`` (an ordinal here) over GPU arena memory described by
    ``desc``: ``address`` is the device address of arena offset ``base_offset``; ``owner``
    is kept alive by the tensor. No bytes are copied (the device is explicit, so a default
    device never turns this into a copy)."""
    name = desc["dtype"]
    dtype = DTYPES[name]
    shape, strides = desc["shape"], desc["strides"]
    itemsize = ITEMSIZE[name]
    nbytes = extent(shape, strides, itemsize)
    raw = torch.as_tensor(_DeviceBytes(owner, address + desc["offset"] - base_offset, max(nbytes, itemsize)),
                          device=torch.device("cuda", device))
    flat = raw.view(dtype)
    if nbytes == 0:
        return flat[:0].view(shape)
    if list(strides) == contiguous_strides(shape):
        return flat.view(shape)
    return flat.as_strided(shape, strides)


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


def decode_tree(node, make_tensor):
    """Rebuilds a Python structure from an output tree; ``make_tensor(desc)`` builds tensors."""
    (kind, val), = node.items()
    if kind == "tensor":
        return make_tensor(val)
    if kind == "tuple":
        return tuple(decode_tree(n, make_tensor) for n in val)
    if kind == "list":
        return [decode_tree(n, make_tensor) for n in val]
    if kind == "namedtuple":  # [name, [field, ...], [node, ...]]
        name, fields, items = val
        return _named_tuple(name, tuple(fields))(*(decode_tree(n, make_tensor) for n in items))
    if kind == "dict":
        return {k: decode_tree(n, make_tensor) for k, n in val}
    if kind == "value":
        return val
    if kind == "float":
        return float(val)
    raise ValueError(f"unknown output node {kind!r}")


def write(arena, offset, t):
    """Copies ``t`` into ``arena`` at byte ``offset``, laid out contiguously. ``arena`` is a
    writable buffer for a CPU tensor, or the device address (an int) of GPU memory for a
    CUDA tensor (a copy on the GPU, never through the host)."""
    if isinstance(arena, int):
        nbytes = t.numel() * t.element_size()
        dst = torch.as_tensor(_DeviceBytes(None, arena + offset, nbytes), device=t.device).view(t.dtype).view(t.shape)
        dst.copy_(t)
        return
    flat = torch.frombuffer(arena, dtype=t.dtype, count=t.numel(), offset=offset)
    flat.view(t.shape).copy_(t)
