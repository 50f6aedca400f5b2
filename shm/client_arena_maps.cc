// Client arenas a worker's engine maps on demand (shm/client_arena_maps.h).
#include "shm/client_arena_maps.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "shm/gpu_memory.h"

namespace shoal {

ClientArenaMaps::~ClientArenaMaps() {
  for (auto& [id, slot] : arenas_) close(slot.fd);
}

void ClientArenaMaps::Add(uint64_t id, int fd, uint64_t size, const std::string& gpu_bus) {
  std::lock_guard<std::mutex> lock(mu_);
  Slot& slot = arenas_[id];
  if (slot.fd >= 0) close(slot.fd);
  slot = Slot{fd, size, gpu_bus, nullptr};
}

void ClientArenaMaps::Drop(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = arenas_.find(id);
  if (it == arenas_.end()) return;
  close(it->second.fd);
  arenas_.erase(it);
}

Result<std::shared_ptr<Arena>> ClientArenaMaps::Map(uint64_t id, const std::set<uint64_t>& keep) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = arenas_.find(id);
  if (it == arenas_.end()) return Status(Code::kUnavailable, "shoald never sent client arena " + std::to_string(id));
  if (it->second.mapping) return it->second.mapping;
  const Slot& slot = it->second;
  const std::string what = "cannot map the client's arena " + std::to_string(id);
  int fd = fcntl(slot.fd, F_DUPFD_CLOEXEC, 0);  // Open takes the fd; ours stays for a later mapping
  if (fd < 0) return Status::FromErrno(what + " (dup)", errno);
  if (!slot.gpu_bus.empty()) {
    // GPU memory: its failure is the arena's, not the address space's; nothing else is
    // dropped for it.
    auto ordinal = GpuOrdinalOfBus(slot.gpu_bus);
    if (!ordinal.ok()) {
      close(fd);
      return Status(Code::kUnavailable, what + ": it is on GPU " + slot.gpu_bus + ", which this worker cannot use (" +
                                            ordinal.status().message() + "); pass tensors on the GPU of the model's workers");
    }
    auto gpu = Arena::OpenGpu(fd, slot.size, *ordinal);
    if (!gpu.ok()) return Status(Code::kUnavailable, what + ": " + gpu.status().message());
    it->second.mapping = std::shared_ptr<Arena>(std::move(*gpu));
    return it->second.mapping;
  }
  auto mapped = Arena::Open(fd);
  if (!mapped.ok()) {
    for (auto& [other, s] : arenas_) {
      if (keep.count(other) == 0 && s.gpu_bus.empty()) s.mapping.reset();  // unmapped once its last holder lets go
    }
    fd = fcntl(slot.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return Status::FromErrno(what + " (dup)", errno);
    mapped = Arena::Open(fd);
  }
  if (!mapped.ok()) {
    return Status(Code::kUnavailable, what + " (" + mapped.status().message() +
                                          ") even with the idle ones unmapped; is worker_address_space_mb too small?");
  }
  it->second.mapping = std::shared_ptr<Arena>(std::move(*mapped));
  return it->second.mapping;
}

size_t ClientArenaMaps::mapped() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& [id, slot] : arenas_) n += slot.mapping != nullptr;
  return n;
}

}  // namespace shoal
