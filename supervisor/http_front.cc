// shoal-http as shoald's child (supervisor/http_front.h).
#include "supervisor/http_front.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include "base/subprocess.h"
#include "supervisor/worker_handle.h"

namespace shoal {

HttpFront::HttpFront(boost::asio::io_context& io, const SupervisorConfig& config, ClientFront* front,
                     std::string binary)
    : io_(io), config_(config), front_(front), binary_(std::move(binary)) {}

Status HttpFront::Start() { return Spawn(); }

Status HttpFront::Spawn() {
  auto child = SpawnWorkerProcess(binary_, {"--listen", config_.http_address, "--max-body-mb",
                                            std::to_string(config_.http_max_body_mb)});
  if (!child.ok()) return Status(child.status().code(), "cannot start shoal-http: " + child.status().message());
  pid_ = child->pid;
  started_ = std::chrono::steady_clock::now();
  uint64_t session = front_->Adopt(child->sock);
  spdlog::info("shoal-http (pid {}) serves KServe v2 on {} as client session {}", pid_, config_.http_address, session);
  return Status::Ok();
}

bool HttpFront::OnExited(pid_t pid, int wait_status) {
  if (pid_ <= 0 || pid != pid_) return false;
  pid_ = -1;
  if (stopping_) return true;
  // Its session ends by itself: shoald sees the socket close.
  if (std::chrono::steady_clock::now() - started_ >= kStable) backoff_ = kFirstBackoff;
  auto delay = backoff_;
  backoff_ = std::min(kMaxBackoff, backoff_ * 2);
  spdlog::warn("shoal-http (the HTTP front on {}) exited: {}; starting it again in {} ms", config_.http_address,
               DescribeWaitStatus(wait_status), delay.count());
  RestartLater(delay);
  return true;
}

void HttpFront::RestartLater(std::chrono::milliseconds delay) {
  restart_timer_ = std::make_unique<boost::asio::steady_timer>(io_, delay);
  restart_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    if (auto st = Spawn(); !st.ok()) {
      spdlog::error("{}", st.ToString());
      auto again = backoff_;
      backoff_ = std::min(kMaxBackoff, backoff_ * 2);
      RestartLater(again);
    }
  });
}

void HttpFront::Stop() {
  stopping_ = true;
  if (restart_timer_) restart_timer_->cancel();
  if (pid_ > 0) kill(pid_, SIGTERM);
}

}  // namespace shoal
