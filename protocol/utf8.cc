#include "protocol/utf8.h"

namespace shoal {

std::optional<size_t> FirstNonUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range (Unicode table 3-7)
    if (b >= 0xC2 && b <= 0xDF) {
      n = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      n = 3;
      if (b == 0xE0) lo = 0xA0;  // no overlong form
      if (b == 0xED) hi = 0x9F;  // no surrogate
    } else if (b >= 0xF0 && b <= 0xF4) {
      n = 4;
      if (b == 0xF0) lo = 0x90;  // no overlong form
      if (b == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
    } else {
      return i;
    }
    if (s.size() - i < n) return i;
    auto second = static_cast<unsigned char>(s[i + 1]);
    if (second < lo || second > hi) return i;
    for (size_t k = 2; k < n; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if (c < 0x80 || c > 0xBF) return i;
    }
    i += n;
  }
  return std::nullopt;
}

std::string ShowNonUtf8(std::string_view s) {
  std::string out;
  while (auto bad = FirstNonUtf8(s)) {
    static constexpr char kHex[] = "0123456789abcdef";
    auto b = static_cast<unsigned char>(s[*bad]);
    out.append(s.substr(0, *bad));
    out += {'\\', 'x', kHex[b >> 4], kHex[b & 15]};
    s.remove_prefix(*bad + 1);
  }
  out.append(s);
  return out;
}

}  // namespace shoal
