// ArenaTable: every arena shoald knows, by the id clients use, with who owns
// its blocks and which connection may use it (docs/architecture.md, "Memory
// ownership"):
//   - client arenas: a memfd a client registered (SCM_RIGHTS); the client owns
//   its blocks.
//     shoald keeps the fd to send it to the workers that read inputs from it.
//   - worker output arenas: a memfd a worker made for one client connection and
//   announced
//     with a reply; that worker (slot + generation, and its own id for the
//     arena) owns the blocks. shoald keeps the fd only until it has passed it
//     on to the client.
// Knows nothing of jobs; workers only by (slot, generation).
// Thread-safety: loop thread only.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "shoal/status.h"
#include "supervisor/async_channel.h"

namespace shoal {

struct ArenaEntry {
  uint64_t id = 0;
  uint64_t owner =
      0; // the client session that may use it (and, for client arenas, owns it)
  size_t size = 0;
  std::shared_ptr<OwnedFd>
      fd; // worker arenas: null once passed on to the client
  // Worker output arenas only:
  int worker = -1;         // slot of the owning worker; -1 for a client arena
  uint64_t generation = 0; // ... and its generation
  uint64_t local = 0;      // the worker's id of the arena (kWorkerArenaBit set)
  bool delivered = false;  // the client has its fd
  std::string gpu;         // GPU arenas: the GPU's PCI bus id; empty for a memfd

  bool by_worker() const { return worker >= 0; }
};

class ArenaTable {
public:
  ArenaTable() = default;
  ArenaTable(const ArenaTable &) = delete;
  ArenaTable &operator=(const ArenaTable &) = delete;

  // Checks that `fd` is a sealed-size memfd arena (shm/memfd.h), or with a
  // `gpu` (PCI bus id) an exported GPU allocation of `gpu_size` bytes
  // (shm/gpu_memory.h), and records it as a client arena of `owner`; returns
  // its id. `fd` is closed on error.
  Result<uint64_t> Register(uint64_t owner, std::shared_ptr<OwnedFd> fd,
                            const std::string &gpu = "",
                            uint64_t gpu_size = 0);
  // Records the output arena `local` that worker (slot, generation) made for
  // client `owner`; returns its id. Checks the fd like Register; announcing the
  // same arena twice returns the first id (the new fd is closed).
  Result<uint64_t> RegisterWorkerArena(uint64_t owner, int slot,
                                       uint64_t generation, uint64_t local,
                                       std::shared_ptr<OwnedFd> fd,
                                       const std::string &gpu = "",
                                       uint64_t gpu_size = 0);
  void Drop(uint64_t id);
  // A worker died or retired: its arenas are forgotten (clients keep their
  // mappings).
  void DropWorker(int slot, uint64_t generation);
  // A client hung up: the worker arenas made for it are forgotten.
  void DropClientOutputs(uint64_t owner);
  // The arena, or nullptr.
  const ArenaEntry *Find(uint64_t id) const;
  ArenaEntry *FindMutable(uint64_t id);
  // A client arena `owner` registered, else nullptr (worker arenas are not
  // inputs).
  const ArenaEntry *FindOwned(uint64_t id, uint64_t owner) const;
  // The worker arena (slot, generation, local), or nullptr.
  ArenaEntry *FindWorkerArena(int slot, uint64_t generation, uint64_t local);
  size_t size() const { return arenas_.size(); }
  // Bytes of the client arenas registered now, in host memory (memfds) and on GPUs.
  struct Bytes {
    uint64_t host = 0, gpu = 0;
  };
  Bytes ClientArenaBytes() const;

private:
  uint64_t next_id_ = 1;
  std::map<uint64_t, ArenaEntry> arenas_;
  std::map<std::tuple<int, uint64_t, uint64_t>, uint64_t>
      by_worker_; // (slot, gen, local) -> id
};

} // namespace shoal
