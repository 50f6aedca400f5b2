// CudaContextInUse: whether this process holds a CUDA context on its GPU (device 0: a
// worker sees only its own GPU), i.e. whether there can be GPU work to wait for before a
// reply leaves. Never creates a context, so CPU models on a GPU host cost none.
// Asked after every job by the TorchScript runner (worker/torchscript.cc). A torch built
// without CUDA, or a host without a GPU, is told apart once per process: asking such a
// torch for a primary context throws a c10::Error, which symbolises a backtrace (measured
// ~0.6 ms a job on the 2-core VM, more than the rest of a TorchScript job's round trip).
// Thread-safe; any thread.
#pragma once

namespace shoal {

bool CudaContextInUse();

}  // namespace shoal
