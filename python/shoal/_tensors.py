"""Tensors over arena memory and the output tree, shared by the client and the worker.

A descriptor is ``{"arena", "block", "offset", "dtype", "shape", "strides"}`` (see
docs/protocol.md); ``offset`` and ``block`` are byte offsets into the arena, strides are in
elements. An output tree node is one of ``{"tensor": desc}``, ``{"tuple": [...]}``,
``{"list": [...]}``, ``{"dict": [[key, node], ...]}``, ``{"float": x}`` or ``{"value": x}``
(None, bool, int, str).
"""
import torch

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "uint8": torch.uint8, "int8": torch.int8,
    "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
    "complex64": torch.complex64, "complex128": torch.complex128,
}
NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in DTYPES.items()}


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


def contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return list(reversed(strides))


def element_size(dtype):
    return ITEMSIZE[dtype_name(dtype)]


def decode_tree(node, make_tensor):
    """Rebuilds a Python structure from an output tree; ``make_tensor(desc)`` builds tensors."""
    (kind, val), = node.items()
    if kind == "tensor":
        return make_tensor(val)
    if kind == "tuple":
        return tuple(decode_tree(n, make_tensor) for n in val)
    if kind == "list":
        return [decode_tree(n, make_tensor) for n in val]
    if kind == "dict":
        return {k: decode_tree(n, make_tensor) for k, n in val}
    if kind == "value":
        return val
    if kind == "float":
        return float(val)
    raise ValueError(f"unknown output node {kind!r}")


def encode_tree(obj, encode_tensor, depth=0):
    """Turns a model's output into a tree; ``encode_tensor(t)`` returns a descriptor."""
    if depth > 16:
        raise TypeError("output nested more than 16 levels deep")
    if isinstance(obj, torch.Tensor):
        return {"tensor": encode_tensor(obj)}
    if isinstance(obj, float):
        # Its own node kind: MessagePack re-encoders may turn 4.0 into the integer 4.
        return {"float": obj}
    if obj is None or isinstance(obj, (bool, int, str)):
        if isinstance(obj, int) and not isinstance(obj, bool) and not -2**63 <= obj < 2**64:
            raise TypeError(f"integer output {obj} does not fit in 64 bits")
        return {"value": obj}
    if isinstance(obj, tuple):
        return {"tuple": [encode_tree(x, encode_tensor, depth + 1) for x in obj]}
    if isinstance(obj, list):
        return {"list": [encode_tree(x, encode_tensor, depth + 1) for x in obj]}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"output dict key {k!r} is a {type(k).__name__}; use str or int keys")
            items.append([k, encode_tree(v, encode_tensor, depth + 1)])
        return {"dict": items}
    raise TypeError(f"the model returned a {type(obj).__name__}, which shoal cannot send back; "
                    "return tensors, tuples, lists, dicts (str/int keys) or Python scalars")
