#include "worker/job_deadline.h"

#include <time.h>

namespace shoal {

JobDeadline JobDeadline::Of(const MapView& m) {
  JobDeadline d;
  if (m.Str("op").value_or("") != "infer" || m.Find("batch") != nullptr) return d;
  auto ns = m.OptUint("deadline");
  if (!ns.ok() || !ns->has_value()) return d;
  d.ns = **ns;
  d.id = m.Uint("id").value_or(0);
  d.model = m.Str("model").value_or("");
  return d;
}

std::string JobDeadline::ReplyIfPassed(int slot) const {
  if (ns == 0) return {};
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t now_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000u + static_cast<uint64_t>(now.tv_nsec);
  if (now_ns < ns) return {};
  return ErrorReply(id, Status(Code::kTimeout, "job " + std::to_string(id) + " of model '" + model +
                                                   "' passed its deadline while queued in worker " +
                                                   std::to_string(slot) + "; it was not run"));
}

}  // namespace shoal
