#include "worker/owed_usage.h"

#include <chrono>

#include "protocol/channel.h"
#include "shm/output_arenas.h"

namespace shoal {

std::optional<ReleaseNotice> ReadRelease(const MapView& m) {
  auto arena = m.Uint("arena");
  if (!arena.ok() || !IsWorkerArena(*arena)) return std::nullopt;
  uint32_t owner = OwnerOfWorkerArena(*arena);
  ReleaseNotice r{*arena, owner / 2, owner % 2 == 1, {}};
  if (auto blocks = m.Array("blocks"); blocks.ok()) {
    for (uint32_t i = 0; i < (*blocks)->via.array.size; ++i) {
      const auto& b = (*blocks)->via.array.ptr[i];
      if (b.type == msgpack::type::POSITIVE_INTEGER) r.blocks.push_back(b.via.u64);  // not an offset: not ours
    }
  }
  return r;
}

void OwedUsage::Settle(const std::string& reply) {
  if (arena_.empty()) return;
  auto oh = Decode(reply);
  if (!oh.ok()) return;
  const msgpack::object* usage = MapView(oh->get()).Find("usage");
  if (usage == nullptr || usage->type != msgpack::type::MAP) return;
  auto owner = MapView(*usage).Uint("owner");
  if (owner.ok()) arena_.erase({static_cast<uint32_t>(*owner / 2), *owner % 2 == 1});
}

Result<std::string> OwedUsage::Recv(int fd, FrameReader* reader, std::vector<int>* fds, const Send& send,
                                    const Notice& notice) {
  if (!arena_.empty()) {
    auto body = RecvFrame(fd, reader, fds, std::chrono::steady_clock::now());
    if (body.ok() || body.status().code() != Code::kTimeout) return body;
    for (const auto& [owner, arena] : arena_) {
      const auto& [lane, ts] = owner;
      if (!send(notice(ReleaseNotice{arena, lane, ts, {}}))) return Status(Code::kUnavailable, "shoald is gone");
    }
    arena_.clear();
  }
  return RecvFrame(fd, reader, fds);
}

}  // namespace shoal
