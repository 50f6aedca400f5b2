// ClientSession: one connected client, as the supervisor sees it: its socket, who it is
// (SO_PEERCRED), and the arenas it registered. Thread-safety: loop thread only.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "supervisor/async_channel.h"

namespace shoal {

struct ClientSession {
  uint64_t id = 0;
  std::shared_ptr<AsyncChannel> channel;
  pid_t pid = -1;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  std::vector<gid_t> groups;  // supplementary groups (SO_PEERGROUPS)
  std::set<uint64_t> arenas;  // ids registered on this connection
  bool closed = false;
  // A session shoald made itself for a front of its own (shoal-http): never an admin,
  // whatever its uid (the front runs with shoald's).
  bool never_admin = false;

  std::string Describe() const;
};

// Fills pid/uid/gid/groups from the socket's peer credentials.
Status ReadPeerCredentials(int sock, ClientSession* s);

}  // namespace shoal
