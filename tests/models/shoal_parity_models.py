"""Models whose one source runs on both engines: packaged with shoal.export they run in
the Python runner, compiled with torch.jit.script they run in libtorch. Their outputs
cover every kind of output-tree node and every output error, so that
tests/python/test_shared_defs.py can check that both engines answer alike."""
from typing import Dict, List

import torch
from torch import nn


class Nested(nn.Module):
    """Tuples, lists, dicts with str and int keys, scalars, None, zero-size tensors, the
    input itself and a view of it (both go back in place), new tensors (copied)."""

    def forward(self, x: torch.Tensor):
        by_name: Dict[str, torch.Tensor] = {"sum": x.sum(), "twice": x * 2}
        by_number: Dict[int, List[torch.Tensor]] = {3: [x[0], x.t()], -1: []}
        scalars = (7, -2, 2.5, True, "text", None)
        empty = (torch.zeros(0, 3), x[:, :0])
        return x, x[1:], [x + 1, x - 1], by_name, by_number, scalars, empty


class Scalar(nn.Module):
    def forward(self, x: torch.Tensor) -> float:
        return float(x.sum())


class FloatKey(nn.Module):
    def forward(self, x: torch.Tensor):
        keys: Dict[float, torch.Tensor] = {1.5: x}
        return (x + 1, keys)


class BoolKey(nn.Module):
    def forward(self, x: torch.Tensor):
        keys: Dict[bool, torch.Tensor] = {True: x}
        return keys


class Deep16(nn.Module):
    """A tensor 16 levels down: the deepest output that may travel."""

    def forward(self, x: torch.Tensor):
        return ((((((((((((((((x,),),),),),),),),),),),),),),),)  # the root tuple is level 0


class Deep17(nn.Module):
    """A new tensor 17 levels down, after a copied one: too deep, and the copy is freed."""

    def forward(self, x: torch.Tensor):
        return (x + 1, ((((((((((((((((x * 3,),),),),),),),),),),),),),),),))
