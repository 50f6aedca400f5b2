// The replies to one batched infer (docs/protocol.md, "Batches"): the Python runner runs a
// batch once and hands its worker loop one bundle, {"replies": [bin, ...], "fds": [n, ...]},
// with every member's reply (each exactly an unbatched job's reply, under the member's job
// id) and the fds of the output arenas each announces, in order. The worker sends them to
// shoald as that many frames, each with its own fds. Thread-safety: pure functions.
#pragma once

#include <vector>

#include "protocol/output_tree.h"
#include "shoal/status.h"

namespace shoal {

// The member replies of `bundle`, each with its fds (taken from bundle.fds in order).
// Internal when the bundle is malformed or its counts do not add up to its fds.
Result<std::vector<EncodedReply>> SplitReplyBundle(const EncodedReply& bundle);

}  // namespace shoal
