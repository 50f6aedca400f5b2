#include "tensors/cuda_context.h"

#include <ATen/detail/CUDAHooksInterface.h>

#include <atomic>
#include <exception>

namespace shoal {

bool CudaContextInUse() {
  static const bool has_cuda = at::detail::getCUDAHooks().hasCUDA();  // no context made
  static std::atomic<bool> cannot_ask{false};  // it threw once: it would throw every time
  if (!has_cuda || cannot_ask.load(std::memory_order_relaxed)) return false;
  try {
    return at::detail::getCUDAHooks().hasPrimaryContext(0);
  } catch (const std::exception&) {
    cannot_ask.store(true, std::memory_order_relaxed);
    return false;
  }
}

}  // namespace shoal
