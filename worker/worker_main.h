// The worker's command line (worker/main.cc), entered two ways:
//   shoal-worker       its own executable, Python from the shared libpython (dlopened once
//                      per interpreter: several interpreters need private copies of it);
//   shoal-worker-py    the `python3` executable itself, running this code from the
//                      extension module shoal._worker_host (worker/python_host.cc): one
//                      interpreter, the one python3 started, on the executable's own build
//                      of Python (Debian's is PGO+LTO, the shared library is neither:
//                      bench/README.md, "The worker on python3"). Its SHOAL_PYTHONPATH is
//                      not read: the script found the shoal package already.
// Threading: called on the process's main thread; the caller holds the GIL when Python is
// already running (shoal-worker-py). Returns only for --list-gpus, --check-interpreters
// that could not start its interpreters and bad command lines (then the GIL may have been
// given away: shoal-worker-py ends the process at once); a worker or zygote ends with _exit.
#pragma once

namespace shoal {

int WorkerMain(int argc, char** argv);

}  // namespace shoal
