#include "supervisor/systemd.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace shoal {

std::optional<int> TakeListenFd() {
  const char* pid = getenv("LISTEN_PID");
  const char* fds = getenv("LISTEN_FDS");
  std::optional<int> out;
  if (pid != nullptr && fds != nullptr && std::strtol(pid, nullptr, 10) == getpid() &&
      std::strtol(fds, nullptr, 10) >= 1) {
    out = 3;  // SD_LISTEN_FDS_START
    if (std::strtol(fds, nullptr, 10) > 1) spdlog::warn("systemd passed several sockets; using the first");
  }
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  return out;
}

Notifier::Notifier() {
  const char* sock = getenv("NOTIFY_SOCKET");
  if (sock != nullptr && *sock != '\0' && (sock[0] == '/' || sock[0] == '@')) {
    path_ = sock;
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) spdlog::warn("NOTIFY_SOCKET set but socket() failed: {}", std::strerror(errno));
  }
  const char* usec = getenv("WATCHDOG_USEC");
  const char* wpid = getenv("WATCHDOG_PID");
  if (usec != nullptr && (wpid == nullptr || std::strtol(wpid, nullptr, 10) == getpid())) {
    long long us = std::strtoll(usec, nullptr, 10);
    if (us > 0) watchdog_ = std::chrono::microseconds(us / 2);
  }
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  unsetenv("WATCHDOG_PID");
}

Notifier::~Notifier() {
  if (fd_ >= 0) close(fd_);
}

void Notifier::Notify(const std::string& state) {
  if (fd_ < 0) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, path_.data(), path_.size());
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path_.size());
  if (sendto(fd_, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    spdlog::warn("sd_notify({}) failed: {}", state.substr(0, state.find('\n')), std::strerror(errno));
  }
}

}  // namespace shoal
