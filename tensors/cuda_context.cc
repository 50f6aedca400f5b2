#include "tensors/cuda_context.h"

#include <ATen/detail/CUDAHooksInterface.h>

#include <exception>

namespace shoal {

bool CudaContextInUse() {
  static const bool has_cuda = at::detail::getCUDAHooks().hasCUDA();  // no context made
  if (!has_cuda) return false;
  try {
    return at::detail::getCUDAHooks().hasPrimaryContext(0);
  } catch (const std::exception&) {  // device 0 is not there after all
    return false;
  }
}

}  // namespace shoal
