"""Models of the benchmarks (interned into their archives by shoal.export)."""
import torch
from torch import nn


class PythonBound(nn.Module):
    """Many small layers and Python control flow: the time goes to the interpreter, not to
    the kernels (the case where the GIL limits a threaded server)."""

    def __init__(self, width=32, depth=48):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.gates = [i % 3 for i in range(depth)]

    def forward(self, x):
        h = x
        for layer, gate in zip(self.layers, self.gates):
            if gate == 0:
                h = torch.relu(layer(h))
            elif gate == 1:
                h = torch.tanh(layer(h)) + h
            else:
                h = layer(h) * 0.5
        return h
