// Landlock (Linux 5.13+): the filesystem rules of a worker, applied by the kernel to the
// calling thread and everything it starts afterwards, with no way back.
//
// A FilesystemView lists what model code may reach; RestrictFilesystem turns it into a
// ruleset and enforces it, best-effort by the kernel's Landlock ABI (docs/security.md,
// "Landlock"): ABI 1 paths, 2 rename/link across folders (refer), 3 truncate, 4 TCP
// bind/connect, 5 device ioctls, 6 scoping of abstract Unix sockets and signals to the
// worker's own processes. Rights the kernel does not know are left out; a kernel without
// Landlock leaves everything open (LandlockAbi() == 0; the caller logs it).
// Thread-safety: RestrictFilesystem binds the calling thread and the threads it starts
// later, not threads that exist already: call it before model code runs and before the
// worker starts its own threads (worker/sandbox.h); it warns about threads libraries
// started earlier.
#pragma once

#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// Paths beneath which model code keeps some rights; everything else is denied. A path
// that does not exist is skipped; a file (not a folder) keeps only the rights a file
// can have.
struct FilesystemView {
  std::vector<std::string> read_exec;   // read, list and execute: installations, libraries, archives
  std::vector<std::string> read_only;   // read and list: /proc, /sys, /etc files
  std::vector<std::string> devices;     // read, write and ioctl: /dev/null, GPU device files
  std::vector<std::string> read_write;  // all but making devices: the worker's private temporary folder
};

// The highest Landlock ABI this kernel has; 0 where it has none (not built in, or not
// enabled at boot: lsm=).
int LandlockAbi();

// What a ruleset gives on this kernel, for the log: "Landlock ABI 7 (filesystem, TCP,
// abstract Unix sockets and signals scoped to the worker)".
std::string DescribeLandlock(int abi, bool allow_network);

// Enforces `view` (and, without `allow_network`, no TCP bind/connect where the ABI has
// it). A path that cannot be opened is skipped (so it stays denied). Needs
// PR_SET_NO_NEW_PRIVS first. With LandlockAbi() == 0 it does nothing.
Status RestrictFilesystem(const FilesystemView& view, bool allow_network);

}  // namespace shoal
