"""Outputs the worker writes into its output arena (protocol/output_tree.cc, Encoder::Tensor),
and outputs that go back inside their input: whatever the layout (contiguous, transposed,
strided, broadcast, 0-dim), the size (small ones are copied byte for byte, larger ones by
torch) and torch's lazy views (a conjugate or negative view is a flag on the tensor, not
its bytes), the client gets the values the model returned. And the client's side: a lazy
view of a tensor in its arena is sent as its values."""
import pytest
import torch

import shoal
import shoal_test_models as models

CASES = ["plus zero", "transposed", "every other column", "broadcast row", "0-dim", "conj of the input",
         "negative view", "negated", "zero tensor"]


def expected(x):
    y = x + 0
    return [y, y.t(), y[:, ::2], y[:1].expand(3, -1), y[0, 0], x.conj().resolve_conj(), -y, -x, torch.zeros_like(y)]


@pytest.fixture(scope="module", params=["package", "torchscript"])
def archive(request, tmp_path_factory):
    """Reshapes as a torch.package (the Python engine) and as TorchScript (the C++ one)."""
    path = tmp_path_factory.mktemp("outputs") / f"reshapes-{request.param}.pt"
    if request.param == "package":
        shoal.export(models.Reshapes(), path)
    else:
        torch.jit.save(torch.jit.script(models.Reshapes()), str(path))
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.complex64, torch.float16])
@pytest.mark.parametrize("rows", [4, 1200])  # 1200 x 64 float16: 150 KiB, past the byte-for-byte copy's bound
def test_every_output_layout_arrives_with_the_models_values(daemon, archive, dtype, rows):
    path = archive
    with daemon.client() as c:
        c.load("reshapes", path)
        x = c.empty((rows, 64), dtype=dtype)
        x.copy_((torch.arange(rows * 64) - 100).view(rows, 64).to(dtype))
        if dtype.is_complex:
            x.imag.copy_(torch.arange(rows * 64).view(rows, 64).float() * 0.5)
        got = c.infer("reshapes", x)
        for name, g, want in zip(CASES, got, expected(x.clone())):
            assert g.shape == want.shape and g.dtype == want.dtype, name
            assert torch.equal(g.resolve_conj().resolve_neg(), want.resolve_conj().resolve_neg()), name
            assert not g.is_conj() and not g.is_neg(), f"{name}: the client's tensor carries a lazy flag"


@pytest.mark.parametrize("lazy", ["conj", "neg"])
def test_a_lazy_view_of_an_arena_input_travels_as_its_values(daemon, archives, lazy):
    """The client's side: a tensor from empty() goes by reference, but a conjugated or
    negated view of it (a flag, not bytes) must be sent as the values it reads as."""
    with daemon.client() as c:
        c.load("identity", archives["identity"])
        z = c.empty((2, 3), dtype=torch.complex64)
        z.copy_(torch.complex(torch.arange(6.0).view(2, 3), torch.ones(2, 3)))
        x = z.conj() if lazy == "conj" else torch._neg_view(z)
        got = c.infer("identity", x)
        assert torch.equal(got.resolve_conj().resolve_neg(), x.resolve_conj().resolve_neg())
