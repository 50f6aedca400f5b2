#include "supervisor/arena_table.h"

#include "shm/memfd.h"

namespace shoal {

Result<uint64_t> ArenaTable::Register(uint64_t owner, std::shared_ptr<OwnedFd> fd) {
  auto size = CheckArenaFd(fd->get());
  if (!size.ok()) return size.status();
  ArenaEntry a;
  a.id = next_id_++;
  a.owner = owner;
  a.size = *size;
  a.fd = std::move(fd);
  arenas_[a.id] = a;
  return a.id;
}

void ArenaTable::Drop(uint64_t id) { arenas_.erase(id); }

const ArenaEntry* ArenaTable::Find(uint64_t id) const {
  auto it = arenas_.find(id);
  return it == arenas_.end() ? nullptr : &it->second;
}

const ArenaEntry* ArenaTable::FindOwned(uint64_t id, uint64_t owner) const {
  const ArenaEntry* a = Find(id);
  return a != nullptr && a->owner == owner ? a : nullptr;
}

}  // namespace shoal
