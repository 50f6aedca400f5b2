// ClientArenaMaps: the client arenas one engine of a worker was sent, mapped only when a
// job first reads them.
//
// shoald sends a client arena's fd once (it bounds how many a worker holds:
// worker_arenas, worker_arena_mb); the fd is kept, and the arena mapped when a job needs
// it. When a mapping fails (the address space is full: worker_address_space_mb, or the
// kernel's map count), every mapping the job being prepared does not need is dropped and
// the mapping is tried once more; a dropped arena is mapped again, from its fd, by the
// next job that reads it. A mapping is shared: whoever holds it (the tensors of a job
// running on another lane, or model code that kept an input) keeps its memory valid, and
// the memory goes when the last holder does. This is the policy of both of a worker's
// engines: the Python runner (python/shoal/_worker.py, through
// shoal._native.ClientArenas) and the TorchScript runner (worker/torchscript.cc).
// Thread-safety: every method may be called from any thread (one mutex).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "shm/arena.h"
#include "shoal/status.h"

namespace shoal {

class ClientArenaMaps {
 public:
  ClientArenaMaps() = default;
  ~ClientArenaMaps();  // closes the fds it holds; mappings live on with their holders
  ClientArenaMaps(const ClientArenaMaps&) = delete;
  ClientArenaMaps& operator=(const ClientArenaMaps&) = delete;

  // Takes `fd`, client arena `id`'s memfd, or with `gpu_bus` (a GPU's PCI bus id) its GPU
  // memory of `size` bytes (shm/gpu_memory.h); replaces an arena of that id.
  void Add(uint64_t id, int fd, uint64_t size = 0, const std::string& gpu_bus = "");
  // Forgets arena `id` (shoald dropped it): its fd is closed, its mapping dropped.
  void Drop(uint64_t id);
  // Arena `id`, mapped now if it is not. When mapping a memfd fails, the mappings of the
  // memfd arenas not in `keep` are dropped and it is tried once more (GPU arenas fail
  // alone: GPU memory is not the address space). UNAVAILABLE saying why and what to do:
  // never sent, a GPU this worker cannot use, the address space full even so.
  Result<std::shared_ptr<Arena>> Map(uint64_t id, const std::set<uint64_t>& keep);
  size_t mapped() const;  // arenas mapped now

 private:
  struct Slot {
    int fd = -1;
    uint64_t size = 0;    // announced size (GPU arenas are mapped at it)
    std::string gpu_bus;  // empty for a memfd
    std::shared_ptr<Arena> mapping;
  };
  mutable std::mutex mu_;
  std::map<uint64_t, Slot> arenas_;  // GUARDED_BY(mu_)
};

}  // namespace shoal
