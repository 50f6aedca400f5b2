#include "supervisor/worker_handle.h"

#include "supervisor/job.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shoal {

std::string WorkerHandle::Describe() const {
  return "worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ")";
}

int WorkerHandle::Running() const {
  int n = 0;
  for (const auto& j : jobs) n += j != nullptr;
  return n;
}

std::shared_ptr<Job> WorkerHandle::JobOf(uint64_t id) const { return FindJob(jobs, id); }

std::shared_ptr<Job> FindJob(const std::vector<std::shared_ptr<Job>>& jobs, uint64_t id) {
  for (const auto& j : jobs) {
    if (!j) continue;
    if (j->id == id) return j;
    for (const auto& m : j->batch) {
      if (m->id == id) return m;
    }
  }
  return nullptr;
}

int WorkerHandle::FreeInterpreter(const std::string& model) const {
  int any = -1;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (jobs[i] != nullptr) continue;
    if (last_model[i] == model) return static_cast<int>(i);
    if (any < 0) any = static_cast<int>(i);
  }
  return any;
}

int WorkerHandle::AheadInterpreter(const std::string& model, std::chrono::milliseconds limit) const {
  int best = -1;
  const auto now = std::chrono::steady_clock::now();
  for (size_t i = 0; i < jobs.size(); ++i) {
    const auto& j = jobs[i];
    if (j == nullptr || !j->batch.empty() || ahead[i] != nullptr) continue;
    // A long job could hold it past the moment another slot frees: only behind short ones.
    if (j->expected_ms <= 0 || j->expected_ms >= static_cast<double>(limit.count()) || now - j->started >= limit) continue;
    if (best < 0) {
      best = static_cast<int>(i);
      continue;
    }
    const auto& b = jobs[static_cast<size_t>(best)];
    bool warm = j->model == model;
    bool best_warm = b->model == model;
    if ((warm && !best_warm) || (warm == best_warm && j->started < b->started)) best = static_cast<int>(i);
  }
  return best;
}

Result<SpawnedProcess> SpawnWorkerProcess(const std::string& binary, const std::vector<std::string>& args) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return Status::FromErrno("socketpair for a worker", errno);
  }
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<std::string> arg_store = {binary, "--fd", "3"};
  arg_store.insert(arg_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : arg_store) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t parent = getpid();
  struct rlimit files;
  int max_fd = getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < (1u << 20) ? static_cast<int>(files.rlim_cur)
                                                                                       : (1 << 20);

  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    close(sv[0]);
    close(sv[1]);
    return Status::FromErrno("fork of a worker", err);
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the supervisor died before prctl
    // Signals the supervisor blocked or handles must not leak into the worker.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGPIPE}) signal(s, SIG_DFL);
    if (sv[1] == 3) {
      fcntl(3, F_SETFD, 0);
    } else if (dup2(sv[1], 3) < 0) {  // dup2 clears close-on-exec on fd 3
      _exit(127);
    }
    // Nothing else of shoald's goes with it: not its listening sockets (clients, metrics),
    // on which model code could accept connections meant for shoald (a TCP one even where
    // it may not create sockets), nor whatever shoald inherited. Asio does not mark its
    // sockets close-on-exec.
    long closed = -1;
#ifdef SYS_close_range
    closed = syscall(SYS_close_range, 4u, ~0u, 0u);
#endif
    if (closed != 0) {
      for (int fd = 4; fd < max_fd; ++fd) close(fd);  // kernels before 5.9
    }
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(sv[1]);
  return SpawnedProcess{pid, sv[0]};
}

}  // namespace shoal
