#include "protocol/paths.h"

#include <unistd.h>

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

}  // namespace shoal
