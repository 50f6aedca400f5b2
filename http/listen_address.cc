// Parsing of an HTTP front's listening address (http/listen_address.h).
#include "http/listen_address.h"

#include <boost/asio/ip/address.hpp>

namespace shoal {

std::string ListenAddress::ToString() const {
  if (unix_socket()) return path;
  std::string host = ip.find(':') == std::string::npos ? ip : "[" + ip + "]";
  return host + ":" + std::to_string(port);
}

Result<ListenAddress> ParseListenAddress(const std::string& text, const std::string& name) {
  const std::string accepted =
      "; write an absolute Unix socket path, 127.0.0.1:PORT or [::1]:PORT (loopback), or 0.0.0.0:PORT or "
      "[::]:PORT to serve every interface on purpose";
  auto bad = [&](const std::string& why) { return Status::BadRequest(name + " '" + text + "' " + why); };
  ListenAddress a;
  if (text.empty()) return bad("is empty" + accepted);
  if (text[0] == '/') {
    if (text.size() > 107) return bad("is longer than a Unix socket path may be (107 bytes)");
    a.path = text;
    return a;
  }
  // HOST:PORT, an IPv6 host in brackets.
  std::string host, port;
  if (text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("is not [IPV6]:PORT" + accepted);
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string::npos) return bad("names no port" + accepted);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string::npos) return bad("is an IPv6 address without brackets" + accepted);
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port) == 0 || std::stoul(port) > 65535) {
    return bad("has no port in [1, 65535]" + accepted);
  }
  boost::system::error_code ec;
  auto ip = boost::asio::ip::make_address(host, ec);
  if (ec) return bad("is not an IP address and port (host names are not resolved)" + accepted);
  if (ip.is_v6() && ip.to_v6().scope_id() != 0) return bad("has a scope id" + accepted);
  a.ip = ip.to_string();
  a.port = static_cast<uint16_t>(std::stoul(port));
  a.every_interface = ip.is_unspecified();
  if (!ip.is_loopback() && !a.every_interface) {
    return bad("is not a loopback address: what shoald serves there has no authentication, so it goes on a network "
               "only when written 0.0.0.0:PORT or [::]:PORT (every interface, on purpose: firewall the port); "
               "otherwise serve 127.0.0.1:PORT, [::1]:PORT or a Unix socket path, behind a proxy if need be");
  }
  return a;
}

}  // namespace shoal
