// Small fakes for testing supervisor roles alone: a client whose answers can be read back
// (a real socketpair and AsyncChannel), a slot pool without processes, model hosts
// without workers, a job queue that records what the registry asked of it.
#pragma once

#include <fcntl.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "supervisor/model_registry.h"
#include "supervisor/scheduler.h"

namespace shoal::testing {

// An archive for roles that only hold and name it (no worker reads it here).
inline ArchiveRef NamedArchive(const std::string& label) {
  return std::make_shared<const ArchiveFile>(open("/dev/null", O_RDONLY | O_CLOEXEC), label);
}

// What every role is built with: a loop (run by the test) and a configuration.
struct RoleFixture {
  boost::asio::io_context io;
  SupervisorConfig config;
};

// A connected client: the supervisor's session on one end, a blocking reader on the other.
struct FakeClient {
  explicit FakeClient(boost::asio::io_context& io) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    session = std::make_shared<ClientSession>();
    session->id = 1;
    session->channel = std::make_shared<AsyncChannel>(io, sv[0]);
    session->channel->Start([](std::string, std::vector<int>*) {}, [](const Status&) {});
    peer = sv[1];
  }
  ~FakeClient() { close(peer); }
  // The next answer: {"id", "ok", "error": {"code", "message"}} as (request id, code or "").
  struct Answer {
    uint64_t id = 0;
    bool ok = false;
    std::string code, message;
    std::string body;  // the whole answer
    size_t fds = 0;    // descriptors that came with it
  };
  Answer Next() {
    std::vector<int> fds;
    auto body = RecvFrame(peer, &reader, &fds);
    Answer a;
    a.fds = fds.size();
    CloseAll(&fds);
    if (!body.ok()) return a;
    a.body = *body;
    auto oh = Decode(*body);
    MapView m(oh->get());
    a.id = *m.Uint("id");
    a.ok = *m.Bool("ok");
    if (!a.ok) {
      MapView e(*m.Find("error"));
      a.code = *e.Str("code");
      a.message = *e.Str("message");
    }
    return a;
  }
  std::shared_ptr<ClientSession> session;
  int peer = -1;
  FrameReader reader;
};

class FakeSlots : public SlotPool {
 public:
  struct Running {
    std::shared_ptr<Job> job;
    ReplyFn done;
  };
  int free_slots = 1;
  std::set<std::string> serving;
  std::vector<Running> running;
  std::vector<std::string> terminated;
  std::vector<uint64_t> freed;
  std::vector<uint64_t> freed_arenas;

  // With GPU inputs, a job also needs a free slot on its GPU: how many each GPU has. Its
  // slot's worker is then the GPU's place in this map (0 for host inputs).
  std::map<std::string, int> gpu_slots;

  std::optional<Slot> Pick(const Job& job, bool* any_free) const override {
    *any_free = free_slots > static_cast<int>(running.size());
    if (!*any_free || serving.count(job.model) == 0) return std::nullopt;
    if (!job.gpu.empty()) {
      int busy = 0;
      for (const auto& r : running) busy += r.job->gpu == job.gpu;
      auto g = gpu_slots.find(job.gpu);
      if (g == gpu_slots.end() || busy >= g->second) return std::nullopt;
      return Slot{static_cast<int>(std::distance(gpu_slots.begin(), g)), static_cast<int>(running.size())};
    }
    return Slot{0, static_cast<int>(running.size())};
  }
  void Run(Slot slot, const std::shared_ptr<Job>& job, ReplyFn done) override {
    job->worker = slot.worker;
    job->interp = slot.interp;
    running.push_back({job, std::move(done)});
  }
  // Each member runs as its own entry (Finish answers them in turn); `batches` records
  // the ids of each batch started.
  std::vector<std::vector<uint64_t>> batches;
  void RunBatch(Slot slot, const std::vector<std::shared_ptr<Job>>& jobs, MemberReplyFn done) override {
    std::vector<uint64_t> ids;
    for (const auto& job : jobs) {
      ids.push_back(job->id);
      job->worker = slot.worker;
      job->interp = slot.interp;
      running.push_back({job, [job, done](const Status& st, const MapView* reply) { done(job, st, reply); }});
    }
    batches.push_back(ids);
  }
  bool IsRunning(const Job& job) const override {
    for (const auto& r : running) {
      if (r.job.get() == &job) return true;
    }
    return false;
  }
  void Terminate(const Job& job, const std::string& why) override {
    terminated.push_back(std::to_string(job.id) + ": " + why);
  }
  void FreeBlocks(const Job&, uint64_t arena, const std::vector<uint64_t>& blocks) override {
    freed_arenas.push_back(arena);
    freed.insert(freed.end(), blocks.begin(), blocks.end());
  }
  int RunningJobs(const std::string& model) const override {
    int n = 0;
    for (const auto& r : running) n += model.empty() || r.job->model == model;
    return n;
  }
  size_t Serving(const std::string& model) const override { return serving.count(model); }

