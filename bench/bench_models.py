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


class BertEncoder(nn.Module):
    """BERT-base (bert-base-uncased's shape, random weights: no download), its encoder
    output as a plain tensor (shoal sends tensors, not ModelOutputs). Export it with
    extern=["transformers.**"]: the serving environment provides transformers."""

    def __init__(self):
        super().__init__()
        import transformers
        self.m = transformers.BertModel(transformers.BertConfig())

    def forward(self, ids):
        return self.m(input_ids=ids).last_hidden_state
