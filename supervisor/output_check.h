// CheckOutputTree: validates the output tree a worker sent for a job before
// shoald passes it to the client (docs/protocol.md, "Output tree"): the shape
// of every node, nesting depth, and that every tensor lies inside an arena the
// job's client may use: one of its own (an input the model returned, or a view
// of it) or an output arena the worker made for that client. Writes the tree
// again with the arena ids the client knows (a worker names its own arenas by
// its own ids) and lists the blocks of worker arenas, so that they can be
// released when nobody will read them. A worker is model code's process and is
// not trusted. Pure function; thread-compatible.
#pragma once

#include <cstdint>
#include <functional>
#include <msgpack.hpp>
#include <vector>

#include "protocol/messages.h"
#include "protocol/output_tree.h"  // kMaxOutputDepth, kMaxTupleNameBytes
#include "shoal/status.h"

namespace shoal {


// What an arena id of a worker's reply stands for, if the job's client may see
// it.
struct OutputArenaRef {
  uint64_t id = 0; // the client's id for it
  uint64_t size = 0;
  bool by_worker =
      false; // a worker output arena (its blocks are the worker's to free)
};
// False when the job may not receive tensors in arena `arena` (as the worker
// named it).
using ArenaResolveFn = std::function<bool(uint64_t arena, OutputArenaRef *ref)>;

// A block of a worker output arena, named as the worker names it.
struct WorkerBlock {
  uint64_t arena = 0;
  uint64_t block = 0;
};

// On success, *out (if not null) holds the tree with the client's arena ids,
// and *blocks the blocks of non-empty tensors in worker arenas. `worker_gpu`: the
// PCI bus id of the worker's GPU ("" none); an empty tensor's "gpu" passes only when
// it names that GPU (a tensor with bytes is where its arena is: its "gpu" is dropped).
Status CheckOutputTree(const msgpack::object &tree,
                       const ArenaResolveFn &resolve, Writer *out,
                       std::vector<WorkerBlock> *blocks,
                       const std::string &worker_gpu = "");

} // namespace shoal
