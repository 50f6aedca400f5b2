#include "supervisor/client_session.h"

#include <sys/socket.h>

#include <cerrno>

namespace shoal {

std::string ClientSession::Describe() const {
  return "client " + std::to_string(id) + " (pid " + std::to_string(pid) + ", uid " + std::to_string(uid) + ")";
}

Status ReadPeerCredentials(int sock, ClientSession* s) {
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Status::FromErrno("SO_PEERCRED", errno);
  }
  s->pid = cred.pid;
  s->uid = cred.uid;
  s->gid = cred.gid;
  gid_t groups[256];
  socklen_t glen = sizeof(groups);
  if (getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0) {
    s->groups.assign(groups, groups + glen / sizeof(gid_t));
  }
  return Status::Ok();
}

}  // namespace shoal
