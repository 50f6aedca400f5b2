#include "shm/block_allocator.h"

#include <algorithm>
#include <string>

namespace shoal {

BlockAllocator::BlockAllocator(uint64_t size) {
  uint64_t end = size / kAlignment * kAlignment;
  capacity_ = end > kFirstBlock ? end - kFirstBlock : 0;
  free_bytes_ = capacity_;
  if (capacity_ > 0)
    free_[kFirstBlock] = capacity_;
}

Result<uint64_t> BlockAllocator::Allocate(uint64_t nbytes) {
  if (nbytes == 0)
    nbytes = 1;
  // Cannot fit when larger than the capacity; clamped so the rounding cannot
  // overflow.
  uint64_t len = (std::min(nbytes, capacity_ + 1) + kAlignment - 1) /
                 kAlignment * kAlignment;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < len)
      continue;
    uint64_t off = it->first;
    uint64_t rest = it->second - len;
    free_.erase(it);
    if (rest > 0)
      free_[off + len] = rest;
    used_[off] = len;
    free_bytes_ -= len;
    return off;
  }
  return Status(Code::kArenaFull,
                "no room for a block of " + std::to_string(nbytes) +
                    " bytes (" + std::to_string(free_bytes_) + " of " +
                    std::to_string(capacity_) + " bytes free, " +
                    std::to_string(free_.size()) + " free ranges)");
}

bool BlockAllocator::Free(uint64_t offset) {
  auto u = used_.find(offset);
  if (u == used_.end())
    return false;
  uint64_t len = u->second;
  used_.erase(u);
  free_bytes_ += len;
  auto next = free_.lower_bound(offset);
  if (next != free_.end() &&
      next->first == offset + len) { // merge with the range after
    len += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) { // merge with the range before
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += len;
      return true;
    }
  }
  free_[offset] = len;
  return true;
}

} // namespace shoal
