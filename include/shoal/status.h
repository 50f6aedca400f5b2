// shoal::Status and shoal::Result<T>: expected failures as values.
//
// A Status is a code plus a human-readable message that says what happened, to which
// model/job, and what to do. The codes are the error codes of the wire protocol
// (docs/protocol.md), so a Status crosses process boundaries unchanged.
// Thread-safety: plain values; copy freely.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace shoal {

enum class Code : uint8_t {
  kOk = 0,
  kBadRequest,      // malformed or out-of-bounds input from a client
  kModelNotFound,   // no model of that name is loaded
  kModelError,      // the model's own Python code raised (traceback attached)
  kWorkerCrashed,   // the worker running the job died
  kTimeout,         // the job passed its deadline
  kArenaFull,       // an output did not fit into the client's arena
  kOverloaded,      // the queue is full
  kUnavailable,     // the service is shutting down or not reachable
  kInternal,        // a bug in shoal
  kIoError,         // a local system call failed
};

// Wire name of a code ("BAD_REQUEST", ...) and back; unknown names map to kInternal.
const char* CodeName(Code code);
Code CodeFromName(const std::string& name);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status BadRequest(std::string m) { return {Code::kBadRequest, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
  // `what` says what was attempted; errno is mapped here and nowhere else.
  static Status FromErrno(const std::string& what, int err);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}            // NOLINT: implicit on purpose
  Result(Status status) : v_(std::move(status)) {}     // NOLINT: implicit on purpose

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T value_or(T fallback) const { return ok() ? value() : fallback; }

 private:
  std::variant<T, Status> v_;
};

}  // namespace shoal
