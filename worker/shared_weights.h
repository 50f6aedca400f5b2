// SharedModuleWeights: a TorchScript module's tensors as the one copy of its weights that
// every worker on this GPU maps (docs/architecture.md, "Shared GPU weights"; shoald's side:
// supervisor/gpu_weights.h; packaged models: python/shoal/_gpu_weights.py).
//
// The module is loaded on the CPU first; Share then gives every tensor it holds
// (parameters, buffers, other tensor attributes, in lists, tuples and dicts too) storage
// in one GPU allocation, laid out in the order a walk of the module meets them (the same in
// every worker), and moves the tensor constants of its code to the GPU (privately: they are
// small). Upload: the allocation is made and filled here, then mapped read-only; its fd is
// for shoald. Map: the allocation behind the fd shoald sent is mapped read-only. Where the
// driver has no read-only mappings, the mapping is writable (read_only() says so).
// Owns the fd it exports; the mapping lives as long as a tensor over it.
// Thread-safety: the module must not be in use (loads hold the runner's exclusive lock).
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <memory>

#include "shoal/status.h"

namespace shoal {

class GpuMemory;

class SharedModuleWeights {
 public:
  // `upload`: make the copy (`fd` ignored); else map the copy behind `fd` (taken), which
  // holds `size` bytes. Returns nullptr when the module holds no tensor (nothing to share).
  static Result<std::unique_ptr<SharedModuleWeights>> Share(torch::jit::Module* module, bool upload, int fd,
                                                            uint64_t size);
  ~SharedModuleWeights();
  SharedModuleWeights(const SharedModuleWeights&) = delete;
  SharedModuleWeights& operator=(const SharedModuleWeights&) = delete;

  int export_fd() const { return export_fd_; }  // upload: the fd for shoald; -1 for a map
  uint64_t size() const { return size_; }
  bool read_only() const { return read_only_; }

 private:
  SharedModuleWeights(int export_fd, uint64_t size, bool read_only)
      : export_fd_(export_fd), size_(size), read_only_(read_only) {}
  const int export_fd_;
  const uint64_t size_;
  const bool read_only_;
};

}  // namespace shoal
