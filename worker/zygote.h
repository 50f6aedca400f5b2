// The zygote: a single-threaded shoal-worker that has initialised Python and imported
// torch once, and forks ready workers on request, so that a replacement worker starts in
// milliseconds and shares the zygote's pages copy-on-write. With K interpreters per
// worker the zygote holds all K, and forks with every one of their GILs held.
//
// Protocol on its socket (framing of docs/protocol.md): shoald sends
// {"op":"fork","id":n,"slot":s[,"cgroup":true]} with the new worker's socket attached
// (and, with "cgroup", the cgroup.procs of the worker's memory cgroup after it: the
// middle process writes itself there, so the worker is born in the group); the zygote
// answers {"id":n,"ok":true,"pid":p}. Each worker is forked twice (zygote -> short-lived
// child -> worker) so that it is reparented to shoald, a child subreaper: shoald waits for
// its workers itself. Thread-safety: single-threaded by design (fork).
#pragma once

#include <sys/types.h>

#include <memory>
#include <vector>

#include "shoal/status.h"
#include "worker/interpreter.h"

namespace shoal {

struct ForkedWorker {
  int fd;    // the worker's socket to shoald
  int slot;
};

// Freezes the interpreters' objects (gc.freeze), then serves fork requests on `fd` until
// shoald goes away (then exits the process). Returns only in a forked worker, which
// continues as that worker. The interpreters' GILs are released on entry and on return.
ForkedWorker RunZygote(int fd, const std::vector<std::unique_ptr<Interpreter>>& interps, pid_t supervisor);

}  // namespace shoal
