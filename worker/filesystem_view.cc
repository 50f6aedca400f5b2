#include "worker/filesystem_view.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "worker/private_copy.h"

namespace shoal {

namespace {

// Software, read and executed by libc's loader, Python and subprocesses (merged-/usr
// systems make /lib* and /bin symlinks into /usr).
const char* const kSystemReadExec[] = {"/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin"};

// Read only. /proc whole: Landlock already refuses model code the processes outside its
// domain (ptrace rules: their mem, environ, maps, fds), and a process started by model
// code needs its own /proc/self. /sys only where hardware is described (CPU topology,
// PCI devices for CUDA, cgroup limits, transparent huge pages). From /etc only what libc,
// Python, OpenSSL and GPU drivers read; never all of it (a root worker could read
// /etc/shadow).
const char* const kSystemReadOnly[] = {
    "/proc", "/sys/devices", "/sys/bus", "/sys/class", "/sys/dev", "/sys/module", "/sys/fs/cgroup",
    "/sys/kernel/mm", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.preload",
    "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts",
    "/etc/host.conf", "/etc/resolv.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/ssl",
    "/etc/ca-certificates", "/etc/pki", "/etc/crypto-policies", "/etc/mime.types", "/etc/os-release",
    "/etc/lsb-release", "/etc/debian_version", "/etc/machine-id", "/etc/alternatives", "/etc/fonts",
    "/etc/OpenCL", "/etc/vulkan", "/etc/glvnd", "/etc/nvidia", "/etc/nvidia-container-runtime"};

// Read, write, ioctl.
const char* const kSystemDevices[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                                      "/dev/kfd", "/dev/dri"};

// A folder anyone may add files to (/tmp, /var/tmp, /dev/shm): never granted whole.
bool SharedWritable(const std::string& dir) {
  struct stat st;
  return stat(dir.c_str(), &st) == 0 && (st.st_mode & (S_IWOTH | S_ISVTX)) != 0;
}

// The folder of each file mapped now (the libraries torch and Python loaded): libraries
// they load later sit beside them. A file in a shared writable folder is granted alone.
std::vector<std::string> MappedFolders() {
  std::set<std::string> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    auto slash = line.find('/');
    if (slash == std::string::npos || line.find(" (deleted)") != std::string::npos) continue;
    std::string file = line.substr(slash);
    struct stat st;
    if (file.rfind("/dev/", 0) == 0 || stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    std::string dir = std::filesystem::path(file).parent_path().string();
    out.insert(SharedWritable(dir) ? file : dir);
  }
  return {out.begin(), out.end()};
}

std::vector<std::string> Split(const std::string& list, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty() && item[0] == '/') out.push_back(item);
  }
  return out;
}

}  // namespace

Result<std::string> MakePrivateTmp(const std::string& root) {
  if (root.empty()) return Status::BadRequest("shoald gave no --tmp-root");
  std::string dir = root + "/" + std::to_string(getpid());
  if (mkdir(dir.c_str(), 0700) != 0) {
    // A folder of an earlier process with this pid that shoald has not removed yet.
    struct stat st;
    if (errno != EEXIST || lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
      return Status::FromErrno("cannot make the worker's temporary folder " + dir, errno);
    }
  }
  return dir;
}

FilesystemView WorkerFilesystem(const std::vector<std::string>& python_paths, const std::string& interpreter_cache) {
  FilesystemView v;
  v.read_exec.assign(std::begin(kSystemReadExec), std::end(kSystemReadExec));
  v.read_exec.insert(v.read_exec.end(), python_paths.begin(), python_paths.end());
  for (auto& dir : MappedFolders()) v.read_exec.push_back(dir);
  if (const char* ld = getenv("LD_LIBRARY_PATH")) {
    for (auto& dir : Split(ld, ':')) v.read_exec.push_back(dir);
  }
#ifndef SHOAL_HOSTED_BY_PYTHON
  // shoal's own prefix (bin/.., holding lib/shoal and python/ in a build tree). Not for
  // shoal-worker-py: the executable is Python's (a conda prefix would open all of conda),
  // and the shoal package is on its import path already.
  std::error_code ec;
  auto prefix = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().parent_path();
  if (!ec && prefix.has_relative_path() && !SharedWritable(prefix.string())) v.read_exec.push_back(prefix.string());
#endif

  v.read_only.assign(std::begin(kSystemReadOnly), std::end(kSystemReadOnly));

  // The worker's own threads (/proc/self resolves in the worker, when the rule is made):
  // the CUDA driver names its threads through their comm files and cuInit fails when it
  // cannot (CUDA_ERROR_OPERATING_SYSTEM); pthread_setname_np does the same for others.
  v.rewrite.push_back("/proc/self/task");

  v.devices.assign(std::begin(kSystemDevices), std::end(kSystemDevices));
  if (DIR* d = opendir("/dev")) {
    while (dirent* e = readdir(d)) {
      if (std::string(e->d_name).rfind("nvidia", 0) == 0) v.devices.push_back(std::string("/dev/") + e->d_name);
    }
    closedir(d);
  }

  if (!interpreter_cache.empty()) {
    // Importing an extension module makes this interpreter's copy of it, with patchelf.
    v.read_write.push_back(interpreter_cache);
    if (auto patchelf = FindPatchelf(); patchelf.ok()) v.read_exec.push_back(*patchelf);
  }
  return v;
}

}  // namespace shoal
