#include "shm/output_arenas.h"

#include <algorithm>
#include <string>

namespace shoal {

Result<OutputBlock> OutputArenas::Allocate(uint64_t client, uint64_t nbytes,
                                           const OutputLimits &limits,
                                           int device) {
  std::lock_guard<std::mutex> lock(mu_);
  uint32_t count = 0;
  uint64_t in_use = 0;
  for (auto &[id, e] : arenas_) {
    if (e.client != client)
      continue;
    ++count;
    in_use += e.arena->UsedBytes();
    if (e.device != device)
      continue;
    if (auto off = e.arena->Allocate(nbytes); off.ok())
      return OutputBlock{id, *off, e.arena->base() + *off};
  }
  if (count >= limits.arenas_per_client) {
    return Status(Code::kArenaFull,
                  "no room for an output of " + std::to_string(nbytes) +
                      " bytes: this worker's " + std::to_string(count) +
                      " output arenas for the connection hold " +
                      std::to_string(in_use) +
                      " bytes of results not yet released; drop results "
                      "sooner or raise output_arenas / output_arena_mb");
  }
  // Room for the block past the reserved first bytes, rounded to whole pages.
  uint64_t need =
      nbytes + BlockAllocator::kFirstBlock + BlockAllocator::kAlignment;
  // GPU memory is scarcer than host memory: a GPU arena is at most 16 MiB unless one
  // output needs more (each is rounded to the GPU's granularity, 2 MiB on an H100).
  uint64_t base = device < 0 ? limits.arena_bytes
                             : std::min<uint64_t>(limits.arena_bytes, 16u << 20);
  uint64_t size = std::max<uint64_t>(base, (need + 4095) / 4096 * 4096);
  auto arena = device < 0 ? Arena::Create("shoal-output", size)
                          : Arena::CreateGpu(device, size);
  if (!arena.ok()) {
    return Status(Code::kArenaFull, "cannot make an output arena of " +
                                        std::to_string(size) +
                                        " bytes: " + arena.status().message());
  }
  uint64_t id = kWorkerArenaBit | (uint64_t{owner_} << 40) | next_++;
  auto off = (*arena)->Allocate(nbytes);
  if (!off.ok())
    return off.status();
  uint8_t *data = (*arena)->base() + *off;
  arenas_[id] = Entry{client, std::move(*arena), false, device};
  return OutputBlock{id, *off, data};
}

bool OutputArenas::Free(uint64_t arena, uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = arenas_.find(arena);
  return it != arenas_.end() && it->second.arena->Free(offset);
}

void OutputArenas::DropClient(uint64_t client) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = arenas_.begin(); it != arenas_.end();) {
    it = it->second.client == client ? arenas_.erase(it) : std::next(it);
  }
}

std::vector<NewOutputArena> OutputArenas::TakeNew(uint64_t client) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<NewOutputArena> out;
  for (auto &[id, e] : arenas_) {
    if (e.client != client || e.announced)
      continue;
    e.announced = true;
    out.push_back({id, e.arena->size(), e.device, e.arena->fd()});
  }
  return out;
}

OutputUsage OutputArenas::Usage() const {
  std::lock_guard<std::mutex> lock(mu_);
  OutputUsage u;
  u.owner = owner_;
  u.arenas = arenas_.size();
  for (const auto &[id, e] : arenas_)
    u.bytes += e.arena->UsedBytes();
  return u;
}

} // namespace shoal
