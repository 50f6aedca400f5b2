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
#include "worker/owed_usage.h"
#include "worker/torchscript.h"

namespace shoal {

namespace {

// Frees a release's blocks where they were handed out, in C++ for either engine (no GIL,
// no Python); with `notice`, the owner's usage notice for shoald (else "").
std::string Release(const ReleaseNotice& r, TorchScriptModels* torchscript, Interpreter* interp, bool notice) {
  return r.torchscript ? torchscript->Release(r.arena, r.blocks, notice) : interp->Release(r.arena, r.blocks, notice);
}

}  // namespace

void ServeOne(int fd, int slot, Interpreter* interp) {
  FrameReader reader;
  std::vector<int> fds;
  TorchScriptModels torchscript;  // TorchScript runs here, in C++, without Python
  auto send = [fd](const std::string& body, const std::vector<int>& attached = {}) {
    return body.empty() || SendAll(fd, EncodeFrame(body), attached).ok();
  };
  OwedUsage owed;
  interp->ReleaseGil();  // held only while Python runs
  for (;;) {
    auto body = owed.Recv(fd, &reader, &fds, send,
                          [&](const ReleaseNotice& r) { return Release(r, &torchscript, interp, true); });
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
      const auto& members = parts.ok() ? *parts : std::vector<EncodedReply>{*reply};
      bool sent = true;
      for (const auto& w : JoinFrames(members)) sent = sent && SendAll(fd, w.body, w.fds).ok();
      if (!sent) break;
      for (const auto& r : members) owed.Settle(r.body);
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
  auto send = [&sink](const std::string& notice) {
    sink.Send(notice);  // exits if shoald is gone
    return true;
  };
  for (;;) {
    auto body = owed.Recv(fd, &reader, &fds, send,
                          [&](const ReleaseNotice& r) { return Release(r, &torchscript, interps[r.lane].get(), true); });
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
