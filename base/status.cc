#include "shoal/status.h"

#include <cstring>

namespace shoal {
namespace {
struct CodeEntry {
  Code code;
  const char* name;
};
constexpr CodeEntry kCodes[] = {
    {Code::kOk, "OK"},
    {Code::kBadRequest, "BAD_REQUEST"},
    {Code::kModelNotFound, "MODEL_NOT_FOUND"},
    {Code::kModelError, "MODEL_ERROR"},
    {Code::kWorkerCrashed, "WORKER_CRASHED"},
    {Code::kTimeout, "TIMEOUT"},
    {Code::kArenaFull, "ARENA_FULL"},
    {Code::kOverloaded, "OVERLOADED"},
    {Code::kUnavailable, "UNAVAILABLE"},
    {Code::kInternal, "INTERNAL"},
    {Code::kIoError, "IO_ERROR"},
};
}  // namespace

const char* CodeName(Code code) {
  for (const auto& e : kCodes) {
    if (e.code == code) return e.name;
  }
  return "INTERNAL";
}

Code CodeFromName(const std::string& name) {
  for (const auto& e : kCodes) {
    if (name == e.name) return e.code;
  }
  return Code::kInternal;
}

Status Status::FromErrno(const std::string& what, int err) {
  return Status(Code::kIoError, what + ": " + std::strerror(err));
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(code_)) + ": " + message_;
}

}  // namespace shoal
