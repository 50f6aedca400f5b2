// The user workers run as. A root shoald gives its workers a uid of their own: user
// `shoal-worker` (systemd/shoal.sysusers) if it exists, else `nobody`; the worker switches
// to it right after the fork, before any model code (worker/sandbox.cc), with no
// supplementary groups and no capability. A shoald that is not root cannot switch: its
// workers keep its uid (docs/security.md says what holds instead).
// Thread-safety: pure apart from the user database lookups; call from the loop thread.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include "shoal/status.h"

namespace shoal {

struct WorkerUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string name;
  std::string Describe() const;  // "shoal-worker (uid 998, gid 998)"
};

// What `setting` (option worker_user: "auto", a user name, or "shoald" for shoald's own
// uid) means for a shoald whose effective uid is `euid`: the user to switch to, or
// nullopt when workers keep shoald's uid. Errors: an unknown user, a named user that a
// non-root shoald cannot become, or root.
Result<std::optional<WorkerUser>> ChooseWorkerUser(const std::string& setting, uid_t euid);

}  // namespace shoal
