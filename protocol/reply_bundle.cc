#include "protocol/reply_bundle.h"

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

namespace shoal {

Result<std::vector<EncodedReply>> SplitReplyBundle(const EncodedReply& bundle) {
  auto oh = Decode(bundle.body);
  if (!oh.ok()) return Status::Internal("batch reply bundle: " + oh.status().message());
  MapView m(oh->get());
  auto replies = m.Array("replies");
  auto counts = m.Array("fds");
  if (!replies.ok() || !counts.ok() || (*replies)->via.array.size != (*counts)->via.array.size) {
    return Status::Internal("batch reply bundle without matching \"replies\" and \"fds\"");
  }
  std::vector<EncodedReply> out;
  size_t next_fd = 0;
  for (uint32_t i = 0; i < (*replies)->via.array.size; ++i) {
    const msgpack::object& r = (*replies)->via.array.ptr[i];
    const msgpack::object& n = (*counts)->via.array.ptr[i];
    if (r.type != msgpack::type::BIN || n.type != msgpack::type::POSITIVE_INTEGER || n.via.u64 > kMaxFdsPerFrame ||
        n.via.u64 > bundle.fds.size() - next_fd) {
      return Status::Internal("batch reply bundle: reply " + std::to_string(i) + " is malformed");
    }
    EncodedReply e;
    e.body.assign(r.via.bin.ptr, r.via.bin.size);
    e.fds.assign(bundle.fds.begin() + static_cast<long>(next_fd), bundle.fds.begin() + static_cast<long>(next_fd + n.via.u64));
    next_fd += n.via.u64;
    out.push_back(std::move(e));
  }
  if (next_fd != bundle.fds.size()) return Status::Internal("batch reply bundle: fds left over");
  return out;
}

std::vector<EncodedReply> JoinFrames(const std::vector<EncodedReply>& replies) {
  std::vector<EncodedReply> writes;
  for (const auto& r : replies) {
    if (r.body.empty()) continue;  // nothing to send (as a frame of its own would not be)
    if (writes.empty() || writes.back().fds.size() + r.fds.size() > kMaxFdsPerFrame) writes.emplace_back();
    AppendFrame(&writes.back().body, r.body);
    writes.back().fds.insert(writes.back().fds.end(), r.fds.begin(), r.fds.end());
  }
  return writes;
}

}  // namespace shoal
