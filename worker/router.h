// A worker's message loop: reads framed messages from shoald and routes each to where it
// runs. TorchScript loads, and jobs and unloads of TorchScript models, run in C++
// (worker/torchscript.h); everything else goes to the Python runner of an interpreter.
//
//   ServeOne   one interpreter: the reading thread runs every message itself, in order.
//   ServeMany  K interpreters: the reading thread only routes, to one Lane per interpreter
//              (worker/lanes.h): a job to the interpreter shoald chose ("interp"), loads and
//              unloads to all (one reply once all are done), arenas and client drops to
//              all.
// Both answer a job whose turn comes after its deadline TIMEOUT without running it
// (worker/job_deadline.h). Both free the blocks of a `release` on the reading thread, in C++, in the owner's output
// arenas (the arena id names the lane and the engine, shm/output_arenas.h): the Python
// runner's through shm/output_release_api.h, without its GIL. The owner's usage notice
// that follows a release is owed (worker/owed_usage.h): a reply of that owner settles it,
// else it goes when the reading thread would block: one message a job fewer for shoald.
// Threading: called on the worker's main thread, which becomes the reading thread; neither
// returns (the process exits when shoald goes away). The caller holds the GIL of the only
// interpreter for ServeOne (which keeps it only while Python runs) and none for ServeMany.
#pragma once

#include <memory>
#include <vector>

#include "worker/interpreter.h"

namespace shoal {

[[noreturn]] void ServeOne(int fd, int slot, Interpreter* interp);
[[noreturn]] void ServeMany(int fd, int slot, const std::vector<std::unique_ptr<Interpreter>>& interps);

}  // namespace shoal
