#include "worker/zygote.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

namespace shoal {

namespace {

void Reply(int fd, uint64_t id, pid_t pid) {
  Writer w;
  BeginReply(&w, id, 1);
  w.Key("pid"); w.Val(static_cast<int64_t>(pid));
  (void)SendAll(fd, EncodeFrame(w.body()));
}

// In the worker: wait until it is shoald's child (the middle process has exited), then
// ask for SIGKILL when shoald dies.
void BecomeSupervisorsChild(pid_t supervisor) {
  for (int i = 0; i < 20000 && getppid() != supervisor; ++i) usleep(50);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != supervisor) _exit(0);  // shoald is gone already
}

}  // namespace

ForkedWorker RunZygote(int fd, const std::vector<std::unique_ptr<Interpreter>>& interps, pid_t supervisor) {
  for (const auto& it : interps) {
    it->AcquireGil();
    if (auto st = it->Freeze(); !st.ok()) spdlog::warn("{}", st.ToString());
    it->ReleaseGil();
  }
  // Every fork hook of every runtime runs with that runtime's GIL held.
  auto before = [&] {
    for (const auto& it : interps) {
      it->AcquireGil();
      it->BeforeFork();
    }
  };
  auto after = [&](bool child) {
    for (const auto& it : interps) {
      child ? it->AfterForkChild() : it->AfterForkParent();
      it->ReleaseGil();
    }
  };
  {
    // Ready: from now on a fork request is answered in milliseconds (shoald's deadline
    // for fork requests starts here; importing torch before this may take long).
    Writer w;
    BeginNotice(&w, "ready", 0);
    (void)SendAll(fd, EncodeFrame(w.body()));
  }
  FrameReader reader;
  std::vector<int> fds;
  for (;;) {
    auto body = RecvFrame(fd, &reader, &fds);
    if (!body.ok()) _exit(0);  // shoald went away
    auto oh = Decode(*body);
    if (!oh.ok()) _exit(5);
    MapView m(oh->get());
    auto op = m.Str("op");
    auto id = m.Uint("id");
    auto slot = m.Uint("slot");
    if (!op.ok() || *op != "fork" || !id.ok() || !slot.ok() || fds.empty()) {
      spdlog::critical("zygote: malformed request from shoald");
      _exit(5);
    }
    int worker_fd = fds.front();
    fds.erase(fds.begin());
    // The worker's memory cgroup (supervisor/worker_memory.h): its cgroup.procs, which the
    // worker writes itself into before anything else runs in it.
    int cgroup_fd = -1;
    if (m.Bool("cgroup").value_or(false) && !fds.empty()) {
      cgroup_fd = fds.front();
      fds.erase(fds.begin());
    }

    // The worker's GPU (shoald places workers): set before anything in it can touch CUDA.
    auto cuda_visible = m.OptStr("cuda_visible");

    int pid_pipe[2];
    if (pipe2(pid_pipe, O_CLOEXEC) != 0) _exit(6);
    before();
    pid_t middle = fork();
    if (middle == 0) {
      if (cgroup_fd >= 0) {
        // The middle process joins, so that the worker is born in the group (before shoald
        // learns its pid and checks that it is there; else shoald's sampler enforces).
        (void)!write(cgroup_fd, "0", 1);
        close(cgroup_fd);
        cgroup_fd = -1;
      }
      pid_t worker = fork();
      if (worker != 0) {  // the middle process: report the worker's pid and vanish
        (void)!write(pid_pipe[1], &worker, sizeof(worker));
        _exit(0);
      }
      after(true);
      close(pid_pipe[0]);
      close(pid_pipe[1]);
      close(fd);
      CloseAll(&fds);
      if (cuda_visible.ok() && cuda_visible->has_value()) setenv("CUDA_VISIBLE_DEVICES", (*cuda_visible)->c_str(), 1);
      BecomeSupervisorsChild(supervisor);
      return ForkedWorker{worker_fd, static_cast<int>(*slot)};
    }
    after(false);
    close(pid_pipe[1]);
    close(worker_fd);  // the worker has it; shoald's end sees EOF when the worker dies
    if (cgroup_fd >= 0) close(cgroup_fd);
    pid_t worker = -1;
    if (middle > 0) {
      (void)!read(pid_pipe[0], &worker, sizeof(worker));
      while (waitpid(middle, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    close(pid_pipe[0]);
    Reply(fd, *id, worker);
  }
}

}  // namespace shoal
