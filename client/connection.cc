#include "client/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <utility>

#include "protocol/channel.h"
#include "protocol/client_writer.h"
#include "protocol/descriptor.h"
#include "protocol/messages.h"
#include "shm/arena.h"
#include "shm/gpu_memory.h"
#include "tensors/tree.h"

namespace shoal {

struct ClientConnection::Job {
  uint64_t id = 0;
  std::string what;  // "infer request 7 (model 'm')"
  std::chrono::milliseconds wait{0};
  std::optional<Clock::time_point> deadline;
  Completion done;                   // GUARDED_BY(mu_): taken by whoever claims the job
  std::shared_ptr<const void> hold;  // GUARDED_BY(mu_): kept until the reply is read
  int attention = 0;                 // GUARDED_BY(mu_): threads waiting for it
  bool claimed = false;              // GUARDED_BY(mu_): who completes it is decided
  bool settled = false;              // GUARDED_BY(mu_): its completion has run
};

namespace {

// An error reply as a Status, with the model's traceback, if any, after the message.
Result<msgpack::object_handle> OkOrError(msgpack::object_handle oh) {
  MapView m(oh.get());
  auto ok = m.Bool("ok");
  if (!ok.ok() || !*ok) {
    std::string tb;
    Status st = StatusFromReply(m, &tb);
    if (!tb.empty()) st = Status(st.code(), st.message() + "\n--- model traceback ---\n" + tb);
    return st;
  }
  return oh;
}

}  // namespace

ClientConnection::ClientConnection(int sock, std::string path)
    : sock_(sock), path_(std::move(path)), writer_(std::make_shared<ClientWriter>(sock)) {}

ClientConnection::~ClientConnection() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  writer_->Stop();              // sends the releases still queued
  shutdown(sock_, SHUT_RDWR);  // wakes a reader blocked in recvmsg
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !reader_.has_value(); });
  }
  ConnectionLost(Status(Code::kUnavailable, "closed by this client"));
  std::thread pump;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pump.swap(pump_);
  }
  if (pump.joinable()) pump.join();
  close(sock_);
  CloseAll(&fds_);
}

uint64_t ClientConnection::NextId() {
  std::lock_guard<std::mutex> lock(mu_);
  return next_id_++;
}

Result<std::shared_ptr<ClientConnection::Job>> ClientConnection::Submit(
    uint64_t id, std::string_view body, const std::vector<int>& fds, std::string what,
    std::optional<std::chrono::milliseconds> wait, Completion done, bool attended, std::shared_ptr<const void> hold) {
  auto job = std::make_shared<Job>();
  job->id = id;
  job->what = std::move(what);
  job->done = std::move(done);
  job->hold = std::move(hold);
  if (wait) {
    job->wait = *wait;
    job->deadline = Clock::now() + *wait;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (lost_) return LostStatus(job->what);
    job->attention = attended ? 1 : 0;
    jobs_[id] = job;
    if (!attended) {
      if (!pump_.joinable()) pump_ = std::thread([this] { PumpLoop(); });
      cv_.notify_all();  // the pump: a job nobody waits for
    }
  }
  if (auto st = writer_->Send(EncodeFrame(body), fds); !st.ok()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.erase(id);
      job->claimed = true;
    }
    ReadParting();
    std::lock_guard<std::mutex> lock(mu_);
    if (parting_) return *parting_;
    return Status(Code::kUnavailable,
                  "lost the connection to shoald at " + path_ + " sending " + job->what + ": " + st.message());
  }
  return job;
}

void ClientConnection::Wait(const std::shared_ptr<Job>& job) {
  bool role = false;
  Completion late;
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (!job->settled) {
      if (!reader_) {
        reader_ = std::this_thread::get_id();
        role = true;
        break;
      }
      // Another thread reads; this job's deadline is ours to enforce (the reader may be
      // blocked with a later one).
      if (job->deadline && !job->claimed && Clock::now() >= *job->deadline) {
        job->claimed = true;
        late = std::move(job->done);
        break;
      }
      ++queued_;
      if (job->deadline && !job->claimed) {
        cv_.wait_until(lock, *job->deadline);
      } else {
        cv_.wait(lock);
      }
      if (--queued_ == 0) cv_.notify_all();  // the pump, which gave the role up for us
    }
    if (!role && --job->attention == 0) cv_.notify_all();
  }
  if (late) {
    Finish(job, std::move(late), LateStatus(*job));
    return;
  }
  if (!role) return;
  Read([&] {
    std::lock_guard<std::mutex> lock(mu_);
    return !job->settled;
  });
  {
    std::lock_guard<std::mutex> lock(mu_);
    --job->attention;
  }
  ReleaseRole();
}

