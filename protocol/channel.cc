#include "protocol/channel.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "protocol/frame.h"
#include "protocol/spin.h"

namespace shoal {

namespace {
ssize_t SendMsg(int sock, std::string_view data, const std::vector<int>& fds) {
  struct iovec iov;
  iov.iov_base = const_cast<char*>(data.data());
  iov.iov_len = data.size();
  struct msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFdsPerFrame)];
  if (!fds.empty()) {
    size_t len = sizeof(int) * fds.size();
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(len);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(len);
    std::memcpy(CMSG_DATA(c), fds.data(), len);
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}
}  // namespace

Status SendAll(int sock, std::string_view data, const std::vector<int>& fds) {
  if (fds.size() > kMaxFdsPerFrame) return Status::Internal("too many fds for one frame");
  bool first = true;
  while (!data.empty()) {
    ssize_t n = SendMsg(sock, data, first ? fds : std::vector<int>{});
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Non-blocking after all (Python's socket timeouts make it so for a while): wait.
      struct pollfd p = {sock, POLLOUT, 0};
      if (poll(&p, 1, -1) < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
      continue;
    }
    if (n < 0) return Status::FromErrno("sendmsg", errno);
    first = false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Result<size_t> SendSome(int sock, std::string_view data, const std::vector<int>& fds) {
  ssize_t n = SendMsg(sock, data, fds);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return size_t{0};
    return Status::FromErrno("sendmsg", errno);
  }
  return static_cast<size_t>(n);
}

namespace {
// One recvmsg (RecvSome); a signal during it retries, or with `interrupted` sets
// *interrupted and returns 0 bytes.
Result<size_t> RecvOnce(int sock, uint8_t* buf, size_t cap, std::vector<int>* fds, int flags, bool* interrupted) {
  struct iovec iov;
  iov.iov_base = buf;
  iov.iov_len = cap;
  struct msghdr msg;
  std::memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFdsPerFrame)];
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof(ctrl);
  ssize_t n;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
    if (n < 0 && errno == EINTR && interrupted != nullptr) {
      *interrupted = true;
      return size_t{0};
    }
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Status(Code::kUnavailable, "would block");
    return Status::FromErrno("recvmsg", errno);
  }
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* p = reinterpret_cast<const int*>(CMSG_DATA(c));
      for (size_t i = 0; i < count; ++i) fds->push_back(p[i]);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    CloseAll(fds);
    return Status::BadRequest("too many file descriptors in one message (at most " +
                              std::to_string(kMaxFdsPerFrame) + ")");
  }
  return static_cast<size_t>(n);
}
}  // namespace

Result<size_t> RecvSome(int sock, uint8_t* buf, size_t cap, std::vector<int>* fds, int flags) {
  return RecvOnce(sock, buf, cap, fds, flags, nullptr);
}

namespace {
// Polls the socket without blocking for up to SpinBudget(), and not past `deadline`: the
// bytes read, or 0 when nothing came (then the caller blocks, or times out, as before).
// *polled: whether it polled at all. EOF reads as an error here.
Result<size_t> SpinRecv(int sock, uint8_t* buf, size_t cap, std::vector<int>* fds,
                        std::optional<std::chrono::steady_clock::time_point> deadline, bool* polled) {
  *polled = false;
  const auto budget = SpinBudget();
  if (budget.count() == 0) return size_t{0};
  const auto now = std::chrono::steady_clock::now();
  const auto until = deadline ? std::min(now + budget, *deadline) : now + budget;
  if (until <= now) return size_t{0};  // a deadline already past: only what has come
  *polled = true;
  for (;;) {
    auto n = RecvSome(sock, buf, cap, fds, MSG_DONTWAIT);
    if (n.ok() && *n == 0) return Status(Code::kUnavailable, "connection closed by peer");
    if (n.ok() || n.status().code() != Code::kUnavailable) return n;
    if (std::chrono::steady_clock::now() >= until) return size_t{0};
    CpuRelax();
  }
}

// RecvFrame (RecvFrameUntilSignal with `interrupted`; `spin`: whether to poll first).
Result<std::string> ReadFrame(int sock, FrameReader* reader, std::vector<int>* fds,
                              std::optional<std::chrono::steady_clock::time_point> deadline, bool spin,
                              bool* interrupted) {
  uint8_t buf[64 * 1024];
  for (;;) {
    auto frame = reader->Next();
    if (!frame.ok()) return frame.status();
    if (frame->has_value()) return std::move(**frame);
    bool polled = false;
    auto spun = spin ? SpinRecv(sock, buf, sizeof(buf), fds, deadline, &polled) : Result<size_t>(size_t{0});
    if (!spun.ok()) return spun.status();
    if (*spun > 0) {
      reader->Append(buf, *spun);
      continue;
    }
    if (polled && interrupted != nullptr) {
      // A signal while it polled interrupted nothing: back to the caller before it blocks.
      *interrupted = true;
      return std::string();
    }
    int flags = 0;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
      if (left.count() > 0) {
        struct pollfd p = {sock, POLLIN, 0};
        int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX)));
        if (r < 0 && errno == EINTR && interrupted != nullptr) {
          *interrupted = true;
          return std::string();
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return Status::FromErrno("poll", errno);
        if (r == 0) return Status(Code::kTimeout, "no answer before the deadline");
      } else {
        flags = MSG_DONTWAIT;  // past the deadline: only what has come (no poll, no blocking)
      }
    }
    auto n = RecvOnce(sock, buf, sizeof(buf), fds, flags, interrupted);
    if (interrupted != nullptr && *interrupted) return std::string();
    if (!n.ok() && flags != 0 && n.status().code() == Code::kUnavailable) {
      return Status(Code::kTimeout, "no answer before the deadline");
    }
    if (!n.ok()) return n.status();
    if (*n == 0) return Status(Code::kUnavailable, "connection closed by peer");
    reader->Append(buf, *n);
  }
}
}  // namespace

Result<std::string> RecvFrame(int sock, FrameReader* reader, std::vector<int>* fds,
                              std::optional<std::chrono::steady_clock::time_point> deadline) {
  return ReadFrame(sock, reader, fds, deadline, true, nullptr);
}

Result<std::string> RecvFrameUntilSignal(int sock, FrameReader* reader, std::vector<int>* fds,
                                         std::optional<std::chrono::steady_clock::time_point> deadline, bool spin,
                                         bool* interrupted) {
  *interrupted = false;
  return ReadFrame(sock, reader, fds, deadline, spin, interrupted);
}

void CloseAll(std::vector<int>* fds) {
  for (int fd : *fds) close(fd);
  fds->clear();
}

}  // namespace shoal
