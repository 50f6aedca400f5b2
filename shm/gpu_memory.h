// GPU memory that travels as a file descriptor: one CUDA VMM allocation (cuMemCreate,
// exported as a POSIX fd), mapped into this process (docs/architecture.md, "GPU").
//
// The owner creates it (Create) and keeps the exported fd, which it passes with SCM_RIGHTS
// like a memfd arena's; a peer imports that fd (Import) and maps exactly the size it was
// told: the driver refuses a mapping larger than the allocation, so a claimed size is
// checked there. The memory lives while any process holds the fd or a mapping, so it
// outlives the process that made it (../shared/probes/gpu_vmm/).
//
// libcuda is loaded with dlopen on first use; nothing here needs CUDA at build time unless
// the toolkit's cuda.h was found (SHOAL_HAVE_CUDA_H), nor a GPU at run time: without
// them every call fails with UNAVAILABLE and a message saying why. shoald never calls
// anything here (it only checks and passes fds): shoald and the zygote never create a
// CUDA context. Devices are named across processes by PCI bus id ("0000:00:06.0"),
// because CUDA_VISIBLE_DEVICES numbers them differently in each process.
// Thread-safety: the free functions are thread-safe; a GpuMemory is immutable after
// construction and may be used from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// Whether this build has the GPU code at all (cuda.h was found at build time).
bool GpuSupportBuilt();
// Loads libcuda and initialises the driver (no context); why not, otherwise.
Status GpuDriverReady();
// The GPUs this process sees, in CUDA's order, by PCI bus id. Empty (and ok) when there is
// no driver or no GPU.
std::vector<std::string> ListGpus();
// This process's ordinal of the GPU with PCI bus id `bus`, and back.
Result<int> GpuOrdinalOfBus(const std::string& bus);
Result<std::string> GpuBusOfOrdinal(int ordinal);
// Allocation sizes are multiples of this (2 MiB on the H100).
Result<size_t> GpuGranularity(int ordinal);

// Waits until the work queued so far in GPU `ordinal`'s primary context (the one torch
// uses: every stream of it) is done. A client's writer calls it before it gives an output
// block on that GPU back to its worker, which may reuse the block at once. UNAVAILABLE
// without a driver, or when the wait could not start; the context's error when it is broken.
// `*finished` (optional) says whether none of the work queued so far can still run: true
// when the wait succeeded, or failed with a sticky error (the context is dead: its kernels
// never run again); false when the wait did not happen, so the work may still be running.
Status SynchronizeGpu(int ordinal, bool* finished = nullptr);

// shoald's check of a GPU arena's fd before it passes it on (no CUDA needed): an exported
// CUDA allocation is a descriptor of the driver's control device (a character device), and
// its announced size is sane. Whether the allocation really has that size is checked by
// the driver when a peer maps it.
Status CheckGpuArenaFd(int fd, uint64_t size);

class GpuMemory {
 public:
  // A new allocation of `size` bytes (rounded up to the granularity) on GPU `ordinal`,
  // exportable, mapped read-write here; this process owns its fd.
  static Result<std::unique_ptr<GpuMemory>> Create(int ordinal, size_t size);
  // Maps `size` bytes of the allocation behind `fd` (an fd another process exported) for
  // GPU `ordinal`. Takes `fd`: it is closed once imported (or on error). With `read_only`
  // kernels of this process may read it only (a write is an illegal address).
  static Result<std::unique_ptr<GpuMemory>> Import(int fd, size_t size, int ordinal, bool read_only);
  ~GpuMemory();
  GpuMemory(const GpuMemory&) = delete;
  GpuMemory& operator=(const GpuMemory&) = delete;

  uint64_t address() const { return address_; }  // a device address (CUDA's unified space)
  size_t size() const { return size_; }
  int ordinal() const { return ordinal_; }
  int fd() const { return fd_; }  // the exported fd (owner), -1 for an import

 private:
  GpuMemory(uint64_t handle, uint64_t address, size_t size, int ordinal, int fd)
      : handle_(handle), address_(address), size_(size), ordinal_(ordinal), fd_(fd) {}
  const uint64_t handle_;
  const uint64_t address_;
  const size_t size_;
  const int ordinal_;
  const int fd_;
};

}  // namespace shoal
