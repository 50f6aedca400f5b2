#include "worker/sandbox.h"

#include <linux/capability.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#ifdef SHOAL_HAVE_SECCOMP
#include <seccomp.h>
#endif

namespace shoal {

bool SeccompAvailable() {
#ifdef SHOAL_HAVE_SECCOMP
  return true;
#else
  return false;
#endif
}

namespace {
Status SetLimit(int resource, uint64_t value, const char* name) {
  if (value == 0) return Status::Ok();
  struct rlimit rl;
  rl.rlim_cur = rl.rlim_max = static_cast<rlim_t>(value);
  if (setrlimit(resource, &rl) != 0) return Status::FromErrno(std::string("setrlimit(") + name + ")", errno);
  return Status::Ok();
}

// A root worker keeps no capability: none effective, permitted or inheritable, and none
// in its bounding set (so nothing can bring one back). When shoald names a user
// (cfg.run_as_*), it becomes that user first, with no supplementary group: model code then
// cannot read what only root (or shoald's groups) may, such as /etc/shadow.
Status GiveUpRoot(const SandboxConfig& cfg) {
  for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) {  // needs CAP_SETPCAP: before the switch
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) {
      return Status::FromErrno("PR_CAPBSET_DROP", errno);
    }
  }
  if (cfg.run_as_uid >= 0 && cfg.run_as_gid >= 0) {
    auto uid = static_cast<uid_t>(cfg.run_as_uid);
    auto gid = static_cast<gid_t>(cfg.run_as_gid);
    pid_t parent = getppid();
    if (setgroups(0, nullptr) != 0) return Status::FromErrno("setgroups", errno);
    if (setresgid(gid, gid, gid) != 0) return Status::FromErrno("setresgid(" + std::to_string(gid) + ")", errno);
    // All three uids leave 0, so the kernel clears the permitted and effective sets.
    if (setresuid(uid, uid, uid) != 0) return Status::FromErrno("setresuid(" + std::to_string(uid) + ")", errno);
    if (setuid(0) == 0) return Status::Internal("the worker could become root again after switching user");
    // A change of credentials clears the parent-death signal: armed again, and the worker
    // leaves at once if shoald died meanwhile.
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return Status::FromErrno("PR_SET_PDEATHSIG", errno);
    if (getppid() != parent) _exit(0);
  }
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capset, &header, data) != 0) return Status::FromErrno("capset", errno);
  return Status::Ok();
}

#ifdef SHOAL_HAVE_SECCOMP
Status InstallSeccomp(bool allow_network) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return Status::Internal("seccomp_init failed");
  const uint32_t deny = SCMP_ACT_ERRNO(EPERM);
  // Debugging and tampering with other processes.
  static const int kDenied[] = {
      SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv), SCMP_SYS(process_vm_writev),
      // The system itself: mounts, kernels, modules, swap, clocks, reboot.
      SCMP_SYS(mount), SCMP_SYS(umount2), SCMP_SYS(pivot_root), SCMP_SYS(chroot), SCMP_SYS(kexec_load),
      SCMP_SYS(kexec_file_load), SCMP_SYS(init_module), SCMP_SYS(finit_module), SCMP_SYS(delete_module),
      SCMP_SYS(reboot), SCMP_SYS(swapon), SCMP_SYS(swapoff), SCMP_SYS(settimeofday), SCMP_SYS(clock_settime),
      SCMP_SYS(clock_adjtime), SCMP_SYS(adjtimex), SCMP_SYS(acct), SCMP_SYS(syslog), SCMP_SYS(sethostname),
      SCMP_SYS(setdomainname), SCMP_SYS(iopl), SCMP_SYS(ioperm),
      // Escapes and kernel attack surface: namespaces, bpf, perf, keyrings, handles.
      SCMP_SYS(unshare), SCMP_SYS(setns), SCMP_SYS(bpf), SCMP_SYS(perf_event_open), SCMP_SYS(keyctl),
      SCMP_SYS(add_key), SCMP_SYS(request_key), SCMP_SYS(open_by_handle_at), SCMP_SYS(name_to_handle_at),
      SCMP_SYS(userfaultfd), SCMP_SYS(quotactl), SCMP_SYS(lookup_dcookie), SCMP_SYS(fanotify_init),
      // io_uring does what the rules below forbid (IORING_OP_SOCKET) without a system call.
      SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register),
      // Other processes' descriptors and memory.
      SCMP_SYS(pidfd_getfd), SCMP_SYS(kcmp), SCMP_SYS(process_madvise),
      // Leaving the worker's process group: whatever model code starts dies with the worker.
      SCMP_SYS(setsid), SCMP_SYS(setpgid),
  };
  int rc = 0;
  for (int nr : kDenied) rc = rc ? rc : seccomp_rule_add(ctx, deny, nr, 0);
  // Integer arguments are compared on their low 32 bits, as the kernel reads them: a
  // 64-bit comparison lets (1 << 32) | AF_INET through.
  auto low32 = [](int value) { return SCMP_A0(SCMP_CMP_MASKED_EQ, 0xffffffffu, static_cast<uint32_t>(value)); };
  // Sockets: Unix sockets always (the worker's own channel); packet/netlink-raw never;
  // IPv4/IPv6 only when the configuration allows model code on the network.
  rc = rc ? rc : seccomp_rule_add(ctx, deny, SCMP_SYS(socket), 1, low32(AF_PACKET));
  if (!allow_network) {
    rc = rc ? rc : seccomp_rule_add(ctx, deny, SCMP_SYS(socket), 1, low32(AF_INET));
    rc = rc ? rc : seccomp_rule_add(ctx, deny, SCMP_SYS(socket), 1, low32(AF_INET6));
  }
  // New namespaces through clone (unshare and setns are denied above); clone3 passes its
  // flags in memory a filter cannot read, so it reports ENOSYS and libc falls back to clone.
  for (uint64_t flag : {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC,
                        CLONE_NEWCGROUP}) {
    rc = rc ? rc : seccomp_rule_add(ctx, deny, SCMP_SYS(clone), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag));
  }
  rc = rc ? rc : seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (rc == 0) rc = seccomp_load(ctx);
  seccomp_release(ctx);
  if (rc != 0) return Status(Code::kInternal, std::string("seccomp filter: ") + std::strerror(-rc));
  return Status::Ok();
}
#endif
}  // namespace

Status ApplySandbox(const SandboxConfig& cfg, const FilesystemView& files) {
  // Its own process group, which shoald kills when the worker dies: every process model
  // code starts stays in it (setsid and setpgid are denied below).
  if (setpgid(0, 0) != 0) return Status::FromErrno("setpgid", errno);
  if (geteuid() == 0) {
    if (auto st = GiveUpRoot(cfg); !st.ok()) return st;
  }
  // Not dumpable: processes of the same user (other workers, their children) cannot read
  // or write its memory through /proc/PID/mem, nor ptrace it.
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return Status::FromErrno("PR_SET_DUMPABLE", errno);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return Status::FromErrno("PR_SET_NO_NEW_PRIVS", errno);
  if (auto st = SetLimit(RLIMIT_AS, cfg.address_space_bytes, "RLIMIT_AS"); !st.ok()) return st;
  if (auto st = SetLimit(RLIMIT_CPU, cfg.cpu_seconds, "RLIMIT_CPU"); !st.ok()) return st;
  if (auto st = SetLimit(RLIMIT_NOFILE, cfg.open_files, "RLIMIT_NOFILE"); !st.ok()) return st;
  if (cfg.landlock) {
    if (auto st = RestrictFilesystem(files, cfg.allow_network); !st.ok()) return st;
  }
#ifdef SHOAL_HAVE_SECCOMP
  if (cfg.seccomp) {
    if (auto st = InstallSeccomp(cfg.allow_network); !st.ok()) return st;
  }
#endif
  return Status::Ok();
}

}  // namespace shoal
