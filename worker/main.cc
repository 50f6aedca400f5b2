// shoal-worker's command line: a worker process, the zygote that forks them, or a
// start-up check.
//
//   shoal-worker --fd N --slot S [--interpreters K --interpreter-cache DIR] [sandbox]
//   shoal-worker --fd N --zygote --supervisor PID [...]      the zygote (worker/zygote.h)
//   shoal-worker --check-interpreters K --interpreter-cache DIR
//   shoal-worker --list-gpus      the PCI bus ids of the GPUs it sees, one a line (shoald
//                                 asks this way: it never initialises CUDA itself)
// --cuda-visible V sets CUDA_VISIBLE_DEVICES=V before anything runs (the worker's GPU).
//
// This file parses the options, starts the interpreters, lets the zygote fork (it returns
// in workers only), applies the sandbox and hands the socket to the message loop
// (worker/router.h), which never returns. A worker may crash: shoald notices (EOF +
// SIGCHLD), answers the jobs of all its interpreters and replaces it.
// Threading: main runs on the process's only thread until the router starts the
// interpreters' threads (worker/lanes.h); --check-interpreters runs two threads of its own.
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <torch/version.h>
#include <unistd.h>

#include <atomic>

#include "shm/gpu_memory.h"
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "worker/filesystem_view.h"
#include "worker/interpreter.h"
#include "worker/router.h"
#include "worker/sandbox.h"
#include "worker/worker_main.h"
#include "worker/zygote.h"

