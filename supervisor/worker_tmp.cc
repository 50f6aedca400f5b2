#include "supervisor/worker_tmp.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace shoal {

namespace {

// Removes `name` in folder `parent` (an open fd) and, if it is a folder, what it holds,
// opening each level with O_NOFOLLOW relative to the one above: a folder swapped for a
// link while this runs is unlinked as a link. Best effort: what cannot be removed stays.
void RemoveAt(int parent, const char* name, int depth) {
  if (unlinkat(parent, name, 0) == 0 || errno == ENOENT) return;
  if (errno != EISDIR && errno != EPERM) return;  // EPERM: Linux's answer for a folder
  int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  if (depth < 64) {
    if (DIR* d = fdopendir(fd)) {
      std::vector<std::string> entries;
      while (dirent* e = readdir(d)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) entries.push_back(e->d_name);
      }
      for (const auto& e : entries) RemoveAt(dirfd(d), e.c_str(), depth + 1);
      closedir(d);  // closes fd
      fd = -1;
    }
  }
  if (fd >= 0) close(fd);
  unlinkat(parent, name, AT_REMOVEDIR);
}

}  // namespace

WorkerTmp::~WorkerTmp() {
  if (root_.empty()) return;
  RemoveAt(AT_FDCWD, root_.c_str(), 0);
}

Status WorkerTmp::Create() {
  if (!root_.empty()) return Status::Ok();
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr && *base == '/' ? base : "/tmp") + "/shoald-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    return Status::FromErrno("cannot make the workers' temporary folder " + tmpl, errno);
  }
  root_ = tmpl;
  return Status::Ok();
}

void WorkerTmp::Remove(pid_t pid) {
  if (root_.empty() || pid <= 0) return;
  int fd = open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  RemoveAt(fd, std::to_string(pid).c_str(), 0);
  close(fd);
}

}  // namespace shoal
