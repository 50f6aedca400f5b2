// ListenAddress: where one of shoald's HTTP fronts listens (metrics_address), parsed from
// the setting's text without any I/O: an absolute Unix socket path, a loopback TCP address
// (127.0.0.1:PORT, any 127.x.y.z, [::1]:PORT), or every interface, written on purpose as
// 0.0.0.0:PORT or [::]:PORT. Any other address is refused: what shoald serves there has
// no authentication, so it is not put on a network by a typo or a host name. Names are
// not resolved (that would block, and would say nothing about which interface).
// Thread-safety: plain values and a pure function; any thread.
#pragma once

#include <cstdint>
#include <string>

#include "shoal/status.h"

namespace shoal {

struct ListenAddress {
  std::string path;  // a Unix socket; empty for TCP
  std::string ip;    // TCP: "127.0.0.1", "::1", "0.0.0.0", "::"
  uint16_t port = 0;
  bool every_interface = false;  // 0.0.0.0 or ::

  bool unix_socket() const { return !path.empty(); }
  // As the setting writes it: "/run/shoal/metrics.sock", "127.0.0.1:9400", "[::1]:9400".
  std::string ToString() const;
};

// `text` as the setting `name` gave it ("metrics_address"); errors say what is accepted.
Result<ListenAddress> ParseListenAddress(const std::string& text, const std::string& name);

}  // namespace shoal
