"""A model whose own code imports shoal (to name shoal's dtypes, say): it must export and
load although shoal is extern and the archive keeps shoal's manifest under shoal/."""
import torch

import shoal


class UsesShoal(torch.nn.Module):
    def forward(self, x):
        assert shoal.Client is not None
        return x + 1
