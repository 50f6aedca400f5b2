"""The worker's tensors over arena bytes (python/shoal/_tensors.py): gpu_slice, a view of
one byte tensor over a whole GPU arena, must give exactly what a tensor made over the
bytes gives, for every dtype, offsets, strides, empty and 0-dim tensors. Checked here on
host bytes (gpu_slice only slices and views); on CUDA memory by test_gpu.py."""
import pytest
import torch

from shoal import _tensors


def descriptors():
    for name, itemsize in _tensors.ITEMSIZE.items():
        yield {"dtype": name, "shape": [3, 4], "strides": [4, 1], "offset": 64}
        yield {"dtype": name, "shape": [4, 3], "strides": [1, 4], "offset": 128 + itemsize}  # transposed
        yield {"dtype": name, "shape": [2, 2], "strides": [8, 2], "offset": 8 * itemsize}  # every other
        yield {"dtype": name, "shape": [], "strides": [], "offset": 5 * itemsize}  # one element
        yield {"dtype": name, "shape": [0, 7], "strides": [7, 1], "offset": 256}  # empty
        yield {"dtype": name, "shape": [5], "strides": [1], "offset": 0}
        yield {"dtype": name, "shape": [5], "strides": [2], "offset": 0}  # 1-d, not contiguous
        yield {"dtype": name, "shape": [2, 3, 2], "strides": [6, 2, 1], "offset": 32}
        yield {"dtype": name, "shape": [3, 1, 4], "strides": [4, 1, 1], "offset": 16}  # a size-1 dim's stride
        yield {"dtype": name, "shape": [2, 3], "strides": [0, 1], "offset": 0}  # a broadcast row


@pytest.mark.parametrize("desc", list(descriptors()), ids=lambda d: f"{d['dtype']}{d['shape']}@{d['offset']}")
def test_a_slice_of_the_arenas_byte_tensor_is_the_tensor_over_its_bytes(desc):
    arena = bytearray(torch.randint(0, 256, (1024,), dtype=torch.uint8).numpy().tobytes())
    base = torch.frombuffer(arena, dtype=torch.uint8)
    want = _tensors.view(arena, 0, desc)
    got = _tensors.gpu_slice(base, desc)
    assert got.dtype == want.dtype and list(got.shape) == list(want.shape) and got.stride() == want.stride()
    assert got.data_ptr() == want.data_ptr()  # the same bytes, not a copy
    def raw(t):  # the bytes themselves (random bytes make NaNs, which equal nothing)
        return t.reshape(-1).contiguous().view(torch.uint8)
    assert torch.equal(raw(got), raw(want))


@pytest.mark.parametrize("desc", list(descriptors()), ids=lambda d: f"{d['dtype']}{d['shape']}{d['strides']}@{d['offset']}")
def test_a_view_is_torchs_own_strided_view_of_the_bytes(desc):
    """view() and layout() (shoald's arithmetic, protocol/descriptor.h) against torch's
    as_strided over the same bytes."""
    arena = bytearray(torch.randint(0, 256, (1024,), dtype=torch.uint8).numpy().tobytes())
    dtype, itemsize = _tensors.DTYPES[desc["dtype"]], _tensors.ITEMSIZE[desc["dtype"]]
    got = _tensors.view(arena, 0, desc)
    assert got.dtype == dtype and list(got.shape) == desc["shape"]
    nbytes, contiguous = _tensors.layout(desc)
    if 0 in desc["shape"]:
        assert nbytes == 0 and got.numel() == 0
        return
    assert nbytes == (1 + sum((n - 1) * s for n, s in zip(desc["shape"], desc["strides"]))) * itemsize
    assert contiguous == (desc["strides"] == _tensors.contiguous_strides(desc["shape"]))
    want = torch.frombuffer(arena, dtype=torch.uint8).view(dtype).as_strided(
        desc["shape"], desc["strides"], desc["offset"] // itemsize)
    assert got.stride() == want.stride() and got.data_ptr() == want.data_ptr()
    assert torch.equal(got.reshape(-1).contiguous().view(torch.uint8), want.reshape(-1).contiguous().view(torch.uint8))


@pytest.mark.parametrize("dtype,shape,strides,says", [
    ("float8", [1], [1], "unknown dtype"),
    ("float32", [-1], [1], "negative"),
    ("float32", [2], [-1], "negative"),
    ("float32", [1 << 40, 1 << 40], [1 << 40, 1], "overflows"),
    ("float32", [1, 2], [1], "differ in length"),
    ("float32", [1] * 17, [1] * 17, "more than 16"),
    ("float32", [2 ** 62 + 1] * 16, [2 ** 62] * 16, "overflows"),  # a sum that would wrap 128 bits
])
def test_a_layout_shoald_would_refuse_is_a_value_error(dtype, shape, strides, says):
    with pytest.raises(ValueError, match=says):
        _tensors.layout({"dtype": dtype, "shape": shape, "strides": strides})


def test_zero_strides_and_empty_tensors_have_bounded_layouts():
    # A broadcast of 2^80 elements spans one; an empty tensor of huge sizes spans none.
    assert _tensors.layout({"dtype": "float32", "shape": [1 << 40, 1 << 40], "strides": [0, 0]}) == (4, False)
    assert _tensors.layout({"dtype": "float32", "shape": [0, 1 << 62, 1 << 62], "strides": [1, 1, 1]}) == (0, True)


class _Owner:
    """Stands for the Block or Arena a tensor's bytes belong to."""


def test_device_bytes_is_the_memory_itself_and_keeps_its_owner_while_any_view_lives():
    import gc
    import weakref

    arena = bytearray(range(256)) * 4
    base = torch.frombuffer(arena, dtype=torch.uint8)
    owner = _Owner()
    gone = weakref.ref(owner)
    t = _tensors.device_bytes(owner, base.data_ptr() + 64, 128, -1)  # -1: host memory (the GPU path names a CUDA ordinal)
    del owner
    assert t.dtype == torch.uint8 and t.shape == (128,) and t.data_ptr() == base.data_ptr() + 64
    assert torch.equal(t, base[64:192])
    floats = t.view(torch.float32)[4:]  # a view of a view: the same storage
    del t
    gc.collect()
    assert gone() is not None, "the owner went while a view of its bytes lived"
    base[80] = 7
    assert floats.view(torch.uint8)[0] == 7  # still the arena's bytes, not a copy
    del floats
    gc.collect()
    assert gone() is None, "the owner outlived every tensor over its bytes"


def test_a_capsule_torch_never_took_lets_its_owner_go():
    import gc
    import weakref

    from shoal import _native

    owner = _Owner()
    gone = weakref.ref(owner)
    capsule = _native.byte_capsule(owner, 4096, 16, 0)
    del owner, capsule
    gc.collect()
    assert gone() is None
    with pytest.raises(ValueError):
        _native.byte_capsule(None, 0, 1, -2)
