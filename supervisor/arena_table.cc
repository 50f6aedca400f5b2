#include "supervisor/arena_table.h"

#include "shm/gpu_memory.h"
#include "shm/memfd.h"

namespace shoal {

Result<uint64_t> ArenaTable::Register(uint64_t owner,
                                      std::shared_ptr<OwnedFd> fd,
                                      const std::string &gpu,
                                      uint64_t gpu_size) {
  Result<size_t> size = gpu_size;
  if (gpu.empty()) {
    size = CheckArenaFd(fd->get());
  } else if (auto st = CheckGpuArenaFd(fd->get(), gpu_size); !st.ok()) {
    return st;
  }
  if (!size.ok())
    return size.status();
  ArenaEntry a;
  a.id = next_id_++;
  a.owner = owner;
  a.size = *size;
  a.fd = std::move(fd);
  a.gpu = gpu;
  arenas_[a.id] = a;
  return a.id;
}

Result<uint64_t> ArenaTable::RegisterWorkerArena(uint64_t owner, int slot,
                                                 uint64_t generation,
                                                 uint64_t local,
                                                 std::shared_ptr<OwnedFd> fd,
                                                 const std::string &gpu,
                                                 uint64_t gpu_size) {
  if (auto it = by_worker_.find({slot, generation, local});
      it != by_worker_.end())
    return it->second;
  auto id = Register(owner, std::move(fd), gpu, gpu_size);
  if (!id.ok())
    return id.status();
  ArenaEntry& a = arenas_[*id];
  a.worker = slot;
  a.generation = generation;
  a.local = local;
  by_worker_[{slot, generation, local}] = a.id;
  return a.id;
}

void ArenaTable::Drop(uint64_t id) {
  auto it = arenas_.find(id);
  if (it == arenas_.end())
    return;
  if (it->second.by_worker())
    by_worker_.erase(
        {it->second.worker, it->second.generation, it->second.local});
  arenas_.erase(it);
}

void ArenaTable::DropWorker(int slot, uint64_t generation) {
  for (auto it = arenas_.begin(); it != arenas_.end();) {
    bool mine =
        it->second.worker == slot && it->second.generation == generation;
    if (mine)
      by_worker_.erase({slot, generation, it->second.local});
    it = mine ? arenas_.erase(it) : std::next(it);
  }
}

void ArenaTable::DropClientOutputs(uint64_t owner) {
  for (auto it = arenas_.begin(); it != arenas_.end();) {
    bool drop = it->second.by_worker() && it->second.owner == owner;
    if (drop)
      by_worker_.erase(
          {it->second.worker, it->second.generation, it->second.local});
    it = drop ? arenas_.erase(it) : std::next(it);
  }
}

const ArenaEntry *ArenaTable::Find(uint64_t id) const {
  auto it = arenas_.find(id);
  return it == arenas_.end() ? nullptr : &it->second;
}

ArenaEntry *ArenaTable::FindMutable(uint64_t id) {
  auto it = arenas_.find(id);
  return it == arenas_.end() ? nullptr : &it->second;
}

const ArenaEntry *ArenaTable::FindOwned(uint64_t id, uint64_t owner) const {
  const ArenaEntry *a = Find(id);
  return a != nullptr && a->owner == owner && !a->by_worker() ? a : nullptr;
}

ArenaEntry *ArenaTable::FindWorkerArena(int slot, uint64_t generation,
                                        uint64_t local) {
  auto it = by_worker_.find({slot, generation, local});
  return it == by_worker_.end() ? nullptr : FindMutable(it->second);
}

ArenaTable::Bytes ArenaTable::ClientArenaBytes() const {
  Bytes b;
  for (const auto &[id, a] : arenas_) {
    if (a.by_worker()) continue;
    (a.gpu.empty() ? b.host : b.gpu) += a.size;
  }
  return b;
}

} // namespace shoal
