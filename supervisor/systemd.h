// The parts of systemd's service protocols shoald speaks, without libsystemd:
// socket activation (LISTEN_FDS/LISTEN_PID, sd_listen_fds(3)) and the notify protocol
// (NOTIFY_SOCKET datagrams: READY=1, STATUS=, STOPPING=1, WATCHDOG=1; sd_notify(3)).
// Both are no-ops when the variables are absent, so shoald runs the same by hand.
// Thread-safety: call from the loop thread.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "shoal/status.h"

namespace shoal {

// The listening socket passed by systemd (fd 3), if LISTEN_PID is ours and LISTEN_FDS >= 1.
// Unsets the variables so that workers do not inherit them.
std::optional<int> TakeListenFd();

class Notifier {
 public:
  // Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID; unsets them for children.
  Notifier();
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  bool enabled() const { return fd_ >= 0; }
  // Sends one notification ("READY=1\nSTATUS=..."); errors are logged, not fatal.
  void Notify(const std::string& state);
  // How often to send WATCHDOG=1 (half of WATCHDOG_USEC), if systemd asked for it.
  std::optional<std::chrono::microseconds> watchdog_interval() const { return watchdog_; }

 private:
  int fd_ = -1;
  std::string path_;
  std::optional<std::chrono::microseconds> watchdog_;
};

}  // namespace shoal
