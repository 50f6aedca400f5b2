#include "protocol/paths.h"

#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <cstdlib>

namespace shoal {

std::string DefaultSocketPath() {
  if (const char* s = getenv("SHOAL_SOCKET"); s != nullptr && *s != '\0') return s;
  if (geteuid() == 0) return "/run/shoal/shoal.sock";
  if (const char* x = getenv("XDG_RUNTIME_DIR"); x != nullptr && *x != '\0') {
    return std::string(x) + "/shoal/shoal.sock";
  }
  return "/tmp/shoal-" + std::to_string(geteuid()) + "/shoal.sock";
}

Status CheckServerPeer(int sock, const std::string& socket_path) {
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return Status::FromErrno("SO_PEERCRED", errno);
  uid_t me = geteuid();
  if (cred.uid == 0 || cred.uid == me) return Status::Ok();
  if (const char* s = getenv("SHOAL_SERVER_UID"); s != nullptr && *s != '\0') {
    char* end = nullptr;
    unsigned long uid = std::strtoul(s, &end, 10);
    if (end != s && *end == '\0' && uid == cred.uid) return Status::Ok();
  }
  if (const struct passwd* pw = getpwnam("shoal"); pw != nullptr && pw->pw_uid == cred.uid) return Status::Ok();
  return Status(Code::kUnavailable, "not talking to " + socket_path + ": the process listening there (pid " +
                                        std::to_string(cred.pid) + ") runs as uid " + std::to_string(cred.uid) +
                                        ", which is neither root, you (uid " + std::to_string(me) +
                                        ") nor user 'shoal'; if it is the shoald you mean, set SHOAL_SERVER_UID=" +
                                        std::to_string(cred.uid));
}

Status CheckSocketFolder(const std::string& socket_path) {
  auto slash = socket_path.rfind('/');
  std::string folder = slash == std::string::npos ? "." : slash == 0 ? "/" : socket_path.substr(0, slash);
  struct stat st;
  if (lstat(folder.c_str(), &st) != 0) return Status::FromErrno("socket folder " + folder, errno);
  uid_t me = geteuid();
  std::string fix = "; remove it (or set SHOAL_SOCKET / XDG_RUNTIME_DIR to a folder of your own)";
  if (!S_ISDIR(st.st_mode)) {
    return Status(Code::kUnavailable, "socket folder " + folder + " is not a folder (a link?)" + fix);
  }
  if (st.st_uid != me && st.st_uid != 0) {
    return Status(Code::kUnavailable, "socket folder " + folder + " belongs to uid " + std::to_string(st.st_uid) +
                                          ", not to you (uid " + std::to_string(me) +
                                          "): another user may be squatting it" + fix);
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return Status(Code::kUnavailable, "socket folder " + folder + " may be written by other users" + fix);
  }
  return Status::Ok();
}

}  // namespace shoal