  // Finishes the oldest running job with `reply` (a worker's reply body), or with
  // `crash` when reply is empty.
  void Finish(const std::string& reply, const Status& crash = Status::Ok()) {
    Running r = std::move(running.front());
    running.erase(running.begin());
    if (reply.empty()) return r.done(crash, nullptr);
    auto oh = Decode(reply);
    MapView m(oh->get());
    r.done(Status::Ok(), &m);
  }
};

// A worker's successful reply with a single {"value": 1} output.
inline std::string ValueReply(uint64_t id) {
  Writer w;
  BeginReply(&w, id, 1);
  w.Key("outputs");
  w.Map(1);
  w.Key("value");
  w.Val(1);
  return std::string(w.body());
}

class FakeHosts : public ModelHosts {
 public:
  struct PendingLoad {
    Worker worker;
    std::string name;
    std::function<bool()> keep;
    LoadDone done;
  };
  std::vector<Worker> live;
  std::vector<PendingLoad> loads;
  std::map<int, std::set<std::string>> ready;  // slot -> models
  std::vector<std::string> unloaded;

  std::vector<Worker> Live() const override { return live; }
  std::map<int, int> gpu_of;  // slot -> GPU index (GpuPlacement's rule: "cuda:N" runs on GPU N only)
  void Load(Worker worker, const std::string& name, const ArchiveRef&, const std::string& device,
            std::function<bool()> keep, LoadDone done) override {
    loads.push_back({worker, name, std::move(keep), std::move(done)});
    devices.push_back(device);
  }
  std::vector<std::string> devices;  // of each load, in order
  bool Places(Worker worker, const std::string& device) const override {
    if (device.rfind("cuda:", 0) != 0) return true;
    auto it = gpu_of.find(worker.slot);
    return it != gpu_of.end() && it->second == std::stoi(device.substr(5));
  }
  bool HasOrLoads(Worker worker, const std::string& name) const override {
    if (auto it = ready.find(worker.slot); it != ready.end() && it->second.count(name)) return true;
    for (const auto& l : loads) {
      if (l.worker.slot == worker.slot && l.name == name) return true;
    }
    return false;
  }
  void Unload(const std::string& name) override {
    unloaded.push_back(name);
    for (auto& [slot, models] : ready) models.erase(name);
  }
  size_t Serving(const std::string& name) const override {
    size_t n = 0;
    for (const auto& [slot, models] : ready) n += models.count(name);
    return n;
  }
  // Answers the oldest load as a worker would.
  void Answer(const Status& st = Status::Ok()) {
    PendingLoad l = std::move(loads.front());
    loads.erase(loads.begin());
    if (st.ok() && l.keep()) ready[l.worker.slot].insert(l.name);
    l.done(st, st.ok() ? "" : "Traceback: boom", "python");
  }
};

class FakeJobs : public JobQueue {
 public:
  std::map<std::string, size_t> pending;
  std::vector<std::string> failed;  // "model: message"
  int dispatches = 0;
  void FailQueued(const std::string& model, const std::function<Status(const Job&)>& why) override {
    Job j;
    j.model = model;
    j.id = 7;
    if (pending[model] > 0) failed.push_back(model + ": " + why(j).message());
    pending[model] = 0;
  }
  size_t Pending(const std::string& model) const override {
    auto it = pending.find(model);
    return it == pending.end() ? 0 : it->second;
  }
  size_t Queued(const std::string& model) const override { return Pending(model); }
  void Dispatch() override { ++dispatches; }
};

}  // namespace shoal::testing
