// Where shoald listens by default. Shared by shoald and the clients so they agree.
#pragma once

#include <string>

namespace shoal {

// $SHOAL_SOCKET, else /run/shoal/shoal.sock for root, else
// $XDG_RUNTIME_DIR/shoal/shoal.sock, else /tmp/shoal-<uid>/shoal.sock.
std::string DefaultSocketPath();

}  // namespace shoal
