// The replies to one batched infer (docs/protocol.md, "Batches"): the Python runner runs a
// batch once and hands its worker loop one bundle, {"replies": [bin, ...], "fds": [n, ...]},
// with every member's reply (each exactly an unbatched job's reply, under the member's job
// id) and the fds of the output arenas each announces, in order. The worker sends them to
// shoald as that many frames, each with its own fds, back to back in as few writes as the
// fds allow (JoinFrames). Thread-safety: pure functions.
#pragma once

#include <vector>

#include "protocol/output_tree.h"
#include "shoal/status.h"

namespace shoal {

// The member replies of `bundle`, each with its fds (taken from bundle.fds in order).
// Internal when the bundle is malformed or its counts do not add up to its fds.
Result<std::vector<EncodedReply>> SplitReplyBundle(const EncodedReply& bundle);

// `replies` framed back to back, in order, grouped into writes of at most kMaxFdsPerFrame
// fds (what a receiver takes in one recvmsg): `body` of each is whole frames, to send as
// it is (SendAll) with its `fds`, which go on its first byte, no later than their frame's.
std::vector<EncodedReply> JoinFrames(const std::vector<EncodedReply>& replies);

}  // namespace shoal
