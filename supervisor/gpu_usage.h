// GpuUsage: how much memory each GPU has in use, for `status`, read through NVML
// (libnvidia-ml.so.1, loaded when first asked: WorkerPool asks at start-up on a GPU host),
// which needs no CUDA context: shoald never creates one (fork safety, and ~620 MB a
// context). NVML's descriptors of the driver's devices are made close-on-exec.
// Thread-safety: any thread (NVML is thread-safe; loading it happens once).
#pragma once

#include <cstdint>
#include <string>

#include "shoal/status.h"

namespace shoal {

struct GpuMemoryFigures {
  uint64_t used = 0;   // bytes in use on the device, by every process
  uint64_t total = 0;  // the device's memory
};
// Figures of the GPU with PCI bus id `bus` ("0000:19:00.0"). UNAVAILABLE without NVML.
Result<GpuMemoryFigures> GpuMemoryOf(const std::string& bus);

}  // namespace shoal
