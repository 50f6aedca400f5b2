// Release notices as a worker reads them, and the usage notices it owes shoald after them.
//
// A release's usage notice is not sent at once: the next job's reply carries its owner's
// usage anyway (computed after the release, which was read first), and a notice a job
// costs shoald a wake-up and the worker a send. Such a reply settles the notice (Settle);
// the rest go when the reading thread would otherwise block (Recv), each computed then
// (the owner's usage at that moment, not at the release). A reply of another owner does
// not carry this one's usage: its notice waits. (With several lanes a lane's reply may
// still carry a usage computed before a release and reach shoald after the notice:
// `status` figures, no accounting.) An owner is one engine of one lane
// (shm/output_arenas.h). Thread-compatible: the worker's reading thread uses it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "protocol/frame.h"
#include "protocol/messages.h"
#include "shoal/status.h"

namespace shoal {

// A release notice, read: the output arena, its owner (the TorchScript runner or the
// Python runner of a lane: the arena id says which) and the blocks.
struct ReleaseNotice {
  uint64_t arena = 0;
  uint32_t lane = 0;
  bool torchscript = false;
  std::vector<uint64_t> blocks;
};
// nullopt for an arena no owner in a worker could have made.
std::optional<ReleaseNotice> ReadRelease(const MapView& m);

class OwedUsage {
 public:
  // The usage notice of release `r`'s owner is owed.
  void Owe(const ReleaseNotice& r) { arena_[{r.lane, r.torchscript}] = r.arena; }
  // `reply`, just sent, settles the notice of the owner whose usage it carries
  // (`usage.owner`: lane x 2, + 1 for TorchScript).
  void Settle(const std::string& reply);
  bool owes() const { return !arena_.empty(); }

  // The owner's usage notice now (`r` has no blocks), as the owner's Release makes it.
  using Notice = std::function<std::string(const ReleaseNotice& r)>;
  // False: shoald is gone.
  using Send = std::function<bool(const std::string& body)>;
  // The next message, as RecvFrame; first, when none has come yet, every notice owed,
  // made now by `notice` and sent by `send`. False from `send` gives Code::kUnavailable.
  Result<std::string> Recv(int fd, FrameReader* reader, std::vector<int>* fds, const Send& send, const Notice& notice);

 private:
  std::map<std::pair<uint32_t, bool>, uint64_t> arena_;  // (lane, TorchScript?) -> an arena of that owner
};

}  // namespace shoal
