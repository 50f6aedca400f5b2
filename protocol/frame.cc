#include "protocol/frame.h"

namespace shoal {

void AppendFrame(std::string* out, std::string_view body) {
  uint32_t n = static_cast<uint32_t>(body.size());
  char header[kFrameHeaderSize];
  for (size_t i = 0; i < kFrameHeaderSize; ++i) header[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out->append(header, kFrameHeaderSize);
  out->append(body);
}

std::string EncodeFrame(std::string_view body) {
  std::string out;
  AppendFrame(&out, body);
  return out;
}

Result<std::optional<std::string>> FrameReader::Next() {
  if (buffered() < kFrameHeaderSize) return std::optional<std::string>();
  uint32_t n = 0;
  for (size_t i = 0; i < kFrameHeaderSize; ++i) {
    n |= static_cast<uint32_t>(static_cast<uint8_t>(buf_[pos_ + i])) << (8 * i);
  }
  if (n == 0) return Status::BadRequest("empty frame (length 0)");
  if (n > max_frame_) {
    return Status::BadRequest("frame of " + std::to_string(n) + " bytes exceeds the limit of " +
                              std::to_string(max_frame_) +
                              " bytes; tensor data belongs in an arena, not in a message");
  }
  if (buffered() < kFrameHeaderSize + n) return std::optional<std::string>();
  std::string body = buf_.substr(pos_ + kFrameHeaderSize, n);
  pos_ += kFrameHeaderSize + n;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > (1u << 16)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return std::optional<std::string>(std::move(body));
}

}  // namespace shoal
