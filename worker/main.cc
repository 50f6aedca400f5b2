// shoal-worker: a worker process, or the zygote that forks them.
//
//   shoal-worker --fd N --slot S [sandbox options]        one worker (started by exec)
//   shoal-worker --fd N --zygote --supervisor PID [...]    the zygote (worker/zygote.h)
//
// A worker reads framed messages from shoald, lets the embedded interpreter handle them
// and writes the replies. It may crash: shoald notices (EOF + SIGCHLD), answers its jobs
// and replaces it.
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
#include "protocol/messages.h"
#include "worker/sandbox.h"
#include "worker/torchscript.h"
#include "worker/zygote.h"

namespace {

// The shoal package: $SHOAL_PYTHONPATH, else the build tree next to this binary
// (build/bin/../python), else wherever the interpreter finds it (an installed shoal).
std::string PythonDir() {
  std::error_code ec;
  auto beside = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().parent_path() / "python";
  if (const char* d = getenv("SHOAL_PYTHONPATH"); d != nullptr && *d != '\0') return d;
  if (std::filesystem::exists(beside / "shoal" / "_worker.py", ec)) return beside.string();
  return "";
}

[[noreturn]] void Serve(int fd, shoal::Interpreter* interp) {
  shoal::FrameReader reader;
  std::vector<int> fds;
  shoal::TorchScriptModels torchscript;  // TorchScript runs here, in C++, without Python
  for (;;) {
    interp->ReleaseGil();
    auto body = shoal::RecvFrame(fd, &reader, &fds);
    interp->AcquireGil();
    if (!body.ok()) {
      if (body.status().code() != shoal::Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;  // supervisor gone or stream broken: nothing left to serve
    }
    if (auto oh = shoal::Decode(*body); oh.ok()) {
      std::string ts_reply;
      if (torchscript.Handle(shoal::MapView(oh->get()), fds, &ts_reply)) {
        if (!ts_reply.empty() && !shoal::SendAll(fd, shoal::EncodeFrame(ts_reply)).ok()) break;
        continue;
      }
    }
    auto reply = interp->Handle(*body, &fds);
    if (!reply.ok()) {
      spdlog::critical("{}", reply.status().ToString());
      _exit(4);
    }
    if (!reply->empty()) {
      if (auto st = shoal::SendAll(fd, shoal::EncodeFrame(*reply)); !st.ok()) break;
    }
  }
  fflush(stderr);
  // No Py_Finalize: tearing torch down at exit can hang and buys nothing.
  _exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  int fd = -1;
  int slot = 0;
  bool zygote = false;
  pid_t supervisor = 0;
  shoal::SandboxConfig sandbox;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--zygote") {
      zygote = true;
      continue;
    }
    if (i + 1 >= argc) break;
    std::string v = argv[++i];
    if (a == "--fd") {
      fd = std::atoi(v.c_str());
    } else if (a == "--slot") {
      slot = std::atoi(v.c_str());
    } else if (a == "--supervisor") {
      supervisor = static_cast<pid_t>(std::atoi(v.c_str()));
    } else if (!sandbox.ParseArg(a, v)) {
      fprintf(stderr, "shoal-worker: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (fd < 0) {
    fprintf(stderr, "shoal-worker is started by shoald (usage: shoal-worker --fd N --slot S)\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoal-worker[%P] %l: %v");

  auto interp = shoal::Interpreter::Start(PythonDir());
  if (!interp.ok()) {
    spdlog::critical("{}", interp.status().ToString());
    _exit(3);
  }
  if (zygote) {
    if (auto st = (*interp)->Freeze(); !st.ok()) spdlog::warn("{}", st.ToString());
    auto forked = shoal::RunZygote(fd, interp->get(), supervisor);  // returns in workers only
    fd = forked.fd;
    slot = forked.slot;
  }
  // Everything model code could abuse is dropped before the first model is loaded.
  if (auto st = shoal::ApplySandbox(sandbox); !st.ok()) {
    spdlog::critical("worker sandbox: {}", st.ToString());
    _exit(3);
  }
  if (auto st = (*interp)->CreateRunner(slot); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    _exit(3);
  }
  Serve(fd, interp->get());
}
