#include "supervisor/zygote_link.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>

#include "protocol/channel.h"
#include "protocol/messages.h"
#include "supervisor/worker_handle.h"

namespace shoal {

ZygoteLink::ZygoteLink(boost::asio::io_context& io) : io_(io) {}

ZygoteLink::~ZygoteLink() {
  if (restart_timer_) restart_timer_->cancel();
}

void ZygoteLink::Start(std::string binary, std::vector<std::string> args) {
  binary_ = std::move(binary);
  args_ = std::move(args);
  auto proc = SpawnWorkerProcess(binary_, args_);
  if (!proc.ok()) {
    spdlog::error("cannot start the zygote: {}; workers are started one by one", proc.status().ToString());
    return;
  }
  pid_ = proc->pid;
  gone_ = false;
  ready_ = false;
  start_timer_ = std::make_shared<boost::asio::steady_timer>(io_, kStartDeadline);
  pid_t started = pid_;
  start_timer_->async_wait([this, started](const boost::system::error_code& ec) {
    if (!ec && !gone_ && !ready_ && pid_ == started) {
      Wedged("did not get ready within " + std::to_string(kStartDeadline.count()) + " s");
    }
  });
  started_ = std::chrono::steady_clock::now();
  auto channel = std::make_shared<AsyncChannel>(io_, proc->sock);
  channel_ = channel;
  channel->Start(
      [this, channel](std::string body, std::vector<int>* fds) {
        CloseAll(fds);
        if (channel_ == channel) OnFrame(body);
      },
      [this, channel](const Status&) {
        // EOF: it is exiting. Make sure, and let the reaper say how it died (OnExited).
        if (channel_ == channel && !gone_) kill(pid_, SIGKILL);
      });
  spdlog::info("started the zygote (pid {})", pid_);
}

void ZygoteLink::OnFrame(const std::string& body) {
  auto oh = Decode(body);
  if (!oh.ok()) return;
  MapView m(oh->get());
  if (auto op = m.OptStr("op"); op.ok() && op->has_value() && **op == "ready") {
    ready_ = true;
    if (start_timer_) start_timer_->cancel();
    for (const auto& [rid, p] : pending_) ArmForkDeadline(rid);
    return;
  }
  auto id = m.Uint("id");
  const msgpack::object* pid = m.Find("pid");
  if (!id.ok() || pid == nullptr) return;
  auto it = pending_.find(*id);
  if (it == pending_.end()) return;
  auto fn = std::move(it->second.done);
  it->second.deadline->cancel();
  pending_.erase(it);
  fn(pid->type == msgpack::type::POSITIVE_INTEGER ? static_cast<pid_t>(pid->via.u64) : -1);
}

void ZygoteLink::Fork(int slot, int sock, const std::optional<std::string>& cuda_visible,
                      std::function<void(pid_t)> done, std::shared_ptr<OwnedFd> cgroup_procs) {
  uint64_t rid = next_request_++;
  Writer m;
  BeginRequest(&m, "fork", rid, 1 + (cuda_visible ? 1 : 0) + (cgroup_procs ? 1 : 0));
  m.Key("slot"); m.Val(slot);
  if (cuda_visible) {
    m.Key("cuda_visible"); m.Str(*cuda_visible);
  }
  std::vector<std::shared_ptr<OwnedFd>> fds = {std::make_shared<OwnedFd>(sock)};
  if (cgroup_procs) {
    m.Key("cgroup"); m.Val(true);  // its fd follows the socket's
    fds.push_back(std::move(cgroup_procs));
  }
  pending_[rid] = {std::move(done), std::make_shared<boost::asio::steady_timer>(io_)};
  channel_->Send(m.body(), fds);
  if (ready_) ArmForkDeadline(rid);
}

void ZygoteLink::ArmForkDeadline(uint64_t rid) {
  auto& deadline = pending_.at(rid).deadline;
  deadline->expires_after(kForkDeadline);
  deadline->async_wait([this, rid](const boost::system::error_code& ec) {
    if (ec || pending_.count(rid) == 0) return;
    Wedged("did not answer fork request " + std::to_string(rid) + " within " +
           std::to_string(kForkDeadline.count()) + " s");
  });
}

void ZygoteLink::Wedged(const std::string& what) {
  spdlog::error("the zygote (pid {}) {}: it is wedged; killing it, workers are started one by one until it is back",
                pid_, what);
  Close(true);
  RestartLater();
}

void ZygoteLink::Kill() { Close(true); }

void ZygoteLink::Close(bool kill_it) {
  if (gone_) return;
  gone_ = true;
  if (channel_) channel_->Close();
  channel_.reset();
  if (kill_it) kill(pid_, SIGKILL);
  if (start_timer_) start_timer_->cancel();
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [id, p] : pending) {
    p.deadline->cancel();
    p.done(-1);
  }
}

void ZygoteLink::OnExited(const std::string& how) {
  if (gone_) return;
  spdlog::error("the zygote (pid {}) died: {}; workers are started one by one until it is back", pid_, how);
  // Workers it was forking may or may not exist; without their pids they cannot be
  // supervised: their callers hang up on them (a worker exits on EOF) and start them anew.
  Close(false);  // already reaped: its pid may belong to another process now
  RestartLater();
}

void ZygoteLink::RestartLater() {
  if (stopping_) return;
  bool young = std::chrono::steady_clock::now() - started_ < std::chrono::seconds(10);
  streak_ = young ? streak_ + 1 : 0;
  restart_timer_ = std::make_shared<boost::asio::steady_timer>(
      io_, std::chrono::milliseconds(std::min(1000 << std::min(streak_, 5), 30000)));
  restart_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (!ec && !stopping_ && gone_) Start(binary_, args_);
  });
}

}  // namespace shoal
