// shoal-worker: one worker process. Started by shoald with its end of a socketpair as
// --fd; reads framed messages, lets the embedded interpreter handle them, writes replies.
// It may crash: shoald notices (EOF + SIGCHLD), answers its jobs and replaces it.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "worker/interpreter.h"

int main(int argc, char** argv) {
  int fd = -1;
  int slot = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--fd") == 0) fd = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--slot") == 0) slot = std::atoi(argv[i + 1]);
  }
  if (fd < 0) {
    fprintf(stderr, "shoal-worker is started by shoald (usage: shoal-worker --fd N --slot S)\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoal-worker[%P] %l: %v");

  // The shoal package: $SHOAL_PYTHONPATH, else the build tree next to this binary
  // (build/bin/../python), else wherever the interpreter finds it (an installed shoal).
  std::string python_dir;
  std::error_code ec;
  auto beside = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().parent_path() / "python";
  if (const char* d = getenv("SHOAL_PYTHONPATH"); d != nullptr && *d != '\0') {
    python_dir = d;
  } else if (std::filesystem::exists(beside / "shoal" / "_worker.py", ec)) {
    python_dir = beside.string();
  }
  auto interp = shoal::Interpreter::Start(python_dir, slot);
  if (!interp.ok()) {
    spdlog::critical("{}", interp.status().ToString());
    _exit(3);
  }
  shoal::FrameReader reader;
  std::vector<int> fds;
  for (;;) {
    (*interp)->ReleaseGil();
    auto body = shoal::RecvFrame(fd, &reader, &fds);
    (*interp)->AcquireGil();
    if (!body.ok()) {
      if (body.status().code() != shoal::Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;  // supervisor gone or stream broken: nothing left to serve
    }
    auto reply = (*interp)->Handle(*body, &fds);
    if (!reply.ok()) {
      spdlog::critical("{}", reply.status().ToString());
      _exit(4);
    }
    if (!reply->empty()) {
      if (auto st = shoal::SendAll(fd, shoal::EncodeFrame(*reply)); !st.ok()) break;
    }
  }
  fflush(stderr);
  _exit(0);
}
