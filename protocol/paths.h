// Where shoald listens by default. Shared by shoald and the clients so they agree.
#pragma once

#include <string>

#include "shoal/status.h"

namespace shoal {

// $SHOAL_SOCKET, else /run/shoal/shoal.sock for root, else
// $XDG_RUNTIME_DIR/shoal/shoal.sock, else /tmp/shoal-<uid>/shoal.sock.
std::string DefaultSocketPath();

// The folder a socket lives in must be a real folder (not a link) that belongs to this
// user or root and that nobody else may write: otherwise another user could have put a
// socket of their own there (squatting /tmp/shoal-UID) and receive this user's arenas.
// Checked by shoald before it listens on the default path and by clients before they
// connect to it. The error says who owns the folder and what to do.
Status CheckSocketFolder(const std::string& socket_path);

// Clients check who listens before they send anything (arenas carry their data): the
// peer of connected socket `sock` must run as root, as this user, as $SHOAL_SERVER_UID, or
// as the `shoal` user the package creates. Otherwise an error that names the peer's pid
// and uid and says how to trust it.
Status CheckServerPeer(int sock, const std::string& socket_path);

}  // namespace shoal
