// Arena: a sealed memfd mapped into this process, and, for the arena's owner
// only, the allocator of its blocks.
//
// Every arena has exactly one owner: the process that created it (Create). Only
// the owner allocates and frees blocks, and its bookkeeping
// (shm/block_allocator.h) lives in the owner's private memory; the shared
// region holds tensor bytes and nothing else. A peer maps an arena it was sent
// (Open) and reads or writes the bytes a descriptor names; Allocate on a peer's
// mapping is refused. Offsets, not pointers, cross processes. Owners: a client
// for the arenas its inputs live in, a worker for the output arenas it makes
// for one client connection (shm/output_arenas.h). shoald never maps arenas.
// GPU arenas (CreateGpu/OpenGpu) are the same with GPU memory passed as an fd
// (shm/gpu_memory.h): base() is then a device address, never dereferenced on
// the host, and device() the GPU's ordinal in this process (-1: host memory).
// Thread-safety: Allocate/Free/FreeBytes may be called from any thread of the
// owner (a mutex guards the bookkeeping); base()/size()/fd() are immutable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "shm/block_allocator.h"
#include "shm/gpu_memory.h"
#include "shoal/status.h"

namespace shoal {

class Arena {
public:
  static constexpr size_t kAlignment = BlockAllocator::kAlignment;

  // Creates a sealed memfd of `size` bytes, maps it and becomes its owner.
  static Result<std::unique_ptr<Arena>> Create(const std::string &name,
                                               size_t size);
  // Maps a peer's arena; takes `fd` and closes it once mapped (or on error):
  // the mapping keeps the memory. It has no allocator and no fd: this process
  // only reads and writes the bytes descriptors name, and never passes the
  // arena on.
  static Result<std::unique_ptr<Arena>> Open(int fd);
  // The same on GPU `ordinal`: a new exportable allocation of at least `size`
  // bytes (rounded to the GPU's granularity), and a peer's, mapped at its
  // announced `size` (refused when the allocation is smaller). OpenGpu takes
  // `fd`.
  static Result<std::unique_ptr<Arena>> CreateGpu(int ordinal, size_t size);
  static Result<std::unique_ptr<Arena>> OpenGpu(int fd, size_t size,
                                                int ordinal);

  ~Arena();
  Arena(const Arena &) = delete;
  Arena &operator=(const Arena &) = delete;

  int fd() const { return fd_; } // -1 for a peer's mapping
  size_t size() const { return size_; }
  uint8_t *base() const { return base_; }
  bool owned() const { return allocator_ != nullptr; }
  int device() const { return gpu_ ? gpu_->ordinal() : -1; }

  // Owner only: a 64-byte aligned block of at least `nbytes`; returns its
  // offset.
  Result<uint64_t> Allocate(size_t nbytes);
  // Owner only: frees a block this arena handed out; false (and nothing
  // happens) for any other offset, and on a peer's mapping.
  bool Free(uint64_t offset);
  // Bytes not handed out (0 on a peer's mapping), and bytes in blocks.
  size_t FreeBytes() const;
  size_t UsedBytes() const;
  // True when [offset, offset + len) lies inside the mapping.
  bool Contains(uint64_t offset, uint64_t len) const {
    return offset <= size_ && len <= size_ - offset;
  }

private:
  Arena(int fd, size_t size, uint8_t *base,
        std::unique_ptr<BlockAllocator> allocator,
        std::unique_ptr<GpuMemory> gpu = nullptr);

  const int fd_;
  const size_t size_;
  uint8_t *const base_;
  mutable std::mutex mu_;
  const std::unique_ptr<BlockAllocator>
      allocator_; // GUARDED_BY(mu_); null on a peer's mapping
  const std::unique_ptr<GpuMemory> gpu_; // GPU arenas: the memory (owns the fd)
};

} // namespace shoal
