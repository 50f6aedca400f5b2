#include "protocol/model_name.h"

namespace shoal {

Status CheckModelName(const std::string& name) {
  auto colon = name.find(':');
  if (name.empty() || name.size() > 128 || name.find_first_of(" /\n\t") != std::string::npos ||
      (colon != std::string::npos &&
       (colon == 0 || colon + 1 == name.size() || name.find(':', colon + 1) != std::string::npos))) {
    return Status::BadRequest("model name '" + name +
                              "' is invalid: use NAME or NAME:VERSION, 1-128 characters, no spaces or '/'");
  }
  return Status::Ok();
}

}  // namespace shoal