void ClientConnection::ReleaseRole() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    reader_.reset();
  }
  cv_.notify_all();
}

bool ClientConnection::UnattendedLocked() const {
  return std::any_of(jobs_.begin(), jobs_.end(), [](const auto& kv) { return kv.second->attention == 0; });
}

void ClientConnection::PumpLoop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return lost_.has_value() || (!reader_ && queued_ == 0 && UnattendedLocked()); });
      if (lost_) return;
      reader_ = std::this_thread::get_id();
    }
    Read([&] {
      std::lock_guard<std::mutex> lock(mu_);
      return !lost_ && queued_ == 0 && UnattendedLocked();
    });
    ReleaseRole();
  }
}

void ClientConnection::Read(const std::function<bool()>& keep_going) {
  while (keep_going()) {
    auto [expired, next] = ExpireOverdue();
    if (expired && !keep_going()) return;
    auto body = RecvFrame(sock_, &frames_, &fds_, next);
    if (!body.ok()) {
      if (body.status().code() == Code::kTimeout) continue;  // a deadline: looked at on the next turn
      ConnectionLost(body.status());
      return;
    }
    Dispatch(*body);
  }
}

std::pair<bool, std::optional<ClientConnection::Clock::time_point>> ClientConnection::ExpireOverdue() {
  auto now = Clock::now();
  std::optional<Clock::time_point> next;
  auto sooner = [&](Clock::time_point t) {
    if (!next || t < *next) next = t;
  };
  std::vector<std::pair<std::shared_ptr<Job>, Completion>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, job] : jobs_) {
      if (job->claimed) continue;
      if (job->attention == 0) sooner(now + kRecheck);
      if (!job->deadline) continue;
      if (now >= *job->deadline) {
        job->claimed = true;  // its entry stays: the late reply is dropped when it comes
        due.emplace_back(job, std::move(job->done));
      } else {
        sooner(*job->deadline);
      }
    }
  }
  for (auto& [job, done] : due) Finish(job, std::move(done), LateStatus(*job));
  return {!due.empty(), next};
}

void ClientConnection::Finish(const std::shared_ptr<Job>& job, Completion done,
                              Result<msgpack::object_handle> outcome) {
  if (done) done(std::move(outcome));
  {
    std::lock_guard<std::mutex> lock(mu_);
    job->settled = true;
  }
  cv_.notify_all();
}

void ClientConnection::Dispatch(const std::string& body) {
  auto oh = Decode(body);
  if (!oh.ok()) return ConnectionLost(Status::Internal("undecodable reply from shoald: " + oh.status().message()));
  MapView m(oh->get());
  auto rid = m.Uint("id");
  auto ok = m.Bool("ok");
  if (rid.ok() && *rid == 0 && !(ok.ok() && *ok)) {  // shoald could not read a request, or hangs up
    std::lock_guard<std::mutex> lock(mu_);
    parting_ = StatusFromReply(m);
    return;
  }
  std::shared_ptr<Job> job;
  Completion done;
  std::shared_ptr<const void> hold;  // dropped on return, with no lock held
  bool live = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = rid.ok() ? jobs_.find(*rid) : jobs_.end(); it != jobs_.end()) {
      job = it->second;
      jobs_.erase(it);
      live = !job->claimed;
      job->claimed = true;
      if (live) done = std::move(job->done);
      hold = std::move(job->hold);
    }
  }
  Status mapped = TakeArenas(oh->get());
  if (!live) {  // timed out, or never ours: nobody reads its outputs
    if (mapped.ok()) ReleaseOutputs(oh->get());
    return;
  }
  if (!mapped.ok()) return Finish(job, std::move(done), mapped);
  Finish(job, std::move(done), OkOrError(std::move(*oh)));
}

