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

}  // namespace shoal
