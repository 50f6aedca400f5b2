#include "worker/router.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/reply_bundle.h"
#include "shm/output_arenas.h"
#include "worker/job_deadline.h"
#include "worker/lanes.h"
#include "worker/torchscript.h"

namespace shoal {

namespace {

// A release notice, read: the output arena, its owner (the TorchScript runner or the
// Python runner of a lane: the arena id says which, shm/output_arenas.h) and the blocks.
struct ReleaseNotice {
  uint64_t arena = 0;
  uint32_t lane = 0;
  bool torchscript = false;
  std::vector<uint64_t> blocks;
};
// nullopt for an arena no owner here could have made.
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

// Frees a release's blocks where they were handed out, in C++ for either engine (no GIL,
// no Python); with `notice`, the owner's usage notice for shoald (else "").
std::string Release(const ReleaseNotice& r, TorchScriptModels* torchscript, Interpreter* interp, bool notice) {
  return r.torchscript ? torchscript->Release(r.arena, r.blocks, notice) : interp->Release(r.arena, r.blocks, notice);
}

// Usage notices owed to shoald after releases. A release's notice is not sent at once:
// the next job's reply carries its owner's usage anyway (computed after the release, which
// was read first), and a notice a job costs shoald a wake-up and the worker a send. Such a
// reply settles the notice (Settle); the rest go when the reading thread would otherwise
// block (Recv), each computed then (the owner's usage at that moment, not at the release).
// A reply of another owner does not carry this one's usage: its notice waits. (With several lanes a lane's reply may still carry a usage computed before a
// release and reach shoald after the notice, as before: `status` figures, no accounting.)
// Used by the reading thread only.
class OwedUsage {
 public:
  void Owe(const ReleaseNotice& r) { arena_[{r.lane, r.torchscript}] = r.arena; }
  // The next message, as RecvFrame; first the notices owed, computed now, through `send`,
  // when none has come yet. False from `send` (shoald is gone) gives Code::kUnavailable.
  template <typename Send>
  Result<std::string> Recv(int fd, FrameReader* reader, std::vector<int>* fds, Send&& send,
                           TorchScriptModels* torchscript, const std::vector<Interpreter*>& interps) {
    if (!arena_.empty()) {
      auto body = RecvFrame(fd, reader, fds, std::chrono::steady_clock::now());
      if (body.ok() || body.status().code() != Code::kTimeout) return body;
      for (const auto& [owner, arena] : arena_) {
        const auto& [lane, ts] = owner;
        ReleaseNotice now{arena, lane, ts, {}};  // no blocks: the usage alone
        if (!send(Release(now, torchscript, interps[lane], true))) return Status(Code::kUnavailable, "shoald is gone");
      }
      arena_.clear();
    }
    return RecvFrame(fd, reader, fds);
  }
  // `reply`, just sent by the reading thread, settles the notice of the owner whose usage it
  // carries (`usage.owner`: lane x 2, + 1 for TorchScript; shm/output_arenas.h).
  void Settle(const std::string& reply) {
    if (arena_.empty()) return;
    auto oh = Decode(reply);
    if (!oh.ok()) return;
    const msgpack::object* usage = MapView(oh->get()).Find("usage");
    if (usage == nullptr || usage->type != msgpack::type::MAP) return;
    auto owner = MapView(*usage).Uint("owner");
    if (owner.ok()) arena_.erase({static_cast<uint32_t>(*owner / 2), *owner % 2 == 1});
  }

