"""An example model in plain Python: a small MLP classifier whose forward uses ordinary
Python control flow and returns a dict. `make_model()` is what shoal packages."""
import torch
from torch import nn


class TinyClassifier(nn.Module):
    def __init__(self, labels):
        super().__init__()
        self.labels = labels
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, len(labels)))

    def forward(self, x):
        probs = torch.softmax(self.body(x), dim=-1)
        top = [self.labels[i] for i in probs.argmax(dim=-1).tolist()]
        return {"probs": probs, "top": top}


def make_model():
    torch.manual_seed(42)
    return TinyClassifier(["cat", "dog", "fish"]).eval()
