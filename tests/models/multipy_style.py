"""Models written like MultiPy's examples (multipy/runtime/example/examples.py): this
module imports only torch and typing, so that a PackageExporter that interns "**" (as
MultiPy's generate_examples does) packages it as it is (tests/python/test_multipy.py)."""
from typing import List, Tuple

import torch
from torch import nn


class PairInPairsOut(nn.Module):
    """A model whose one argument is a tuple, as MultiPy's multi_return example takes:
    model((values, mask)) -> ((values with masked places 0.1, mask), (ones, mask))."""

    def forward(self, t: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[Tuple[torch.Tensor, torch.Tensor],
                                                                      Tuple[torch.Tensor, torch.Tensor]]:
        values, mask = t
        return (values.masked_fill(mask, 0.1), mask), (torch.ones_like(values), mask)


class PairPredictor(nn.Module):
    """A predictor with more than forward, as torch::deploy's predictors call them:
    make_prediction runs forward over a list of pairs; make_batch is not for clients."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return -a, b * 2

    @torch.jit.export
    def make_prediction(self, pairs: List[Tuple[torch.Tensor, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        return [self.forward(p[0], p[1]) for p in pairs]

    @torch.jit.export
    def make_batch(self, pairs: List[Tuple[torch.Tensor, torch.Tensor]], max_bs: int) -> List[List[Tuple[torch.Tensor, torch.Tensor]]]:
        return [pairs[i:i + max_bs] for i in range(0, len(pairs), max_bs)]


class Scorer:
    """Not a module: a plain object whose served method is score (and which is not callable)."""

    def __init__(self, weight):
        self.weight = weight
        self.threshold = 0.5  # an attribute, not a method

    def score(self, x, scale=1.0):
        return {"score": (x * self.weight).sum(-1) * scale}

    def _secret(self):
        return "private"


class Shift(nn.Module):
    """MultiPy's Simple, smaller: input + a weight (here a constant one)."""

    def __init__(self, by: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), by))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight
