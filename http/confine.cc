// shoal-http's seccomp filter and Landlock ruleset (http/confine.h).
#include "http/confine.h"

#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef SHOAL_HAVE_SECCOMP
#include <seccomp.h>
#endif

#include <cerrno>

#include "worker/landlock.h"

namespace shoal {

Status ConfineFilesystem(int* abi) {
  *abi = LandlockAbi();
  if (*abi == 0) return Status::Ok();
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Status::FromErrno("PR_SET_NO_NEW_PRIVS", errno);
  // An empty view: every path denied; no TCP bind or connect (allow_network = false).
  if (auto st = RestrictFilesystem(FilesystemView{}, false); !st.ok()) {
    return Status(st.code(), "shoal-http's Landlock ruleset: " + st.message());
  }
  return Status::Ok();
}

Status Confine() {
#ifdef SHOAL_HAVE_SECCOMP
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return Status::Internal("seccomp_init failed");
  const auto deny = SCMP_ACT_ERRNO(EPERM);
  // Every thread of the process (the service's pools are running already).
  int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
  for (int call : {SCMP_SYS(connect), SCMP_SYS(socket), SCMP_SYS(socketpair), SCMP_SYS(execve), SCMP_SYS(execveat),
                   SCMP_SYS(ptrace), SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register),
                   SCMP_SYS(pidfd_send_signal), SCMP_SYS(pidfd_open), SCMP_SYS(process_vm_writev),
                   SCMP_SYS(process_vm_readv)}) {
    if (rc == 0) rc = seccomp_rule_add(ctx, deny, call, 0);
  }
  // Signals only to itself (abort, raise): never to shoald, a worker or anyone else.
  const auto self = static_cast<scmp_datum_t>(getpid());
  if (rc == 0) rc = seccomp_rule_add(ctx, deny, SCMP_SYS(kill), 1, SCMP_A0(SCMP_CMP_NE, self));
  if (rc == 0) rc = seccomp_rule_add(ctx, deny, SCMP_SYS(tgkill), 1, SCMP_A0(SCMP_CMP_NE, self));
  if (rc == 0) rc = seccomp_rule_add(ctx, deny, SCMP_SYS(tkill), 0);
  if (rc == 0) rc = seccomp_load(ctx);  // sets no_new_privs itself
  seccomp_release(ctx);
  if (rc != 0) return Status::FromErrno("installing shoal-http's seccomp filter", -rc);
  return Status::Ok();
#else
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  return Status::Internal("built without libseccomp: shoal-http may connect(2) (install libseccomp-dev)");
#endif
}

}  // namespace shoal
