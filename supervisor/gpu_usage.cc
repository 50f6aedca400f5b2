// GPU memory figures through NVML (supervisor/gpu_usage.h).
#include "supervisor/gpu_usage.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include <mutex>

namespace shoal {

namespace {

// NVML's C API, as nvml.h declares it (stable since NVML 2; not every build host has the
// header, so the few entry points used are declared here).
using NvmlReturn = int;
using NvmlDevice = void*;
struct NvmlMemory {
  unsigned long long total, free, used;
};

struct Nvml {
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*by_bus)(const char*, NvmlDevice*) = nullptr;
  NvmlReturn (*memory)(NvmlDevice, NvmlMemory*) = nullptr;
  Status ready = Status(Code::kUnavailable, "NVML (libnvidia-ml.so.1) was not loaded");
};

// NVML opens the driver's device files without O_CLOEXEC: processes shoald starts later
// (the zygote, exec'd workers) must not inherit them.
void CloseOnExecDriverFds() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return;
  while (dirent* e = readdir(d)) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] == '.' || fd == dirfd(d)) continue;
    char target[256];
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = 0;
    if (std::string(target).rfind("/dev/nvidia", 0) == 0) fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  }
  closedir(d);
}

const Nvml& N() {
  static Nvml n;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      n.ready = Status(Code::kUnavailable, std::string("NVML cannot be loaded: ") + dlerror());
      return;
    }
    n.init = reinterpret_cast<NvmlReturn (*)()>(dlsym(lib, "nvmlInit_v2"));
    n.by_bus = reinterpret_cast<NvmlReturn (*)(const char*, NvmlDevice*)>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    n.memory = reinterpret_cast<NvmlReturn (*)(NvmlDevice, NvmlMemory*)>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
    if (n.init == nullptr || n.by_bus == nullptr || n.memory == nullptr) {
      n.ready = Status(Code::kUnavailable, "NVML lacks nvmlDeviceGetHandleByPciBusId_v2 (driver too old)");
      return;
    }
    NvmlReturn r = n.init();
    CloseOnExecDriverFds();
    if (r != 0) {
      n.ready = Status(Code::kUnavailable, "nvmlInit failed (NVML error " + std::to_string(r) + ")");
      return;
    }
    n.ready = Status::Ok();
  });
  return n;
}

}  // namespace

Result<GpuMemoryFigures> GpuMemoryOf(const std::string& bus) {
  const Nvml& n = N();
  if (!n.ready.ok()) return n.ready;
  NvmlDevice dev = nullptr;
  if (NvmlReturn r = n.by_bus(bus.c_str(), &dev); r != 0) {
    return Status(Code::kUnavailable, "NVML knows no GPU " + bus + " (NVML error " + std::to_string(r) + ")");
  }
  NvmlMemory m{};
  if (NvmlReturn r = n.memory(dev, &m); r != 0) {
    return Status(Code::kUnavailable, "NVML cannot read GPU " + bus + "'s memory (NVML error " + std::to_string(r) + ")");
  }
  return GpuMemoryFigures{m.used, m.total};
}

}  // namespace shoal
