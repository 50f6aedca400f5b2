// Arena: a memfd region shared by a client and the workers, with its block allocator
// living inside it.
//
// Layout: the Boost.Interprocess segment manager (an rbtree best-fit allocator with a
// process-shared mutex) sits at offset 0 of the region; blocks follow. All its internal
// pointers are offsets, so every process may map the region at its own address and
// allocate or free. Offsets, not pointers, cross process boundaries.
// The creator (a client) constructs the allocator; workers open it. Supervisor never maps.
// Thread-safety: Allocate/Free may be called from any thread of any process that maps
// the arena (the segment's mutex serialises them). A process that dies while holding
// that mutex (only possible inside Allocate/Free) leaves it locked: see docs/security.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "shoal/status.h"

namespace shoal {

class Arena {
 public:
  static constexpr size_t kAlignment = 64;

  // Creates a sealed memfd of `size` bytes, maps it and builds the allocator in it.
  static Result<std::unique_ptr<Arena>> Create(const std::string& name, size_t size);
  // Maps an existing arena; takes ownership of `fd` (closed by the destructor or on error).
  static Result<std::unique_ptr<Arena>> Open(int fd);

  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  int fd() const { return fd_; }
  size_t size() const { return size_; }
  uint8_t* base() const { return base_; }

  // A 64-byte aligned block of at least `nbytes` (>= 1); returns its offset.
  Result<uint64_t> Allocate(size_t nbytes);
  // Frees the block that starts at `offset` (as returned by Allocate, here or elsewhere).
  void Free(uint64_t offset);
  // Bytes not yet handed out.
  size_t FreeBytes() const;
  // True when [offset, offset + len) lies inside the mapping.
  bool Contains(uint64_t offset, uint64_t len) const {
    return offset <= size_ && len <= size_ - offset;
  }

 private:
  struct Segment;
  Arena(int fd, size_t size, uint8_t* base, std::unique_ptr<Segment> segment);

  int fd_;
  size_t size_;
  uint8_t* base_;
  std::unique_ptr<Segment> segment_;
};

}  // namespace shoal
