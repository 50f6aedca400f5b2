// ArenaTable: the shared-memory arenas clients registered (memfds passed with
// SCM_RIGHTS), by id, with the client session that owns each. Holds each arena's fd so that
// it can be sent to workers; knows nothing of workers or jobs.
// Thread-safety: loop thread only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "shoal/status.h"
#include "supervisor/async_channel.h"

namespace shoal {

struct ArenaEntry {
  uint64_t id = 0;
  uint64_t owner = 0;  // client session id
  size_t size = 0;
  std::shared_ptr<OwnedFd> fd;
};

class ArenaTable {
 public:
  ArenaTable() = default;
  ArenaTable(const ArenaTable&) = delete;
  ArenaTable& operator=(const ArenaTable&) = delete;

  // Checks that `fd` is a sealed-size memfd arena (shm/memfd.h) and records it for `owner`;
  // returns its id. `fd` is closed on error.
  Result<uint64_t> Register(uint64_t owner, std::shared_ptr<OwnedFd> fd);
  void Drop(uint64_t id);
  // The arena, or nullptr.
  const ArenaEntry* Find(uint64_t id) const;
  // The arena if `owner` registered it, else nullptr.
  const ArenaEntry* FindOwned(uint64_t id, uint64_t owner) const;
  size_t size() const { return arenas_.size(); }

 private:
  uint64_t next_id_ = 1;
  std::map<uint64_t, ArenaEntry> arenas_;
};

}  // namespace shoal
