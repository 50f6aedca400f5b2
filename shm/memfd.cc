#include "shm/memfd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace shoal {

Result<int> CreateArenaFd(const std::string& name, size_t size) {
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return Status::FromErrno("memfd_create(" + name + ")", errno);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    return Status::FromErrno("ftruncate of arena " + name + " to " + std::to_string(size) +
                                 " bytes (is shared memory limited here?)",
                             err);
  }
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    int err = errno;
    close(fd);
    return Status::FromErrno("sealing arena " + name, err);
  }
  return fd;
}

Result<size_t> CheckArenaFd(int fd) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return Status::BadRequest("the arena fd is not a memfd (F_GET_SEALS failed); "
                              "create arenas with memfd_create(MFD_ALLOW_SEALING)");
  }
  if ((seals & F_SEAL_SHRINK) == 0) {
    return Status::BadRequest("the arena memfd is not sealed with F_SEAL_SHRINK; "
                              "seal it so that workers mapping it cannot fault");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return Status::FromErrno("fstat of arena fd", errno);
  if (st.st_size <= 0) return Status::BadRequest("the arena memfd is empty");
  return static_cast<size_t>(st.st_size);
}

}  // namespace shoal
