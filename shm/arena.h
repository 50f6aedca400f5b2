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
// Thread-safety: Allocate/Free/FreeBytes may be called from any thread of the
// owner (a mutex guards the bookkeeping); base()/size()/fd() are immutable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "shm/block_allocator.h"
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

  ~Arena();
  Arena(const Arena &) = delete;
  Arena &operator=(const Arena &) = delete;

  int fd() const { return fd_; } // -1 for a peer's mapping
  size_t size() const { return size_; }
  uint8_t *base() const { return base_; }
  bool owned() const { return allocator_ != nullptr; }

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
        std::unique_ptr<BlockAllocator> allocator);

  const int fd_;
  const size_t size_;
  uint8_t *const base_;
  mutable std::mutex mu_;
  const std::unique_ptr<BlockAllocator>
      allocator_; // GUARDED_BY(mu_); null on a peer's mapping
};

} // namespace shoal
