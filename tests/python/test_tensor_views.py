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
