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
    assert torch.equal(got, want) or (want.is_floating_point() and torch.equal(got.isnan(), want.isnan()))
