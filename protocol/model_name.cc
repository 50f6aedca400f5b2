#include "protocol/model_name.h"

#include "protocol/utf8.h"

namespace shoal {

Status CheckModelName(const std::string& name) {
  if (FirstNonUtf8(name)) {  // workers read a name as a Python str: it would stop them
    return Status::BadRequest("model name '" + ShowNonUtf8(name) +
                              "' is not UTF-8 text; name it in UTF-8 (a file of the model repository: rename it)");
  }
  auto colon = name.find(':');
  if (name.empty() || name.size() > 128 || name.find_first_of(" /\n\t") != std::string::npos ||
      (colon != std::string::npos &&
       (colon == 0 || colon + 1 == name.size() || name.find(':', colon + 1) != std::string::npos))) {
    return Status::BadRequest("model name '" + name +
                              "' is invalid: use NAME or NAME:VERSION, 1-128 characters, no spaces or '/'");
  }
  return Status::Ok();
}

bool NewerVersion(const std::string& a, const std::string& b) {
  auto numeric = [](const std::string& v) {
    return !v.empty() && v.find_first_not_of("0123456789") == std::string::npos && v.size() < 19;
  };
  bool na = numeric(a), nb = numeric(b);
  if (na != nb) return nb;  // text after every number
  if (na) {
    auto x = std::stoull(a), y = std::stoull(b);
    if (x != y) return x > y;
  }
  return a > b;  // text among text; "01" against "1" as text
}

}  // namespace shoal
