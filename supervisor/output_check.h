// CheckOutputTree: validates the output tree a worker sent for a job before shoald passes
// it to the client (docs/protocol.md, "Output trees"): the shape of every node, nesting
// depth, and that every tensor lies inside an arena the job's client owns. A worker is
// model code's process and is not trusted. Pure function; thread-compatible.
#pragma once

#include <cstdint>
#include <functional>
#include <msgpack.hpp>
#include <vector>

#include "shoal/status.h"

namespace shoal {

constexpr int kMaxOutputDepth = 16;

// True, with the arena's size, if the job may receive tensors in arena `arena`.
using ArenaSizeFn = std::function<bool(uint64_t arena, uint64_t* size)>;

// On success, *blocks holds the arena blocks of the non-empty output tensors (so that they
// can be given back to the worker when nobody will read them).
Status CheckOutputTree(const msgpack::object& tree, const ArenaSizeFn& arena_size,
                       std::vector<uint64_t>* blocks);

}  // namespace shoal
