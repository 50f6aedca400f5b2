#include "package_format/served_object.h"

#include <set>

namespace shoal {

bool IsIdentifier(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!letter && (i == 0 || c < '0' || c > '9')) return false;
  }
  return true;
}

Status CheckEntryName(std::string_view entry) {
  const std::string hint = " (an entry names a pickle inside the archive as \"package/resource\", e.g. "
                           "\"model/model.pkl\")";
  if (entry.empty()) return Status::BadRequest("the entry is empty" + hint);
  if (entry.size() > kMaxEntryBytes) {
    return Status::BadRequest("the entry is " + std::to_string(entry.size()) + " bytes long, more than " +
                              std::to_string(kMaxEntryBytes) + hint);
  }
  for (char c : entry) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return Status::BadRequest("the entry holds a NUL or other control character" + hint);
    }
  }
  std::string shown(entry);
  if (entry.front() == '/') return Status::BadRequest("entry '" + shown + "' is an absolute path" + hint);
  size_t slash = entry.rfind('/');
  if (slash == std::string_view::npos) {
    return Status::BadRequest("entry '" + shown + "' names no package" + hint);
  }
  std::string_view resource = entry.substr(slash + 1);
  if (resource == "..") return Status::BadRequest("entry '" + shown + "' leaves the archive ('..')" + hint);
  if (resource.empty() || resource == ".") {
    return Status::BadRequest("entry '" + shown + "' names no resource after its last '/'" + hint);
  }
  for (size_t start = 0, end = 0; end < slash; start = end + 1) {
    end = entry.find('/', start);  // at most `slash`, the last one
    std::string_view part = entry.substr(start, end - start);
    if (part == "..") return Status::BadRequest("entry '" + shown + "' leaves the archive ('..')" + hint);
    if (!IsIdentifier(part)) {
      return Status::BadRequest("entry '" + shown + "': folder '" + std::string(part) +
                                "' is not a Python module name (torch.package's package)" + hint);
    }
  }
  return Status::Ok();
}

Status CheckMethodName(std::string_view name) {
  std::string shown(name.substr(0, kMaxMethodNameBytes));
  if (name.size() > kMaxMethodNameBytes || !IsIdentifier(name)) {
    return Status::BadRequest("method '" + shown + "' is not a Python identifier of at most " +
                              std::to_string(kMaxMethodNameBytes) + " bytes");
  }
  if (name.front() == '_') {
    return Status::BadRequest("method '" + shown + "' is private or special (it starts with '_'); only a model's "
                              "public methods may be allowed");
  }
  return Status::Ok();
}

Status CheckMethodNames(const std::vector<std::string>& names) {
  if (names.size() > kMaxMethods) {
    return Status::BadRequest(std::to_string(names.size()) + " methods, at most " + std::to_string(kMaxMethods) +
                              " may be allowed");
  }
  std::set<std::string_view> seen;
  for (const auto& n : names) {
    if (auto st = CheckMethodName(n); !st.ok()) return st;
    if (!seen.insert(n).second) return Status::BadRequest("method '" + n + "' is named twice");
  }
  return Status::Ok();
}

std::string AllowedMethodsText(const std::vector<std::string>& allowed) {
  std::string out = "forward";
  for (const auto& m : allowed) {
    if (m != "forward") out += ", " + m;
  }
  return out;
}

}  // namespace shoal
