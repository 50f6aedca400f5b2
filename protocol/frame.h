// Framing of shoal's control messages: a 4-byte little-endian length, then that many
// bytes of MessagePack (docs/protocol.md). FrameReader is pure: it knows nothing about
// sockets, so it is tested and fuzzed alone. Thread-compatible (one reader per stream).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shoal/status.h"

namespace shoal {

constexpr size_t kFrameHeaderSize = 4;
constexpr size_t kMaxFrameSize = 1 << 20;  // 1 MiB of control data; tensors never travel here

// Returns header + body, ready to send.
std::string EncodeFrame(std::string_view body);
// Appends header + body to *out (frames sent back to back in one write).
void AppendFrame(std::string* out, std::string_view body);

class FrameReader {
 public:
  explicit FrameReader(size_t max_frame = kMaxFrameSize) : max_frame_(max_frame) {}

  void Append(const uint8_t* data, size_t n) { buf_.append(reinterpret_cast<const char*>(data), n); }
  // The next complete frame's body, nullopt when more bytes are needed, or BadRequest for
  // a frame length of 0 or above the limit (the stream cannot be resynchronised then).
  Result<std::optional<std::string>> Next();
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  size_t max_frame_;
  std::string buf_;
  size_t pos_ = 0;
};

}  // namespace shoal
