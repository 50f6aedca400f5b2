// JobDeadline: a job's deadline as shoald sends it with the job (infer's `deadline`,
// CLOCK_MONOTONIC nanoseconds), and the answer for a job whose turn comes after it. shoald
// may send a job to an interpreter still running another (send_ahead_ms); if it waited there
// past its deadline, shoald has answered its client TIMEOUT already, and the worker answers
// shoald the same at once instead of running it (docs/protocol.md).
// Plain value; any thread.
#pragma once

#include <cstdint>
#include <string>

#include "protocol/messages.h"

namespace shoal {

struct JobDeadline {
  uint64_t id = 0;
  uint64_t ns = 0;  // 0: none (not an infer, a batch, or a job without one)
  std::string model;

  // Of a message from shoald: an infer of one job that carries a deadline, else none.
  static JobDeadline Of(const MapView& m);
  // The TIMEOUT reply to send instead of running the job when its deadline has passed
  // (`slot` names the worker in it); empty while it has not.
  std::string ReplyIfPassed(int slot) const;
};

}  // namespace shoal
