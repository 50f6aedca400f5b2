#include "base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

extern char** environ;

namespace shoal {

std::string DescribeWaitStatus(int status) {
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    return std::string("signal ") + (abbrev ? std::string("SIG") + abbrev : std::to_string(sig)) + " (" +
           strsignal(sig) + ")";
  }
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  return "status " + std::to_string(status);
}

bool ProcessOutput::succeeded() const { return !timed_out && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0; }

std::string ProcessOutput::Describe() const {
  return timed_out ? "no answer in time (killed)" : DescribeWaitStatus(wait_status);
}

Result<ProcessOutput> RunProcess(const std::vector<std::string>& argv, int timeout_s) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) return Status::FromErrno("pipe", errno);
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return Status::FromErrno("pipe", errno);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  close(err[1]);
  ProcessOutput po;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  struct pollfd pfd[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sink[2] = {&po.out, &po.err};
  int open_fds = 2;
  while (rc == 0 && open_fds > 0) {
    int wait_ms = -1;
    if (timeout_s > 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        po.timed_out = true;
        kill(pid, SIGKILL);
        break;
      }
      wait_ms = static_cast<int>(left.count());
    }
    int n = poll(pfd, 2, wait_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (pfd[i].fd < 0 || pfd[i].revents == 0) continue;
      char buf[4096];
      ssize_t r = read(pfd[i].fd, buf, sizeof buf);
      if (r > 0) {
        sink[i]->append(buf, static_cast<size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        close(pfd[i].fd);
        pfd[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& p : pfd) {
    if (p.fd >= 0) close(p.fd);
  }
  if (rc != 0) return Status::FromErrno("cannot run " + argv[0], rc);
  while (waitpid(pid, &po.wait_status, 0) < 0 && errno == EINTR) {
  }
  return po;
}

Result<std::string> RunTool(const std::vector<std::string>& argv) {
  auto r = RunProcess(argv);
  if (!r.ok()) return r.status();
  if (!r->succeeded()) {
    std::string cmd;
    for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
    return Status::Internal("'" + cmd + "' failed (" + r->Describe() + ")" + (r->err.empty() ? "" : ": " + r->err));
  }
  return r->out;
}

}  // namespace shoal