namespace {

using shoal::Interpreter;
using Interpreters = std::vector<std::unique_ptr<Interpreter>>;

// The shoal package: $SHOAL_PYTHONPATH, else the build tree next to this binary
// (build/bin/../python), else wherever the interpreter finds it (an installed shoal).
std::string PythonDir() {
  std::error_code ec;
  auto beside = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().parent_path() / "python";
  if (const char* d = getenv("SHOAL_PYTHONPATH"); d != nullptr && *d != '\0') return d;
  if (std::filesystem::exists(beside / "shoal" / "_worker.py", ec)) return beside.string();
  return "";
}

// Starts `k` interpreters (private copies under `cache` when k > 1); each returns with its
// GIL released.
shoal::Result<Interpreters> StartInterpreters(int k, const std::string& cache) {
  Interpreters out;
  for (int i = 0; i < k; ++i) {
    auto it = Interpreter::Start(PythonDir(), k > 1 ? cache : "", i);
    if (!it.ok()) return it.status();
    (*it)->ReleaseGil();
    out.push_back(std::move(*it));
  }
  return out;
}

// --check-interpreters: can this torch run K interpreters in one process? Starts two,
// runs a small torch job in both at once, prints the versions. shoald runs it before
// starting workers with K > 1 and refuses to start when it fails or crashes.
int CheckInterpreters(const std::string& cache) {
  std::printf("torch %s, Python %s\n", TORCH_VERSION, SHOAL_PYTHON_VERSION);
  std::fflush(stdout);
  auto interps = StartInterpreters(2, cache);
  if (!interps.ok()) {
    std::fprintf(stderr, "%s\n", interps.status().message().c_str());
    return 1;
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (auto& it : *interps) {
    threads.emplace_back([&failures, interp = it.get()] {
      interp->AttachThread();
      if (auto st = interp->SelfTest(); !st.ok()) {
        std::fprintf(stderr, "interpreter %d: %s\n", interp->index(), st.message().c_str());
        ++failures;
      }
      interp->ReleaseGil();
    });
  }
  for (auto& t : threads) t.join();
  std::printf("%s\n", (*interps)[0]->versions().c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(failures == 0 ? 0 : 1);
}

// What model code in this process's workers may read (worker/filesystem_view.h), the same
// for every worker: worked out before the zygote forks, since asking each interpreter
// touches every module and would unshare those pages in each worker. Exits on failure.
shoal::FilesystemView ModelCodeFiles(const Interpreters& interps, const std::string& cache) {
  std::vector<std::string> python_paths;
  for (const auto& it : interps) {
    it->AcquireGil();
    auto paths = it->ImportFolders();
    it->ReleaseGil();
    if (!paths.ok()) {
      spdlog::critical("worker sandbox: {}", paths.status().ToString());
      _exit(3);
    }
    python_paths.insert(python_paths.end(), paths->begin(), paths->end());
  }
  return shoal::WorkerFilesystem(python_paths, interps.size() > 1 ? cache : "");
}

// The name of `uid` ("" when it has none).
std::string UserName(uid_t uid) {
  std::vector<char> buf(16384);
  struct passwd pw;
  struct passwd* found = nullptr;
  return getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr ? found->pw_name : "";
}

// The sandbox, closed in a worker: its private temporary folder made and given to every
// interpreter, then every restriction at once (worker/sandbox.h). Exits when it cannot.
void CloseSandbox(const shoal::SandboxConfig& sandbox, const Interpreters& interps, shoal::FilesystemView files) {
  std::string tmp;
  if (auto made = shoal::MakePrivateTmp(sandbox.tmp_root); made.ok()) {
    tmp = *made;
    // Made while still root: it belongs to the user the worker becomes (ApplySandbox).
    if (sandbox.run_as_uid >= 0 && chown(tmp.c_str(), static_cast<uid_t>(sandbox.run_as_uid),
                                         static_cast<gid_t>(sandbox.run_as_gid)) != 0) {
      spdlog::warn("worker sandbox: cannot give {} to uid {}: {}", tmp, sandbox.run_as_uid, std::strerror(errno));
    }
    setenv("TMPDIR", tmp.c_str(), 1);
    files.read_write.push_back(tmp);
  } else {
    spdlog::warn("worker sandbox: {}; model code has no temporary folder", made.status().message());
  }
  bool confined = sandbox.landlock && shoal::LandlockAbi() > 0;
  // Who the worker runs as, in its environment, read from /etc/passwd now: under Landlock
  // a replaced /etc/passwd (useradd writes a new file) is unreadable later. A worker with
  // a user of its own gets its private folder as home (nobody's is /nonexistent).
  bool switched = sandbox.run_as_uid >= 0;
  std::vector<std::pair<std::string, std::string>> env;
  // A uid without a name is named by its number (getpass.getuser() then needs no passwd).
  const uid_t uid = switched ? static_cast<uid_t>(sandbox.run_as_uid) : geteuid();
  std::string user = UserName(uid);
  if (user.empty()) user = std::to_string(uid);
  env.emplace_back("USER", user);
  env.emplace_back("LOGNAME", user);
  if (switched && !tmp.empty()) env.emplace_back("HOME", tmp);
  // The worker's GPU, set after the zygote's Python took its copy of the environment:
  // torch's Python side counts devices from it, the driver from the process's.
  if (const char* visible = getenv("CUDA_VISIBLE_DEVICES")) env.emplace_back("CUDA_VISIBLE_DEVICES", visible);
  for (const auto& it : interps) {
    it->AcquireGil();
    auto st = it->EnterSandbox(tmp, confined, env);
    it->ReleaseGil();
    if (!st.ok()) {
      spdlog::critical("worker sandbox: {}", st.ToString());
      _exit(3);
    }
  }
  if (auto st = shoal::ApplySandbox(sandbox, files); !st.ok()) {
    spdlog::critical("worker sandbox: {}", st.ToString());
    _exit(3);
  }
}

// shoald reads each worker's Rss/Pss (`status`) from /proc/PID/smaps_rollup, but a
// non-dumpable process's file can be opened only by itself or a process with
// CAP_SYS_PTRACE: a shoald that is not root could not. So the worker opens its own, before
// any model code runs, and hands shoald the open file (`memory_file` notice, one fd): reads
// of an open smaps file need no further permission, and the worker stays non-dumpable.
void HandOverMemoryFile(int sock) {
  int f = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
  if (f < 0) return;  // no figures in `status`, nothing worse
  shoal::Writer w;
  shoal::BeginNotice(&w, "memory_file", 0);
  (void)shoal::SendAll(sock, shoal::EncodeFrame(w.body()), {f});
  close(f);
}

}  // namespace

int shoal::WorkerMain(int argc, char** argv) {
  int fd = -1;
  int slot = 0;
  int interpreters = 1;
  int check = 0;
  std::string cache;
  std::string new_copies;  // K > 1 under a root shoald: where this worker's user makes library copies
  bool zygote = false;
  pid_t supervisor = 0;
  shoal::SandboxConfig sandbox;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--zygote") {
      zygote = true;
      continue;
    }
    if (a == "--list-gpus") {
      for (const auto& bus : shoal::ListGpus()) printf("%s\n", bus.c_str());
      return 0;
    }
    if (i + 1 >= argc) break;
    std::string v = argv[++i];
    if (a == "--fd") {
      fd = std::atoi(v.c_str());
    } else if (a == "--slot") {
      slot = std::atoi(v.c_str());
    } else if (a == "--interpreters") {
      interpreters = std::atoi(v.c_str());
    } else if (a == "--interpreter-cache") {
      cache = v;
    } else if (a == "--check-interpreters") {
      check = std::atoi(v.c_str());
    } else if (a == "--cuda-visible") {
      setenv("CUDA_VISIBLE_DEVICES", v.c_str(), 1);
    } else if (a == "--new-copies") {
      new_copies = v;
    } else if (a == "--supervisor") {
      supervisor = static_cast<pid_t>(std::atoi(v.c_str()));
    } else if (!sandbox.ParseArg(a, v)) {
      fprintf(stderr, "shoal-worker: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoal-worker[%P] %l: %v");
  if (check > 0) return CheckInterpreters(cache);
  if (fd < 0 || interpreters < 1 || (interpreters > 1 && cache.empty())) {
    fprintf(stderr, "shoal-worker is started by shoald (usage: shoal-worker --fd N --slot S "
                    "[--interpreters K --interpreter-cache DIR])\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);

  auto interps = StartInterpreters(interpreters, cache);
  if (!interps.ok()) {
    spdlog::critical("{}", interps.status().ToString());
    _exit(3);
  }
  // Once per zygote (or exec'd worker): what Landlock gives on this kernel.
  if (sandbox.landlock) {
    int abi = shoal::LandlockAbi();
    std::string what = shoal::DescribeLandlock(abi, sandbox.allow_network);
    abi > 0 ? spdlog::info("worker sandbox: {}", what) : spdlog::warn("worker sandbox: {}", what);
  }
  auto files = ModelCodeFiles(*interps, cache);
  if (zygote) {
    // Model code (in the workers it forks) may not read the zygote's memory either. The
    // zygote itself stays unconfined: each worker closes its own sandbox after the fork.
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    auto forked = shoal::RunZygote(fd, *interps, supervisor);  // returns in workers only
    fd = forked.fd;
    slot = forked.slot;
  }
  HandOverMemoryFile(fd);
  // The folder where this worker's user makes the library copies K > 1 still needs is
  // written by the worker itself, under Landlock too.
  if (!new_copies.empty()) files.read_write.push_back(new_copies);
  // Everything model code could abuse is dropped before the first model is loaded.
  CloseSandbox(sandbox, *interps, std::move(files));
  if (!new_copies.empty()) {  // only now: neither the zygote nor root loads what a worker may write
    for (const auto& it : *interps) it->MakeNewCopiesIn(new_copies);
  }
  if (interpreters > 1) shoal::ServeMany(fd, slot, *interps);
  Interpreter* only = (*interps)[0].get();
  only->AcquireGil();
  if (auto st = only->CreateRunner(slot); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    _exit(3);
  }
  shoal::ServeOne(fd, slot, only);
}

#ifndef SHOAL_HOSTED_BY_PYTHON
int main(int argc, char** argv) { return shoal::WorkerMain(argc, argv); }
#endif
