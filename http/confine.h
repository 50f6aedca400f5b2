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
#pragma once

#include "shoal/status.h"

namespace shoal {

// An error when the filter could not be installed, or when shoal-http was built without
// libseccomp (then only no_new_privs is set).
Status Confine();

}  // namespace shoal