 private:
  std::map<std::pair<uint32_t, bool>, uint64_t> arena_;  // (lane, TorchScript?) -> an arena of that owner
};

}  // namespace

void ServeOne(int fd, int slot, Interpreter* interp) {
  FrameReader reader;
  std::vector<int> fds;
  TorchScriptModels torchscript;  // TorchScript runs here, in C++, without Python
  auto send = [fd](const std::string& body, const std::vector<int>& attached = {}) {
    return body.empty() || SendAll(fd, EncodeFrame(body), attached).ok();
  };
  OwedUsage owed;
  const std::vector<Interpreter*> interps{interp};
  interp->ReleaseGil();  // held only while Python runs
  for (;;) {
    auto body = owed.Recv(fd, &reader, &fds, send, &torchscript, interps);
    if (!body.ok()) {
      if (body.status().code() != Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;  // supervisor gone or stream broken: nothing left to serve
    }
    bool batch = false;  // a batched infer: the runner answers with a bundle
    if (auto oh = Decode(*body); oh.ok()) {
      MapView m(oh->get());
      std::string op = m.Str("op").value_or("");
      batch = op == "infer" && m.Find("batch") != nullptr;
      if (op == "infer" && !batch) {  // sent ahead, it may have waited past its deadline
        if (auto late = JobDeadline::Of(m).ReplyIfPassed(slot); !late.empty()) {
          if (!send(late)) break;
          continue;
        }
      }
      if (op == "release") {
        if (auto r = ReadRelease(m); r && r->lane == 0) {  // else not ours: ignored
          Release(*r, &torchscript, interp, false);  // its notice is owed
          owed.Owe(*r);
        }
        continue;
      } else if (op == "drop_client") {
        bool sent = true;
        for (const auto& n : torchscript.DropClient(m.Uint("client").value_or(0))) sent = sent && send(n);
        if (!sent) break;
      } else {
        EncodedReply ts_reply;
        if (torchscript.Handle(m, &fds, &ts_reply)) {
          if (!send(ts_reply.body, ts_reply.fds)) break;
          owed.Settle(ts_reply.body);
          continue;
        }
      }
    }
    interp->AcquireGil();
    auto reply = interp->Handle(*body, &fds);
    interp->ReleaseGil();
    if (!reply.ok()) {
      spdlog::critical("{}", reply.status().ToString());
      _exit(4);
    }
    if (batch) {  // a batched infer: each member's reply as its own frame
      auto parts = SplitReplyBundle(*reply);
      if (!parts.ok()) spdlog::error("{}", parts.status().ToString());
      bool sent = true;
      for (const auto& r : parts.ok() ? *parts : std::vector<EncodedReply>{*reply}) {
        sent = sent && send(r.body, r.fds);
        owed.Settle(r.body);
      }
      if (!sent) break;
      continue;
    }
    if (!send(reply->body, reply->fds)) break;
    owed.Settle(reply->body);
  }
  fflush(stderr);
  // No Py_Finalize: tearing torch down at exit can hang and buys nothing.
  _exit(0);
}

void ServeMany(int fd, int slot, const std::vector<std::unique_ptr<Interpreter>>& interps) {
  ReplySink sink(fd);
  TorchScriptModels torchscript;
  std::vector<std::unique_ptr<Lane>> lanes;
  for (const auto& it : interps) lanes.push_back(std::make_unique<Lane>(it.get(), slot, &sink, &torchscript));
  for (auto& l : lanes) l->Start();
  const int k = static_cast<int>(lanes.size());
  FrameReader reader;
  std::vector<int> fds;
  OwedUsage owed;
  std::vector<Interpreter*> by_lane;
  for (const auto& it : interps) by_lane.push_back(it.get());
  auto send = [&sink](const std::string& notice) {
    sink.Send(notice);  // exits if shoald is gone
    return true;
  };
  for (;;) {
    auto body = owed.Recv(fd, &reader, &fds, send, &torchscript, by_lane);
    if (!body.ok()) {
      if (body.status().code() != Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;
    }
    auto oh = Decode(*body);
    if (!oh.ok()) {
      spdlog::critical("undecodable message from shoald: {}", oh.status().ToString());
      _exit(4);
    }
    MapView m(oh->get());
    std::string op = m.Str("op").value_or("");
    if (op == "infer") {
      auto interp = m.OptUint("interp");
      uint64_t i = interp.ok() && interp->has_value() ? **interp : 0;
      if (i >= static_cast<uint64_t>(k)) {
        sink.Send(ErrorReply(m.Uint("id").value_or(0),
                             Status::Internal("worker " + std::to_string(slot) + " has no interpreter " +
                                              std::to_string(i))));
        continue;
      }
      Task t;
      t.torchscript = torchscript.Holds(m);
      t.batch = m.Find("batch") != nullptr;
      t.deadline = JobDeadline::Of(m);
      t.body = std::move(*body);
      lanes[i]->Push(std::move(t));
      continue;
    }
    if (op == "release") {  // only the owner of the arena frees its blocks, here (no lane's turn)
      if (auto r = ReadRelease(m); r && r->lane < static_cast<uint32_t>(k)) {  // else not ours: ignored
        Release(*r, &torchscript, interps[r->lane].get(), false);  // its notice is owed
        owed.Owe(*r);
      }
      continue;
    }
    if (op == "drop_client") {  // every owner drops that client's output arenas
      for (const auto& n : torchscript.DropClient(m.Uint("client").value_or(0))) sink.Send(n);
      for (auto& lane : lanes) {
        Task t;
        t.body = *body;
        lane->Push(std::move(t));
      }
      continue;
    }
    // Loads, unloads, arenas: TorchScript's share first (in this thread), then every
    // interpreter's.
    EncodedReply ts_reply;
    if (torchscript.Handle(m, &fds, &ts_reply)) {
      sink.Send(ts_reply);
      continue;
    }
    int carried = 0;
    if (op == "arena" || op == "load") carried = 1;  // a client arena; the archive's file
    // and the shared GPU weights a load maps (python/shoal/_gpu_weights.py)
    if (op == "load" && m.OptUint("gpu_weights").value_or(std::nullopt).has_value()) carried = 2;
    if (static_cast<int>(fds.size()) < carried) {
      spdlog::critical("'{}' from shoald came without its fd", op);
      _exit(4);
    }
    auto gather = m.OptUint("id").value_or(std::nullopt) ? std::make_shared<Gather>(k) : nullptr;
    for (int i = 0; i < k; ++i) {
      Task t;
      t.body = *body;
      t.gather = gather;
      for (int c = 0; c < carried; ++c) t.fds.push_back(dup(fds[c]));
      lanes[i]->Push(std::move(t));
    }
    for (int c = 0; c < carried; ++c) close(fds[c]);
    fds.erase(fds.begin(), fds.begin() + carried);
  }
  fflush(stderr);
  _exit(0);
}

}  // namespace shoal
