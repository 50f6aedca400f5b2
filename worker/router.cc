#include "worker/router.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "worker/lanes.h"
#include "worker/torchscript.h"

namespace shoal {

void ServeOne(int fd, Interpreter* interp) {
  FrameReader reader;
  std::vector<int> fds;
  TorchScriptModels torchscript;  // TorchScript runs here, in C++, without Python
  for (;;) {
    interp->ReleaseGil();
    auto body = RecvFrame(fd, &reader, &fds);
    interp->AcquireGil();
    if (!body.ok()) {
      if (body.status().code() != Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;  // supervisor gone or stream broken: nothing left to serve
    }
    if (auto oh = Decode(*body); oh.ok()) {
      std::string ts_reply;
      if (torchscript.Handle(MapView(oh->get()), fds, &ts_reply)) {
        if (!ts_reply.empty() && !SendAll(fd, EncodeFrame(ts_reply)).ok()) break;
        continue;
      }
    }
    auto reply = interp->Handle(*body, &fds);
    if (!reply.ok()) {
      spdlog::critical("{}", reply.status().ToString());
      _exit(4);
    }
    if (!reply->empty()) {
      if (auto st = SendAll(fd, EncodeFrame(*reply)); !st.ok()) break;
    }
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
  for (;;) {
    auto body = RecvFrame(fd, &reader, &fds);
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
      t.body = std::move(*body);
      lanes[i]->Push(std::move(t));
      continue;
    }
    // Loads, unloads, arenas: TorchScript's share first (in this thread), then every
    // interpreter's.
    std::string ts_reply;
    if (torchscript.Handle(m, fds, &ts_reply)) {
      sink.Send(ts_reply);
      continue;
    }
    if (op == "free") {  // any one interpreter can free (the allocator is in the arena)
      size_t best = 0;
      for (size_t i = 1; i < lanes.size(); ++i) {
        if (lanes[i]->load() < lanes[best]->load()) best = i;
      }
      Task t;
      t.body = std::move(*body);
      lanes[best]->Push(std::move(t));
      continue;
    }
    int carried = 0;
    if (op == "arena") carried = 1;
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
