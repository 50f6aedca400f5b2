// Confine: what shoal-http gives up once it listens (http/main.cc), as a seccomp filter on
// every thread of the process and every child it could make:
//  - new connections (connect, and socket: a new socket could be connected through
//    io_uring or sendto with MSG_FASTOPEN), so that it cannot open a second session to
//    shoald's socket with shoald's uid (an admin's): its one session, made by shoald, is
//    never an admin's;
//  - io_uring (whose operations the filter would not see), execve/execveat, ptrace;
//  - signals to any other process (kill, tgkill, tkill to another pid; pidfd_send_signal).
// Denied calls fail with EPERM. Accepting connections on its listening socket stays
// allowed (accept4 makes sockets without socket()).
// Thread-safety: call once, from any thread; the filter covers every thread (TSYNC).
//
// ConfineFilesystem: Landlock (worker/landlock.h), where the kernel has it: no file or
// folder may be opened, made or removed any more, no TCP bind or connect, and (ABI 6)
// abstract Unix sockets and signals scoped to shoal-http. Descriptors open already (the
// listening socket, shoald's socket, stderr) keep working. Landlock binds the calling
// thread and the threads it starts later, not threads that exist: call it after listening
// (a Unix socket address is a file it makes) and before any thread starts.
#pragma once

#include "shoal/status.h"

namespace shoal {

// *abi: the kernel's Landlock ABI, 0 where it has none (then nothing is enforced and the
// result is OK: the caller logs it).
Status ConfineFilesystem(int* abi);

// An error when the filter could not be installed, or when shoal-http was built without
// libseccomp (then only no_new_privs is set).
Status Confine();

}  // namespace shoal
