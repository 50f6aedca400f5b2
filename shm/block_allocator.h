// BlockAllocator: the bookkeeping of one arena's blocks, kept in its owner's
// private memory (never in the shared region: a peer that can write the arena
// must not be able to steer its owner's allocator; see "Memory ownership" in
// docs/architecture.md).
//
// A first-fit free list over [kFirstBlock, size): blocks are 64-byte aligned;
// the first 64 bytes are never handed out, so that block offset 0 always means
// "no block" on the wire. Free accepts only offsets this allocator handed out
// and has not taken back: any other offset (forged, already freed, inside a
// block) is refused and changes nothing. Thread-compatible: the owner
// serialises calls (shm::Arena holds a mutex for it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

#include "shoal/status.h"

namespace shoal {

class BlockAllocator {
public:
  static constexpr uint64_t kAlignment = 64;
  static constexpr uint64_t kFirstBlock = 64;

  // Manages [kFirstBlock, size) rounded down to the alignment.
  explicit BlockAllocator(uint64_t size);
  BlockAllocator(const BlockAllocator &) = delete;
  BlockAllocator &operator=(const BlockAllocator &) = delete;

  // A block of at least `nbytes` (0 counts as 1); ARENA_FULL when no free range
  // fits.
  Result<uint64_t> Allocate(uint64_t nbytes);
  // Takes back the block at `offset`; false (and nothing changes) unless it is
  // a block handed out by Allocate and not freed since.
  bool Free(uint64_t offset);
  bool Owns(uint64_t offset) const { return used_.count(offset) != 0; }
  uint64_t free_bytes() const { return free_bytes_; }
  uint64_t used_bytes() const { return capacity_ - free_bytes_; }
  size_t blocks() const { return used_.size(); }
  uint64_t capacity() const { return capacity_; }

private:
  uint64_t capacity_;
  uint64_t free_bytes_;
  std::map<uint64_t, uint64_t>
      free_; // offset -> length of each free range, coalesced
  std::map<uint64_t, uint64_t>
      used_; // offset -> length of each block handed out
};

} // namespace shoal
