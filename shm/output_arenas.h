// OutputArenas: the arenas one owner inside a worker makes for the outputs of
// its jobs, one set per client connection, so that no client can read another's
// results.
//
// An owner is one engine of one interpreter lane (the Python runner of lane i,
// or the TorchScript runner of lane i): each is used by one thread at a time,
// in order, so the arenas a job's reply announces are exactly those made since
// the owner's last reply. An arena is made when a job of a client first needs
// output space (max(default, need) bytes) and more are made when those are
// full, up to a per-client count. Blocks are allocated with private bookkeeping
// (shm/arena.h); Free takes back only blocks handed out here and not freed
// since, so a forged, repeated or foreign offset changes nothing. Arena ids
// carry kWorkerArenaBit and the owner's tag, so that shoald can tell them from
// client arenas and the worker can route a release to the owner.
// Thread-safety: every method may be called from any thread (one mutex).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "shm/arena.h"
#include "shoal/status.h"

namespace shoal {

constexpr uint64_t kWorkerArenaBit = uint64_t{1} << 63;
// The owner tag of lane `lane`'s engine (python: 0, torchscript: 1).
inline uint32_t OutputOwnerTag(uint32_t lane, bool torchscript) {
  return lane * 2 + (torchscript ? 1 : 0);
}
inline bool IsWorkerArena(uint64_t id) { return (id & kWorkerArenaBit) != 0; }
inline uint32_t OwnerOfWorkerArena(uint64_t id) {
  return static_cast<uint32_t>((id >> 40) & 0x7fffff);
}

struct OutputLimits {
  uint64_t arena_bytes =
      64u << 20; // size of a new arena (more when one output needs it)
  uint32_t arenas_per_client =
      8; // arenas this owner makes for one connection, at most
};

struct OutputBlock {
  uint64_t arena = 0; // the arena's id (with kWorkerArenaBit)
  uint64_t offset = 0;
  uint8_t *data = nullptr;
};

struct NewOutputArena {
  uint64_t arena = 0;
  uint64_t size = 0;
  int device = -1; // GPU ordinal in this process; -1: a memfd
  int fd = -1; // owned by OutputArenas; valid until DropClient of its client
};

struct OutputUsage {
  uint32_t owner = 0;
  uint64_t bytes = 0;  // in blocks handed out and not yet freed
  uint64_t arenas = 0; // arenas mapped
};

class OutputArenas {
public:
  explicit OutputArenas(uint32_t owner_tag) : owner_(owner_tag) {}
  OutputArenas(const OutputArenas &) = delete;
  OutputArenas &operator=(const OutputArenas &) = delete;

  // A block of `nbytes` in one of `client`'s arenas on `device` (-1: host
  // memory, else a GPU ordinal: a GPU arena), making one if none has room and
  // the limit (per client, all devices together) allows. ARENA_FULL says what
  // is in use and which setting to raise.
  Result<OutputBlock> Allocate(uint64_t client, uint64_t nbytes,
                               const OutputLimits &limits, int device = -1);
  // Frees a block handed out here; false (nothing happens) for anything else.
  bool Free(uint64_t arena, uint64_t offset);
  // The client is gone: its arenas are unmapped and closed (a client that holds
  // them keeps its own mapping).
  void DropClient(uint64_t client);
  // Arenas of `client` not yet announced to shoald; they count as announced
  // from now on.
  std::vector<NewOutputArena> TakeNew(uint64_t client);
  OutputUsage Usage() const;
  uint32_t owner() const { return owner_; }

private:
  struct Entry {
    uint64_t client = 0;
    std::unique_ptr<Arena> arena;
    bool announced = false;
    int device = -1;
  };
  const uint32_t owner_;
  mutable std::mutex mu_;
  uint64_t next_ = 1; // GUARDED_BY(mu_)
  std::map<uint64_t, Entry>
      arenas_; // GUARDED_BY(mu_): by id, in creation order
};

} // namespace shoal