Status ClientConnection::TakeArenas(const msgpack::object& reply) {
  const msgpack::object* list = MapView(reply).Find("new_arenas");
  if (list == nullptr || list->type != msgpack::type::ARRAY) return Status::Ok();
  uint32_t n = list->via.array.size;
  if (fds_.size() < n) {
    return Status::Internal("shoald announced " + std::to_string(n) + " output arenas with " +
                            std::to_string(fds_.size()) + " fds");
  }
  // Every fd of this reply is taken first: one that cannot be mapped must not shift the
  // next reply's fds.
  std::vector<int> mine(fds_.begin(), fds_.begin() + n);
  fds_.erase(fds_.begin(), fds_.begin() + n);
  Status first = Status::Ok();
  for (uint32_t i = 0; i < n; ++i) {
    int fd = mine[i];
    auto a = MapView::Of(list->via.array.ptr[i], "arenas entry");
    auto id = a.ok() ? a->Uint("arena") : Result<uint64_t>(a.status());
    if (!id.ok()) {
      close(fd);
      if (first.ok()) first = id.status();
      continue;
    }
    auto gpu = a->OptStr("gpu");
    Result<std::unique_ptr<Arena>> mapped = Status::Ok();
    if (gpu.ok() && gpu->has_value()) {  // a worker's GPU output arena
      auto ordinal = GpuOrdinalOfBus(**gpu);
      if (!ordinal.ok()) {
        close(fd);  // Arena::Open/OpenGpu close theirs, also on failure
        mapped = Status(Code::kBadRequest, "output arena on GPU " + **gpu + " cannot be mapped here (" +
                                               ordinal.status().message() +
                                               "); ask for host tensors (Infer's host_outputs)");
      } else {
        mapped = Arena::OpenGpu(fd, a->Uint("size").value_or(0), *ordinal);
      }
    } else {
      mapped = Arena::Open(fd);
    }
    if (!mapped.ok()) {
      if (first.ok()) first = mapped.status();
      continue;
    }
    out_arenas_[*id] = std::shared_ptr<Arena>(std::move(*mapped));
  }
  return first;
}

void ClientConnection::ReleaseOutputs(const msgpack::object& reply) {
  MapView m(reply);
  auto ok = m.Bool("ok");
  const msgpack::object* outputs = m.Find("outputs");
  if (!ok.ok() || !*ok || outputs == nullptr) return;
  std::set<std::pair<uint64_t, uint64_t>> seen;
  (void)DecodeTree(*outputs, [&](const Descriptor& d) -> Result<torch::Tensor> {
    auto extent = d.Extent();
    if (extent.ok() && *extent > 0 && out_arenas_.count(d.arena) != 0 && seen.insert({d.arena, d.block}).second) {
      writer_->Release(d.arena, d.block);
    }
    return torch::Tensor();
  });
}

void ClientConnection::ReadParting() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reader_) return;  // the reader will see the end itself
    reader_ = std::this_thread::get_id();
  }
  for (;;) {
    auto body = RecvFrame(sock_, &frames_, &fds_, Clock::now() + std::chrono::milliseconds(1));
    if (!body.ok()) {
      if (body.status().code() != Code::kTimeout) ConnectionLost(body.status());
      break;
    }
    Dispatch(*body);
  }
  ReleaseRole();
}

void ClientConnection::ConnectionLost(const Status& why) {
  std::vector<std::tuple<std::shared_ptr<Job>, Completion, Status>> failed;
  std::vector<std::shared_ptr<const void>> holds;  // dropped on return, with no lock held
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!lost_) lost_ = why;
    for (auto& [id, job] : jobs_) {
      if (!job->claimed) {
        job->claimed = true;
        failed.emplace_back(job, std::move(job->done), LostStatus(job->what));
      }
      holds.push_back(std::move(job->hold));
    }
    jobs_.clear();
  }
  cv_.notify_all();  // the pump stops
  for (auto& [job, done, st] : failed) Finish(job, std::move(done), st);
}

Status ClientConnection::LostStatus(const std::string& what) const {
  if (parting_) return Status(parting_->code(), parting_->message() + " (shoald hung up before answering " + what + ")");
  if (closing_) return Status(Code::kUnavailable, "the client was closed before shoald answered " + what);
  return Status(Code::kUnavailable, "lost the connection to shoald at " + path_ + " before it answered " + what +
                                        ": " + (lost_ ? lost_->message() : std::string("?")) +
                                        "; the job may or may not have run. Connect again (a new Client) and "
                                        "resubmit it");
}

Status ClientConnection::LateStatus(const Job& job) const {
  return Status(Code::kTimeout, "shoald at " + path_ + " did not answer " + job.what + " within " +
                                    std::to_string(job.wait.count()) + " ms (its deadline plus " +
                                    std::to_string(kAnswerMargin.count()) +
                                    " ms); it may be stopped or overloaded. The client stays usable; a late answer "
                                    "is discarded");
}

}  // namespace shoal
