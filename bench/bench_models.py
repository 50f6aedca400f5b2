"""Models of the benchmarks (interned into their archives by shoal.export), and the
benchmarks' shared memory helper."""
import time

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


class TimedRun(nn.Module):
    """``inner`` that also reports, for each row of its input, what its own run cost where
    it ran: returns (inner(x), a CPU float tensor [rows, 2] of (the run's rows, its ms)),
    the time taken inside forward between two synchronizes of x's GPU (the batch's inputs
    are joined before the first). Served with dynamic batching, every member's second
    output says how big its batch was and what the model cost in the worker; the host
    output needs no GPU work from the client that reads it (bench/batching.py --timed)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t0 = time.perf_counter()
        y = self.inner(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        ms = (time.perf_counter() - t0) * 1e3
        return y, torch.tensor([[float(x.shape[0]), ms]]).repeat(x.shape[0], 1)


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


# The "big" model of bench/gpu_memory.py: GPT-2-XL's width and heads with 32 layers
# instead of 48, so its fp32 weights are ~4 GiB (GPT-2-XL's 1.56e9 parameters are 5.8 GiB).
BIG_GPT2 = dict(n_layer=32, n_embd=1600, n_head=25)


def gpt2_parameters(n_layer, n_embd, vocab_size=50257, n_positions=1024, **_):
    """GPT2LMHeadModel's parameter count from its config, without building it: token and
    position embeddings (the LM head is tied to the former), per block two LayerNorms
    (2 x 2e), attention (e x 3e + 3e, e x e + e) and MLP (e x 4e + 4e, 4e x e + e), and
    the final LayerNorm."""
    e = n_embd
    return vocab_size * e + n_positions * e + n_layer * (12 * e * e + 13 * e) + 2 * e


class Gpt2Lm(nn.Module):
    """GPT2LMHeadModel (random weights: no download), its logits as a plain tensor. Export
    it with extern=["transformers.**"]."""

    def __init__(self, **config):
        super().__init__()
        import transformers
        self.m = transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False, **config))

    def forward(self, ids):
        return self.m(input_ids=ids).logits


class LinearStack(nn.Module):
    """`depth` Linear(width, width) layers: the stand-in for a big model where transformers
    is missing (width 8192, depth 16: 4 GiB of fp32 weights)."""

    def __init__(self, width=8192, depth=16):
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))

    def forward(self, x):
        return self.layers(x)


def big_model():
    """(label, module, example input, extern) of a model with ~4 GiB of fp32 weights."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("big: transformers is not installed; a stack of 16 Linear(8192, 8192) instead")
        return "Linear stack 4 GiB", LinearStack().eval(), torch.randn(1, 8192), ()
    n = gpt2_parameters(**BIG_GPT2)
    print(f"big: GPT-2 {BIG_GPT2}: {n / 1e9:.3f}e9 parameters, {n * 4 / 2**30:.2f} GiB fp32 (by formula)")
    return "GPT-2 32x1600 s128", Gpt2Lm(**BIG_GPT2).eval(), torch.randint(0, 50257, (1, 128)), ("transformers.**",)


def pss_kb(pid):
    """Proportional set size of process `pid` in KiB (shared pages divided among their
    users); 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0
